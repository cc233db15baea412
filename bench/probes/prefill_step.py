"""A prompt's first chunk on the GPU: through the pool, as served, against attending only to itself, side by side.

gemma-3-1b shapes in fp16 with random weights (the preset's config, the declared generate spec). Each prefill
bucket is captured and timed in two forms, in one process (the engine call, synchronised, and the graph replay):

- ``pool``: layer by layer (two compiled halves per layer), the chunk's keys and values written into the pool
  and read back for attention over the attention length's positions, with a masked float32 softmax;
- ``fresh``: the step compiled whole (``KVForward.fresh_prefill``): each layer writes the pool and attends to
  the chunk's own keys with causal scaled-dot-product attention.

Each row gives its logits' largest difference from the ``pool`` form's for the same prompt (``max_abs_diff``).
At 64 streams of 128 + 128 tokens a prompt is admitted every other decode step, so its prefill is about
0.47 x prefill_128 of every step's GPU time (session 13: 1.24 of about 3.0 ms).

Run on the GPU machine::

    python3 -m bench.probes.prefill_step --out $OUT/prefill_step.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.generate_bench import sync_fn, time_prefill
from bench.probes.decode_step import random_engine


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lengths", default="64,128,256,512", help="prompt lengths, each its bucket full")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--forms", default="pool,fresh")
    p.add_argument("--model", default="gemma-3-1b", help="a preset (tiny, with --device cpu, to try the probe)")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    device = torch.device(a.device)
    engine = random_engine(a.model, device, fresh_prefill=True)
    sync = sync_fn(device)
    rows, reference = [], {}
    for form in a.forms.split(","):
        engine.forward.fresh = form == "fresh"
        for n in (int(x) for x in a.lengths.split(",")):
            ids = np.random.default_rng(n).integers(4, engine.vocab_size, n).tolist()
            t0 = time.perf_counter()
            logits = engine.prefill(0, ids, 0)[0].float()  # compiles (first time), captures
            sync()
            first_s = time.perf_counter() - t0
            diff = (logits - reference.setdefault(n, logits)).abs().max().item()
            r = time_prefill(engine, n, a.iters, 10, sync, np.random.default_rng(n))
            rows.append({"form": form, **r, "first_call_s": round(first_s, 1), "max_abs_diff": diff})
            print(json.dumps(rows[-1]), flush=True)
            a.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                                         else "cpu", "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
