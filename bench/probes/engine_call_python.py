"""The Python an llm engine call spends in profile choice and shape checks, without a model.

A no-op engine over the declared MULTI profile set: ``select`` (ordered first-fit) and ``run`` (the
profile's shape check, then a forward that returns its input). Run anywhere::

    python bench/probes/engine_call_python.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.probes.generate_host_inputs import per_call_us  # noqa: E402
from llmprofiles.engine import Engine  # noqa: E402
from llmprofiles.profiles.sets import MULTI  # noqa: E402


class NoOp(Engine):
    def _inputs(self, index, input_ids, position_ids):
        return input_ids, position_ids

    def _forward(self, index, input_ids, position_ids):
        return input_ids


def main() -> None:
    engine = NoOp(MULTI, 100, "cpu")
    ids = torch.zeros(1, 1, dtype=torch.int64)
    shapes = {"input_ids": ids.shape, "position_ids": ids.shape}
    print(f"select {per_call_us(lambda: engine.select(shapes), 20_000):.1f} us, "
          f"run {per_call_us(lambda: engine.run(0, ids, ids), 20_000):.1f} us per decode call")


if __name__ == "__main__":
    main()
