"""The manifest names the runtime: build and load dispatch to it.

``build_runtime`` is what ``make build`` calls once the model is exported;
``load_engine`` is what serving calls, so one model repository serves any
runtime unchanged. Runtimes are imported on use: TensorRT may not be installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from llmprofiles.engine import Engine
from llmprofiles.export import BuildContext
from llmprofiles.manifest import EngineLoadError, read_manifest

log = logging.getLogger(__name__)


def build_runtime(ctx: BuildContext, step) -> tuple[list[str], dict]:
    """Specialise every profile of ``ctx`` with ``ctx.runtime``; returns (artifact names, manifest extras)."""
    if ctx.runtime == "tensorrt":
        from llmprofiles.runtimes.tensorrt import build_tensorrt

        return build_tensorrt(ctx, step)
    if ctx.runtime == "aoti":
        from llmprofiles.runtimes.aoti import build_aoti

        return build_aoti(ctx, step)
    from llmprofiles.runtimes.compiled import build_compiled

    return build_compiled(ctx, step)


def load_portable(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> Engine:
    if manifest["runtime"] == "aoti":
        from llmprofiles.runtimes.aoti import load_aoti

        return load_aoti(version_dir, manifest, device)
    from llmprofiles.runtimes.compiled import load_compiled

    return load_compiled(version_dir, manifest, device)


def load_engine(version_dir: str | Path, device: str | torch.device = "cpu") -> Engine:
    """Load the engine in ``version_dir`` with the runtime its manifest names."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    runtime = manifest.get("runtime")
    device = torch.device(device)
    log.info("loading %s engine from %s on %s", runtime, version_dir, device)
    if runtime in ("aoti", "torch-compile"):
        return load_portable(version_dir, manifest, device)
    if runtime == "tensorrt":
        from llmprofiles.runtimes.tensorrt import load_tensorrt

        return load_tensorrt(version_dir, manifest, device)
    raise EngineLoadError(f"manifest in {version_dir} names unknown runtime {runtime!r}; run `make build`")
