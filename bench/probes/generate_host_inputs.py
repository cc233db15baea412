"""Host time of one decode step's input building in the generate engine, without a model or a GPU.

The engine call on the GPU is host work (profile choice, bounds checks, the padded
inputs written into the pinned buffer) then one copy and one graph replay. This
times the host part for the gemma-3-1b preset's full decode bucket (64 rows)::

    python -m bench.probes.generate_host_inputs

Session 6, CPU machine (2 cores), select / check / host inputs per step: with
torch ops on the buffer 51 / 46 / 391 us, and 68 / 97 / 536 us in a second run
while CI ran beside it; with the choice cached, whole-batch bounds and numpy
views 0.6 / 27 / 71 and 0.6 / 27 / 68 us (the second run right after the same
busy one).
"""

import time

import torch

from llmprofiles.generation.engine import GenerationEngine, StepInputs
from llmprofiles.generation.kvcache import SlotPool
from llmprofiles.profiles.sets import generate_spec


def bare_engine(model: str = "gemma-3-1b") -> GenerationEngine:
    """The engine's profile and input machinery, with no weights, pool or device."""
    e = GenerationEngine.__new__(GenerationEngine)
    e.spec = spec = generate_spec(model)
    e.profiles, e.vocab_size, e.pool, e._selected = spec.profiles(), 262144, SlotPool(spec.slots), {}
    e.step_shapes = [e.profiles.ranges(i)["input_ids"].max for i in range(len(e.profiles))]
    e.host = [[StepInputs(b, s, torch.device("cpu"))] for b, s in e.step_shapes]  # a ring of one per profile
    e._turn = [0] * len(e.step_shapes)
    return e


def per_call_us(fn, n: int = 2000) -> float:
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    e = bare_engine()
    batch = e.spec.max_batch
    slots, rows, starts = list(range(batch)), [[1000 + i] for i in range(batch)], [192] * batch
    index = e.select(batch, 1)
    for name, fn in (("select", lambda: e.select(batch, 1)), ("check", lambda: e._check(rows, slots, starts)),
                     ("host inputs", lambda: e._host_inputs(index, rows, slots, starts))):
        print(f"{name}: {per_call_us(fn):.1f} us per decode step of {batch} rows")


if __name__ == "__main__":
    main()
