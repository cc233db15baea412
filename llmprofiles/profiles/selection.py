"""Per-request profile choice: ``"auto"`` (ordered first-fit), an index, or a name.

Pure functions of (profile set, shapes, choice); model.py and both runtimes call
them, and they are tested without Triton or a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from llmprofiles.profiles.spec import ProfileSet

AUTO = "auto"
PARAMETER = "optimization_profile"  # the per-request Triton parameter carrying the choice
SHOWN_CHARS = 64  # a value echoed in an error is cut to this many characters
# A canonical ASCII decimal index: no spaces, signs, leading zeros, non-ASCII digits or NULs.
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")


class SelectionError(ValueError):
    """A request cannot be served by any allowed profile. The message says why."""


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long the original was.

    >>> shown("x" * 100, limit=8)
    "'xxxxxxx… (100 characters)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit - 1]}… ({size})"


def parse_choice(profiles: ProfileSet, value: object) -> int | None:
    """Turn an ``optimization_profile`` parameter into an index, or None for auto.

    Accepted, exactly: ``"auto"``, a declared name, a canonical ASCII decimal
    index (``"0"``, ``"1"``; not ``" 1"``, ``"+1"``, ``"01"`` or ``"١"``), or a
    JSON integer.

    >>> from llmprofiles.profiles.sets import MULTI
    >>> parse_choice(MULTI, "auto"), parse_choice(MULTI, "prefill"), parse_choice(MULTI, 0)
    (None, 1, 0)
    """
    if value is None or (isinstance(value, str) and value == AUTO):
        return None
    allowed = f"'auto', an index in [0, {len(profiles) - 1}], or one of {list(profiles.names)}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SelectionError(f"optimization_profile {shown(value)} is malformed; allowed: {allowed}")
    if isinstance(value, str):
        if value in profiles.names:
            return profiles.names.index(value)
        if not _INDEX.fullmatch(value):  # fullmatch: "$" would accept a trailing newline
            raise SelectionError(f"optimization_profile {shown(value)} is not a known profile; allowed: {allowed}")
        value = int(value)
    if not 0 <= value < len(profiles):
        raise SelectionError(f"optimization_profile index {shown(value)} is out of range; allowed: {allowed}")
    return value


def select_profile(profiles: ProfileSet, shapes: Mapping[str, Sequence[int]], choice: object = AUTO) -> int:
    """The profile index that serves ``shapes``; raise SelectionError if none may.

    ``auto`` is plain ordered first-fit on every call (never sticky). A manual
    choice must contain the shapes, or the request is refused.
    """
    index = parse_choice(profiles, choice)
    if index is None:
        index = profiles.first_fit(shapes)
        if index is None:
            shown = {k: list(v) for k, v in shapes.items()}
            options = "; ".join(profiles.describe(i) for i in range(len(profiles)))
            raise SelectionError(f"input shapes {shown} fit no optimization profile; profiles: {options}")
        return index
    if not profiles.fits(index, shapes):
        shown = {k: list(v) for k, v in shapes.items()}
        raise SelectionError(
            f"input shapes {shown} are outside optimization profile {profiles.describe(index)}; "
            f"choose another profile or 'auto'"
        )
    return index
