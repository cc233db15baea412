"""torch.export over a profile range; the build context every runtime starts from.

``make build`` exports the model once over the union envelope of its profiles
and hands every runtime a :class:`BuildContext`; a runtime may re-export the
union module over one profile's range with :func:`export`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram

from llmprofiles import models
from llmprofiles.profiles.spec import ProfileSet, ShapeRange


@dataclass
class BuildContext:
    """What a runtime's build function gets: one export and where to write."""

    wrapper: torch.nn.Module
    exported: ExportedProgram
    profiles: ProfileSet
    version_dir: Path
    dtype: torch.dtype
    device: torch.device
    runtime: str


def example_dim(r_min: int, r_opt: int, r_max: int) -> int:
    # torch.export specialises a dim whose example is 0 or 1, so a dynamic
    # range is traced from an example of at least 2.
    return r_opt if r_min == r_max else min(max(r_opt, 2), r_max)


def example_inputs(ranges: dict[str, ShapeRange], vocab: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    shape = tuple(example_dim(*d) for d in zip(ranges["input_ids"].min, ranges["input_ids"].opt, ranges["input_ids"].max))
    ids = torch.randint(0, vocab, shape, device=device)
    return ids, models.default_position_ids(ids).contiguous()


def dynamic_shapes(ranges: dict[str, ShapeRange]) -> tuple[dict[int, Dim], ...]:
    """One Dim per dynamic axis, shared by both inputs (their shapes must match)."""
    r = ranges["input_ids"]
    dims = {d: Dim(("batch", "seq")[d] if d < 2 else f"d{d}", min=lo, max=hi)
            for d, (lo, hi) in enumerate(zip(r.min, r.max)) if lo != hi}
    return (dims, dict(dims))


def export(module: torch.nn.Module, ranges: dict[str, ShapeRange], vocab: int, device: torch.device) -> ExportedProgram:
    """``torch.export`` over ``ranges`` (the union envelope, or one profile's range)."""
    with torch.no_grad():
        return torch.export.export(module, example_inputs(ranges, vocab, device), dynamic_shapes=dynamic_shapes(ranges))


def unique_weights(exported: ExportedProgram) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parameters, buffers and constants with tied tensors stored once (plus an alias map)."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in [*exported.state_dict.items(), *exported.constants.items()]:
        if not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().contiguous()
    return tensors, aliases
