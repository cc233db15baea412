"""Optimization-profile specs: declaration, validation, union envelope, first-fit.

A profile set mirrors ``torch_tensorrt.Input(profiles=[...])``: each dynamic input
declares an ordered list of ``[min, opt, max]`` shape ranges, and the list index is
the optimization-profile index. Inputs without profiles keep one shape in every
profile. Everything else in the project (build, runtimes, model.py, clients,
tests) reads profiles from a :class:`ProfileSet`, never from literals.

Example::

    >>> seq = (ShapeRange((1, 1), (1, 1), (1, 1)), ShapeRange((1, 1), (1, 256), (1, 512)))
    >>> ps = ProfileSet(("decode", "prefill"), (InputSpec("input_ids", profiles=seq),))
    >>> ps.first_fit({"input_ids": (1, 1)}), ps.first_fit({"input_ids": (1, 300)})
    (0, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    """One ``[min, opt, max]`` range for one input. Validated by :class:`InputSpec`."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max)
        )

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    def describe(self) -> str:
        return f"min {list(self.min)}, max {list(self.max)}"

    def to_dict(self) -> dict[str, list[int]]:
        return {"min_shape": list(self.min), "opt_shape": list(self.opt), "max_shape": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> ShapeRange:
        return cls(tuple(d["min_shape"]), tuple(d["opt_shape"]), tuple(d["max_shape"]))


@dataclass(frozen=True)
class InputSpec:
    """One engine input: either ``profiles`` (ordered ranges) or one ``shape`` range.

    ``shape`` is the single-range form (used for every profile); it is an error
    to give both, as with ``torch_tensorrt.Input``.
    """

    name: str
    profiles: tuple[ShapeRange, ...] | None = None
    shape: ShapeRange | None = None
    dtype: str = "int64"

    def __post_init__(self) -> None:
        if self.profiles is not None and self.shape is not None:
            raise ValueError(
                f"input {self.name!r}: give either profiles or a single-range shape, not both "
                f"(profiles already hold the shape ranges for this input)"
            )
        if self.profiles is None and self.shape is None:
            raise ValueError(f"input {self.name!r}: needs profiles or a single-range shape")
        if self.profiles is not None:
            if not isinstance(self.profiles, tuple):
                raise TypeError(f"input {self.name!r}: profiles must be a tuple, got {type(self.profiles).__name__}")
            if len(self.profiles) == 0:
                raise ValueError(f"input {self.name!r}: profiles is empty; declare at least one profile")
        ranges = self.profiles if self.profiles is not None else (self.shape,)
        rank = len(ranges[0].min)
        for i, r in enumerate(ranges):
            where = f"input {self.name!r}, profile {i}"
            for field in ("min", "opt", "max"):
                dims = getattr(r, field)
                if not isinstance(dims, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                    raise TypeError(f"{where}: {field}_shape must be a tuple of ints, got {dims!r}")
                if len(dims) != rank:
                    raise ValueError(
                        f"{where}: {field}_shape {list(dims)} has rank {len(dims)}, "
                        f"expected rank {rank} like the other shapes of this input"
                    )
            for d, (lo, opt, hi) in enumerate(zip(r.min, r.opt, r.max)):
                if lo < 1:
                    raise ValueError(f"{where}: min_shape[{d}] = {lo}, must be >= 1")
                if not lo <= opt <= hi:
                    raise ValueError(
                        f"{where}: dim {d} breaks min <= opt <= max (min {lo}, opt {opt}, max {hi})"
                    )

    def range_for(self, profile_index: int) -> ShapeRange:
        return self.profiles[profile_index] if self.profiles is not None else self.shape


@dataclass(frozen=True)
class ProfileSet:
    """An ordered set of named profiles over a model's inputs.

    The position in ``names`` is the profile index, which is also the index of the
    engine's optimization profile. Order decides overlaps under first-fit.
    """

    names: tuple[str, ...]
    inputs: tuple[InputSpec, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("profile set has no profile names; declare at least one profile")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"profile names must be unique, got {list(self.names)}")
        for n in self.names:
            if not isinstance(n, str):
                raise TypeError(f"profile name {n!r} must be a str, got {type(n).__name__}")
            if not n or n == "auto" or n.lstrip("-").isdigit():
                raise ValueError(f"profile name {n!r} is reserved or empty; use a word like 'decode'")
        counts = {i.name: len(i.profiles) for i in self.inputs if i.profiles is not None}
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"profiled inputs declare different numbers of profiles: {counts}; "
                f"every profiled input must declare the same number"
            )
        n = next(iter(counts.values()), 1)
        if n != len(self.names):
            raise ValueError(f"{len(self.names)} profile names {list(self.names)} for {n} declared profiles")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def ranges(self, profile_index: int) -> dict[str, ShapeRange]:
        return {i.name: i.range_for(profile_index) for i in self.inputs}

    @cached_property
    def _bounds(self) -> tuple[tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...], ...]:
        # Per profile, (input name, min, max): fits runs on every request, twice (choice, then the engine's check).
        return tuple(tuple((name, r.min, r.max) for name, r in self.ranges(i).items()) for i in range(len(self)))

    def fits(self, profile_index: int, shapes: Mapping[str, Sequence[int]]) -> bool:
        for name, lo, hi in self._bounds[profile_index]:
            shape = shapes[name]
            if len(shape) != len(lo):
                return False
            for a, x, b in zip(lo, shape, hi):
                if not a <= x <= b:
                    return False
        return True

    def first_fit(self, shapes: Mapping[str, Sequence[int]]) -> int | None:
        """Ordered first-fit: the first profile whose [min, max] holds every input shape."""
        for i in range(len(self)):
            if self.fits(i, shapes):
                return i
        return None

    def envelope(self) -> dict[str, ShapeRange]:
        """Union envelope: elementwise min of mins and max of maxes; opt from profile 0."""
        out = {}
        for inp in self.inputs:
            rs = [inp.range_for(i) for i in range(len(self))]
            out[inp.name] = ShapeRange(
                tuple(min(d) for d in zip(*(r.min for r in rs))), rs[0].opt,
                tuple(max(d) for d in zip(*(r.max for r in rs))),
            )
        return out

    def describe(self, profile_index: int) -> str:
        rs = "; ".join(f"{n}: {r.describe()}" for n, r in self.ranges(profile_index).items())
        return f"{profile_index} ({self.names[profile_index]}: {rs})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "inputs": [
                {"name": i.name, "dtype": i.dtype}
                | ({"profiles": [r.to_dict() for r in i.profiles]} if i.profiles is not None else {"shape": i.shape.to_dict()})
                for i in self.inputs
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProfileSet:
        inputs = []
        for i in d["inputs"]:
            profiles = tuple(ShapeRange.from_dict(r) for r in i["profiles"]) if "profiles" in i else None
            shape = ShapeRange.from_dict(i["shape"]) if "shape" in i else None
            inputs.append(InputSpec(i["name"], profiles=profiles, shape=shape, dtype=i.get("dtype", "int64")))
        return cls(tuple(d["names"]), tuple(inputs))
