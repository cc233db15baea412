"""The KV cache: one pool of sequence slots on the device, shared by every profile.

The pool is allocated once at load, ``[layers, slots + 1, max_context, kv_heads,
head_dim]`` for keys and again for values. Slot ``slots`` (the last) is scratch:
padded rows of a bucketed step write there, so they never touch a live sequence.
:class:`SlotPool` hands out and takes back the live slots.
"""

from __future__ import annotations

import torch


class SlotsExhausted(RuntimeError):
    """Every slot is in use."""


class SlotPool:
    """Free-list of sequence slots ``0 .. slots - 1``; lowest index first, so tests are predictable."""

    def __init__(self, slots: int):
        self.slots = slots
        self._free = list(range(slots - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def scratch(self) -> int:
        return self.slots

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return len(self._used)

    def alloc(self) -> int:
        if not self._free:
            raise SlotsExhausted(f"all {self.slots} KV slots are in use")
        slot = self._free.pop()
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise ValueError(f"slot {slot} is not in use (in use: {sorted(self._used)})")
        self._used.remove(slot)
        self._free.append(slot)
        self._free.sort(reverse=True)


def allocate_pool(num_layers: int, slots: int, max_context: int, kv_heads: int, head_dim: int,
                  dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed K and V pools with one scratch slot past ``slots``."""
    shape = (num_layers, slots + 1, max_context, kv_heads, head_dim)
    return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
