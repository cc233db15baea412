"""What a generate engine is built with: slots, context, and its step profiles.

Every engine step has the shape ``[batch, seq]``. Its profiles are declared like
the ``llm`` ones, as one ordered :class:`ProfileSet`, and chosen by ordered
first-fit:

- decode buckets over batch size at ``seq == 1``, smallest first. Bucket ``b``
  accepts ``[1..b, 1]``, so first-fit picks the smallest bucket that holds the
  batch, and the step is padded up to ``b`` (each bucket is one static shape);
- then prefill buckets over prompt length at ``batch == 1``, shortest first.
  Bucket ``n`` accepts ``[1, 1..n]``; a longer prompt is prefilled in chunks of
  the largest bucket;
- then, for each larger prefill batch ``b`` of ``prefill_batches`` (after the
  one before it, ``a``), the same length buckets at ``batch`` ``a+1..b``
  (``prefill_b{b}_{n}``): several whole prompts in one step, each row its own
  slot, the step padded up to ``[b, n]``.

Decode comes first, so a one-token prompt chunk (``[1, 1]``) is a decode step: it
is the same computation.

Example::

    >>> spec = GenerationSpec(slots=4, max_context=64, decode_buckets=(1, 2, 4), prefill_buckets=(16, 32))
    >>> ps = spec.profiles()
    >>> ps.names
    ('decode_b1', 'decode_b2', 'decode_b4', 'prefill_16', 'prefill_32')
    >>> ps.first_fit({"input_ids": (3, 1), "position_ids": (3, 1)}), ps.first_fit({"input_ids": (1, 20), "position_ids": (1, 20)})
    (2, 4)
    >>> GenerationSpec(4, 64, (1, 2), (16, 32), prefill_batches=(1, 4)).profiles().names
    ('decode_b1', 'decode_b2', 'prefill_16', 'prefill_32', 'prefill_b4_16', 'prefill_b4_32')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange


@dataclass(frozen=True)
class GenerationSpec:
    """Slots x max_context is the KV pool; the buckets are the step profiles."""

    slots: int
    max_context: int
    decode_buckets: tuple[int, ...]
    prefill_buckets: tuple[int, ...]
    # Prompts per prefill step: 1, then larger batches of whole prompts (each crossed with every length bucket).
    prefill_batches: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        for field in ("slots", "max_context"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"generation {field} must be an int, got {v!r}")
            if v < 1:
                raise ValueError(f"generation {field} = {v}, must be >= 1")
        for field, limit, limit_name in (("decode_buckets", self.slots, "slots"),
                                         ("prefill_buckets", self.max_context, "max_context"),
                                         ("prefill_batches", self.slots, "slots")):
            b = getattr(self, field)
            if not isinstance(b, tuple) or not b or not all(isinstance(x, int) and not isinstance(x, bool) for x in b):
                raise TypeError(f"generation {field} must be a non-empty tuple of ints, got {b!r}")
            if b[0] < 1 or any(x >= y for x, y in zip(b, b[1:])):
                raise ValueError(f"generation {field} {list(b)} must be >= 1 and strictly increasing")
            if b[-1] > limit:
                raise ValueError(f"generation {field} {list(b)}: largest bucket {b[-1]} exceeds {limit_name} = {limit}")
        if self.prefill_batches[0] != 1:
            raise ValueError(f"generation prefill_batches {list(self.prefill_batches)} must start with 1 "
                             "(a prompt alone, and every chunk of a long one, is a batch of 1)")

    @property
    def max_batch(self) -> int:
        return self.decode_buckets[-1]

    @property
    def max_chunk(self) -> int:
        return self.prefill_buckets[-1]

    @property
    def max_prefill_batch(self) -> int:
        return self.prefill_batches[-1]

    def profiles(self) -> ProfileSet:
        ranges = [ShapeRange((1, 1), (b, 1), (b, 1)) for b in self.decode_buckets]
        names = [f"decode_b{b}" for b in self.decode_buckets]
        for low, b in zip((0, *self.prefill_batches), self.prefill_batches):
            ranges += [ShapeRange((low + 1, 1), (b, n), (b, n)) for n in self.prefill_buckets]
            names += [f"prefill_{n}" if b == 1 else f"prefill_b{b}_{n}" for n in self.prefill_buckets]
        ranges, names = tuple(ranges), tuple(names)
        return ProfileSet(names, (InputSpec("input_ids", profiles=ranges), InputSpec("position_ids", profiles=ranges)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationSpec:
        return cls(int(d["slots"]), int(d["max_context"]), tuple(d["decode_buckets"]), tuple(d["prefill_buckets"]),
                   tuple(d.get("prefill_batches", (1,))))  # builds before batched prefill have none

    def replace(self, **overrides: Any) -> GenerationSpec:
        """A copy with the given fields changed (None means keep), validated again."""
        d = asdict(self) | {k: v for k, v in overrides.items() if v is not None}
        return GenerationSpec(**d)


def parse_buckets(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``, for build-time overrides."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"buckets {text!r} must be comma-separated integers, e.g. 1,2,4,8") from None
