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
        self.device = device

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
        # non_blocking: a copy from pageable host memory is staged before the call returns, without
        # the stream synchronize a blocking copy adds (the graph that follows is queued behind it).
        return self._forward(profile_index, input_ids.to(self.device, non_blocking=True),
                             position_ids.to(self.device, non_blocking=True))

    def _forward(self, profile_index: int, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


__all__ = ["Engine", "EngineLoadError", "profiles_of"]
