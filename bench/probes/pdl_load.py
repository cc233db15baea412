"""Does the batch-1 decode step with programmatic dependent launch keep its speed from compile to load?

In ``make bench-generate``'s engine phase (H200, session 12) the served batch-1 step with PDL replayed in 1.93
and 1.53 ms on two fresh builds, where ``bench/probes/decode_step.py`` had measured 1.17 ms for the same compile
in one process. A PDL kernel restored from the inductor cache is tuned again at load (coordinate descent, from
scratch: ``llmprofiles.runtimes.compiled.cached_configs_final``). Three processes over one fresh cache dir,
gemma-3-1b shapes, random weights:

- ``compile``: the step compiled (and tuned) from an empty cache, as the build does;
- ``load``: restored from that cache, as a server started before this change did;
- ``load-kept``: restored inside ``cached_configs_final`` (a tuned config found in the cache is kept).

Each prints one JSON line: graph replay and call p50 at 192 positions, and inductor's tuning counters.
Run on the GPU machine::

    python3 -m bench.probes.pdl_load --out $OUT/pdl_load.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("compile", "load", "load-kept", "load", "load-kept")


def stage(name: str, pdl: bool) -> dict:
    import torch

    from bench.generate_bench import sync_fn, time_decode
    from bench.probes.decode_step import random_engine
    from llmprofiles.runtimes.compiled import cached_configs_final, compile_counts

    device = torch.device("cuda")
    torch.manual_seed(0)
    engine = random_engine("gemma-3-1b", device, pdl=pdl)
    sync = sync_fn(device)
    t0 = time.perf_counter()
    with cached_configs_final() if name == "load-kept" else contextlib.nullcontext():
        logits = engine.decode([0], [5], [192])[0]
        sync()
    first_s = time.perf_counter() - t0
    r = time_decode(engine, 1, 192, 300, 20, sync)
    return {"stage": name, "pdl": pdl, "first_call_s": first_s, "call_p50_ms": r["call_ms"]["p50_ms"],
            "replay_p50_ms": (r["replay_ms"] or {}).get("p50_ms"), "logit_sum": float(logits.float().sum()),
            "counters": compile_counts()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path)
    p.add_argument("--stage", choices=sorted(set(STAGES)))
    p.add_argument("--no-pdl", action="store_true")
    a = p.parse_args()
    if a.stage:
        print(json.dumps(stage(a.stage, not a.no_pdl)), flush=True)
        return
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="pdl_load_"))
    rows = []
    for name in STAGES:
        done = subprocess.run([sys.executable, "-m", "bench.probes.pdl_load", "--stage", name,
                               *(["--no-pdl"] if a.no_pdl else [])], env=env, capture_output=True, text=True)
        line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("{")), None)
        row = json.loads(line) if line else {"stage": name, "error": (done.stderr or done.stdout)[-1500:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.out:
        a.out.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
