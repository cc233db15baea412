"""Time the generate engine's steps per profile, and the scheduler's host gap, in-process.

    python -m bench.probes.generate_steps --version-dir model_repository/generate/1 --device cuda

Decode steps run with the bucket full, at a context of ``--context`` positions; prefill steps at
each bucket's length. The scheduler run submits ``--concurrency`` requests of ``--prompt-len`` /
``--max-tokens`` with a no-op emit and reports its wall time per decode step beside the engine's.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from llmprofiles.generation.engine import load_generation_engine
from llmprofiles.generation.scheduler import GenerateRequest, Observer, Scheduler
from llmprofiles.loadgen import latency_summary


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


class StepClock(Observer):
    def __init__(self):
        self.decode_steps = 0

    def step(self, profile_index, tokens):
        self.decode_steps += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--version-dir", default="model_repository/generate/1", help="the generate build")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where the engine runs")
    p.add_argument("--context", type=int, default=192, help="positions already in each slot for decode steps")
    p.add_argument("--iters", type=int, default=50, help="timed steps per profile")
    p.add_argument("--concurrency", type=int, default=64, help="requests in the scheduler run")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per request in the scheduler run")
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens per request in the scheduler run")
    p.add_argument("--kernels", action="store_true", help="profile the kernels of one decode step per bucket (CUDA)")
    a = p.parse_args()
    device = torch.device(a.device)
    t0 = time.perf_counter()
    engine = load_generation_engine(a.version_dir, device)
    load_s = time.perf_counter() - t0
    warm = engine.warm_up()
    result = {"load_s": round(load_s, 1), "warm_up_s": round(sum(warm), 1), "decode_ms": {}, "prefill_ms": {}}
    for i, name in enumerate(engine.profiles.names):
        batch, seq = engine.step_shapes[i]
        if seq == 1:
            fn = lambda b=batch: engine.decode(list(range(b)), [5] * b, [a.context] * b)  # noqa: E731
            key = "decode_ms"
        else:
            fn = lambda s=seq: engine.prefill(0, [5] * s, 0)  # noqa: E731
            key = "prefill_ms"
        fn()
        ms = time_ms(fn, device, a.iters)
        result[key][name] = latency_summary(ms)
        print(f"{name:>12}: p50 {result[key][name]['p50_ms']:.3f} ms  p99 {result[key][name]['p99_ms']:.3f} ms", flush=True)
    if device.type == "cuda":
        weights = sum(t.numel() * t.element_size() for t in engine.forward.w.values())
        result["memory_mib"] = {"weights": weights / 2**20, "kv_pool": engine.kv_bytes / 2**20,
                                "allocated": torch.cuda.memory_allocated(device) / 2**20,
                                "max_allocated": torch.cuda.max_memory_allocated(device) / 2**20,
                                "reserved": torch.cuda.memory_reserved(device) / 2**20}
    if a.kernels and device.type == "cuda":
        result["kernels"] = {name: kernel_table(engine, b, a.context) for name, b in
                             (("decode_b1", 1), ("decode_b64", engine.spec.max_batch))}
    clock = StepClock()
    sched = Scheduler(engine, _NoText(), lambda o: None, max_queue=a.concurrency, observer=clock)
    for i in range(a.concurrency):
        sched.submit(GenerateRequest([3 + i] * a.prompt_len, max_tokens=a.max_tokens, min_tokens=a.max_tokens))
    sync(device)
    t0 = time.perf_counter()
    while sched.run_once():
        pass
    sync(device)
    wall = time.perf_counter() - t0
    tokens = a.concurrency * a.max_tokens
    result["scheduler"] = {"concurrency": a.concurrency, "wall_s": round(wall, 3), "steps": clock.decode_steps,
                           "output_tokens_per_s": round(tokens / wall, 1)}
    print(json.dumps(result))


def kernel_table(engine, batch: int, context: int, top: int = 12) -> dict:
    """CUDA kernels of one decode step (graph replay), by total time: count, busy ms, the top ones."""
    from torch.profiler import ProfilerActivity, profile

    step = lambda: engine.decode(list(range(batch)), [5] * batch, [context] * batch)  # noqa: E731
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time_total for e in rows) / 5 / 1e3
    count = sum(e.count for e in rows) / 5
    rows.sort(key=lambda e: -e.device_time_total)
    table = [{"kernel": e.key[:90], "calls": e.count // 5, "us_per_step": round(e.device_time_total / 5, 1)}
             for e in rows[:top]]
    print(f"decode batch {batch}: {count:.0f} kernels, busy {busy:.3f} ms per step")
    for r in table:
        print(f"  {r['us_per_step']:>8.1f} us  x{r['calls']:<4} {r['kernel']}")
    return {"kernels_per_step": count, "busy_ms": round(busy, 3), "top": table}


class _NoText:
    def decode(self, ids, skip_special_tokens=True):
        return ""


if __name__ == "__main__":
    main()
