"""The engine boundary every runtime sits behind.

An :class:`Engine` exposes its profile table and runs one given profile. It
checks shapes against that profile before every call, because compiled
artifacts (AOTInductor packages, TensorRT engines) may not check them and would
then return silently wrong logits. ``llmprofiles.runtimes.load.load_engine``
picks the runtime named in the manifest, so one model repository serves any
runtime unchanged.
"""

from __future__ import annotations

import torch

from llmprofiles.manifest import EngineLoadError, profiles_of
from llmprofiles.profiles.selection import SelectionError, select_profile
from llmprofiles.profiles.spec import ProfileSet


class Engine:
    """A multi-profile engine: ``profiles[i]`` is optimization profile ``i``."""

    def __init__(self, profiles: ProfileSet, vocab_size: int, device: torch.device):
        self.profiles = profiles
        self.vocab_size = vocab_size
        self.device = torch.device(device)

    def select(self, shapes: dict[str, tuple[int, ...]], choice: object = "auto") -> int:
        return select_profile(self.profiles, shapes, choice)

    def run(self, profile_index: int, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Last-position logits ``[batch, vocab]`` from profile ``profile_index``."""
        if isinstance(profile_index, bool) or not isinstance(profile_index, int):
            raise TypeError(f"profile index must be an int, got {profile_index!r}")
        if not 0 <= profile_index < len(self.profiles):
            raise SelectionError(f"profile index {profile_index} out of range [0, {len(self.profiles) - 1}]")
        shapes = {"input_ids": tuple(input_ids.shape), "position_ids": tuple(position_ids.shape)}
        if shapes["input_ids"] != shapes["position_ids"] or not self.profiles.fits(profile_index, shapes):
            raise SelectionError(f"shapes {shapes} are outside profile {self.profiles.describe(profile_index)}")
        return self._forward(profile_index, *self._inputs(profile_index, input_ids, position_ids))

    def _inputs(self, profile_index: int, input_ids: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs as ``_forward`` takes them: on the engine's device (a runtime may take host tensors)."""
        return to_device(input_ids, self.device), to_device(position_ids, self.device)

    def _forward(self, profile_index: int, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def copy_in(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(src)`` without PyTorch's stream sync where that is safe.

    From pageable host memory the driver has staged ``src`` by the time the call returns (it may
    wait for the stream to do so), so the caller may reuse ``src`` at once. From pinned memory the
    GPU would read ``src`` later, after the caller may have reused it, so that copy waits.
    """
    return dst.copy_(src, non_blocking=src.is_cuda or not src.is_pinned())


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, copied as :func:`copy_in` copies."""
    device = torch.device(device)
    if t.device == device or (device.index is None and t.device.type == device.type):
        return t
    return copy_in(torch.empty(t.shape, dtype=t.dtype, device=device), t)


__all__ = ["Engine", "EngineLoadError", "profiles_of"]
