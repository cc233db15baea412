"""Request handling for the ``llm`` Triton model, kept free of Triton.

model.py converts Triton tensors to torch and back; everything that decides
whether and how a request is served lives here and is tested without a server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llmprofiles.engine import Engine
from llmprofiles.models import default_position_ids
from llmprofiles.profiles.selection import AUTO, PARAMETER, SelectionError, shown

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Request parameters arrive as one JSON string; a longer one is refused unparsed.
MAX_PARAMETERS_CHARS = 4096
# Every error message sent back is cut to this length (gRPC caps status metadata near 16 KB).
MAX_MESSAGE_CHARS = 1024
INPUTS = ("input_ids", "position_ids")


class BadRequest(ValueError):
    """The request is invalid; the message names the value and what is allowed."""


@dataclass(frozen=True)
class Served:
    logits: torch.Tensor
    profile_index: int
    latency_ms: float


def cut_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An error message no longer than ``limit`` characters, saying how much was cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit - 40]}… (message cut from {len(message)} characters)"


def max_positions_of(version_dir: str | Path) -> int | None:
    """``max_position_embeddings`` of the built model (its ``model_config.json``), or None when unknown."""
    try:
        value = json.loads((Path(version_dir) / "model_config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def choice_from_parameters(parameters: str | dict | None) -> object:
    """The ``optimization_profile`` value of a request's parameters (JSON in Triton 2.51)."""
    if not parameters:
        return AUTO
    if isinstance(parameters, str):
        if len(parameters) > MAX_PARAMETERS_CHARS:
            raise BadRequest(f"request parameters {shown(parameters)} are too long; at most "
                             f"{MAX_PARAMETERS_CHARS} characters of JSON allowed (the only one read is {PARAMETER!r})")
        try:
            parameters = json.loads(parameters)
        except ValueError as e:
            raise BadRequest(f"request parameters are not valid JSON: {shown(parameters)}") from e
    if not isinstance(parameters, dict):
        raise BadRequest(f"request parameters must be a JSON object, got {shown(parameters)}")
    return parameters.get(PARAMETER, AUTO)


def admit(engine: Engine, shapes: Mapping[str, Sequence[int] | None], choice: object = AUTO) -> int:
    """Shape-only checks and the profile choice, from tensor metadata, before any tensor is built.

    ``shapes`` maps ``input_ids`` and (optionally) ``position_ids`` to their
    declared shapes; anything that scales with them is allocated only after
    this returns, so a request declaring a huge shape costs nothing.
    """
    ids_shape, pos_shape = shapes.get("input_ids"), shapes.get("position_ids")
    if ids_shape is None:
        given = [n for n, v in shapes.items() if v is not None]
        raise BadRequest(f"input_ids is required (INT64 [batch, seq]); the request carries only {given}")
    ids_shape = tuple(ids_shape)
    if len(ids_shape) != 2:
        raise BadRequest(f"input_ids must be 2-D [batch, seq], got shape {shown(list(ids_shape))}")
    if pos_shape is not None and tuple(pos_shape) != ids_shape:
        raise BadRequest(f"position_ids shape {shown(list(pos_shape))} differs from input_ids shape "
                         f"{shown(list(ids_shape))}; they must be equal")
    try:
        return engine.select({"input_ids": ids_shape, "position_ids": ids_shape}, choice)
    except SelectionError as e:
        raise BadRequest(str(e)) from None


def check_values(engine: Engine, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
                 max_positions: int | None = None) -> torch.Tensor:
    """Token and position ranges of an admitted request; returns the position ids (default 0..seq-1)."""
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= engine.vocab_size:
        bad = lo if lo < 0 else hi
        raise BadRequest(f"token id {bad} in input_ids is out of range; allowed [0, {engine.vocab_size - 1}]")
    if position_ids is None:
        return default_position_ids(input_ids)  # seq is bounded by the profile now
    lo, hi = int(position_ids.min()), int(position_ids.max())
    if lo < 0:
        raise BadRequest(f"position id {lo} is negative; position_ids must be >= 0")
    if max_positions is not None and hi >= max_positions:
        raise BadRequest(f"position id {hi} in position_ids is out of range; allowed [0, {max_positions - 1}] "
                         f"(the model's max_position_embeddings is {max_positions})")
    return position_ids


def validate(engine: Engine, input_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
             choice: object = AUTO, max_positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check one request and choose its profile; raise BadRequest rather than guess."""
    index = admit(engine, {"input_ids": None if input_ids is None else tuple(input_ids.shape),
                           "position_ids": None if position_ids is None else tuple(position_ids.shape)}, choice)
    position_ids = check_values(engine, input_ids, position_ids, max_positions)
    return input_ids, position_ids, index


class RequestHandler:
    """Validate, select, run; ``on_served(profile_index, latency_ms)`` feeds metrics.

    ``max_positions`` bounds position ids (``max_position_embeddings``); None leaves them unbounded above.
    Call it with tensors, or with loaders: ``handler({"input_ids": shape, ...}, load, parameters)`` via
    :meth:`serve`, which checks shapes from metadata before calling ``load(name)`` for any tensor.
    """

    def __init__(self, engine: Engine, on_served: Callable[[int, float], None] | None = None,
                 max_positions: int | None = None):
        self.engine = engine
        self.on_served = on_served
        self.max_positions = max_positions

    def __call__(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
                 parameters: str | dict | None) -> Served:
        tensors = {"input_ids": input_ids, "position_ids": position_ids}
        shapes = {n: None if t is None else tuple(t.shape) for n, t in tensors.items()}
        return self.serve(shapes, tensors.__getitem__, parameters)

    def serve(self, shapes: Mapping[str, Sequence[int] | None], load: Callable[[str], torch.Tensor | None],
              parameters: str | dict | None) -> Served:
        """Admit by shapes and parameters first; only then ``load`` the inputs, check values and run."""
        t0 = time.perf_counter()
        index = admit(self.engine, shapes, choice_from_parameters(parameters))
        input_ids = load("input_ids")
        position_ids = check_values(self.engine, input_ids, load("position_ids") if shapes.get("position_ids") is not None else None,
                                    self.max_positions)
        logits = self.engine.run(index, input_ids, position_ids)
        if logits.is_cuda:  # kernels run async: wait, so the latency metric counts them (Triton would wait anyway)
            torch.cuda.current_stream(logits.device).synchronize()
        latency_ms = (time.perf_counter() - t0) * 1e3
        if self.on_served:
            self.on_served(index, latency_ms)
        return Served(logits, index, latency_ms)


def warm_requests(engine: Engine) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """One request-shaped input per profile at its opt, as a client sends it: ``(profile, ids, positions)``.

    Host tensors, positions a contiguous ``arange`` per row: what a request's tensors look like
    once the backend hands them over. The engine compiled and checked every shape at load
    (``check_warm``); these run the model's own request path once more, from its tensors in
    to its output tensors out, before the server reports ready.
    """
    out = []
    for i in range(len(engine.profiles)):
        shape = tuple(engine.profiles.ranges(i)["input_ids"].opt)
        ids = torch.zeros(shape, dtype=torch.int64)
        out.append((i, ids, torch.arange(shape[-1], dtype=torch.int64).repeat(shape[0], 1)))
    return out
