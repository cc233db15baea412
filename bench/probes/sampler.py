"""The sampler's host time per decode step on the GPU: greedy rows, with and without the end token banned.

``sample_tensor`` plus the pinned copy of its tokens that the scheduler launches after it (``Flight.launch``),
timed on the host (nothing waits for the device). Rows ban nothing, one end id (a column fill), or two end ids
(an indexed write). Run on the GPU machine::

    python3 -m bench.probes.sampler --out $OUT/sampler.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmprofiles.generation.sampler import SamplingParams, sample_tensor
from llmprofiles.generation.scheduler import Flight


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--vocab", type=int, default=262144)
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    device = torch.device(a.device)
    rows = []
    for b in (int(x) for x in a.batches.split(",")):
        logits = torch.randn(b, a.vocab, dtype=torch.float16 if device.type == "cuda" else torch.float32, device=device)
        params = [SamplingParams()] * b
        for case, banned in (("none", [None] * b), ("one end id", [1] * b), ("two end ids", [1, 2] * (b // 2) or [1])):
            samples = []
            for i in range(a.iters + 20):
                scratch = logits.clone()  # as the engine's step: fresh logits each step
                t0 = time.perf_counter()
                Flight.launch([], sample_tensor(scratch, params, [None] * b, banned))
                if i >= 20:
                    samples.append((time.perf_counter() - t0) * 1e6)
            samples.sort()
            row = {"batch": b, "case": case, "host_us_p50": samples[len(samples) // 2],
                   "host_us_p90": samples[int(len(samples) * 0.9)]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    a.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                 "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
