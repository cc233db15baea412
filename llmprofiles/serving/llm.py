"""Request handling for the ``llm`` Triton model, kept free of Triton.

model.py converts Triton tensors to torch and back; everything that decides
whether and how a request is served lives here and is tested without a server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmprofiles.engine import Engine
from llmprofiles.models import default_position_ids
from llmprofiles.profiles.selection import AUTO, PARAMETER, SelectionError

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class BadRequest(ValueError):
    """The request is invalid; the message names the value and what is allowed."""


@dataclass(frozen=True)
class Served:
    logits: torch.Tensor
    profile_index: int
    latency_ms: float


def choice_from_parameters(parameters: str | dict | None) -> object:
    """The ``optimization_profile`` value of a request's parameters (JSON in Triton 2.51)."""
    if not parameters:
        return AUTO
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters)
        except ValueError as e:
            raise BadRequest(f"request parameters are not valid JSON: {parameters!r}") from e
    if not isinstance(parameters, dict):
        raise BadRequest(f"request parameters must be a JSON object, got {parameters!r}")
    return parameters.get(PARAMETER, AUTO)


def validate(engine: Engine, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
             choice: object = AUTO) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check one request and choose its profile; raise BadRequest rather than guess."""
    if input_ids.dim() != 2:
        raise BadRequest(f"input_ids must be 2-D [batch, seq], got shape {list(input_ids.shape)}")
    if position_ids is None:
        position_ids = default_position_ids(input_ids)
    elif tuple(position_ids.shape) != tuple(input_ids.shape):
        raise BadRequest(f"position_ids shape {list(position_ids.shape)} differs from input_ids shape "
                         f"{list(input_ids.shape)}; they must be equal")
    shapes = {"input_ids": tuple(input_ids.shape), "position_ids": tuple(position_ids.shape)}
    try:
        index = engine.select(shapes, choice)
    except SelectionError as e:
        raise BadRequest(str(e)) from None
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= engine.vocab_size:
        bad = lo if lo < 0 else hi
        raise BadRequest(f"token id {bad} in input_ids is out of range; allowed [0, {engine.vocab_size - 1}]")
    if int(position_ids.min()) < 0:
        raise BadRequest(f"position id {int(position_ids.min())} is negative; position_ids must be >= 0")
    return input_ids, position_ids, index


class RequestHandler:
    """Validate, select, run; ``on_served(profile_index, latency_ms)`` feeds metrics."""

    def __init__(self, engine: Engine, on_served: Callable[[int, float], None] | None = None):
        self.engine = engine
        self.on_served = on_served

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
                 parameters: str | dict | None) -> Served:
        t0 = time.perf_counter()
        input_ids, position_ids, index = validate(self.engine, input_ids, position_ids,
                                                  choice_from_parameters(parameters))
        logits = self.engine.run(index, input_ids, position_ids)
        if logits.is_cuda:  # kernels run async: wait, so the latency metric counts them (Triton would wait anyway)
            torch.cuda.current_stream(logits.device).synchronize()
        latency_ms = (time.perf_counter() - t0) * 1e3
        if self.on_served:
            self.on_served(index, latency_ms)
        return Served(logits, index, latency_ms)
