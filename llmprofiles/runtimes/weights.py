"""The one copy of the weights every profile of a portable engine shares.

``make build`` writes them once to ``weights.safetensors`` with tied tensors
stored once; the manifest's ``weight_aliases`` map each tied name back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_weights(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = load_file(str(version_dir / "weights.safetensors"), device=str(device))
    for alias, target in manifest.get("weight_aliases", {}).items():
        weights[alias] = weights[target]  # tied tensors stay one tensor
    return weights
