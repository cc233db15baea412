"""Where a generate step's GPU time goes: a kernel table per step (torch.profiler), and attention alone.

gemma-3-1b shapes in fp16 with random weights (the preset's config, the declared generate spec), one process.
Each case runs its compiled step directly (not the captured graph: the same kernels, each traced alone) for
``--iters`` calls under the profiler, and lists the GPU kernels by total time per call: how many launches, how
many microseconds, and the sum over all of them against the call's graph replay.

Cases: ``fresh_<n>`` (a prompt's first chunk of n tokens, compiled whole; ``KVForward.fresh_prefill``),
``pool_<n>`` (the same chunk through the pool, layer by layer, as served without fresh prefill) and
``decode_b<b>`` (a decode step of b rows at 192 positions, compiled whole).

Then ``sdpa``: the fresh prefill's attention alone at each length (one layer's q ``[1, 4, n, 256]`` against
one KV head), per scaled-dot-product backend, with ``enable_gqa`` and with the KV head expanded to the query
heads, CUDA events, median of ``--iters``.

Run on the GPU machine::

    python3 -m bench.probes.step_kernels --out $OUT/step_kernels.json
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.probes.decode_step import random_engine
from llmprofiles.generation.engine import StepInputs


def step_inputs(engine, batch: int, seq: int, position: int) -> tuple[StepInputs, int]:
    """Scratch inputs of profile (batch, seq) on the device, every row at ``position``, and the attention length."""
    index = engine.select(batch, seq)
    x = StepInputs.scratch(*engine.step_shapes[index], engine.device, engine.pool.scratch)
    x.positions.add_(position)
    x.write_pos.add_(position)
    x.tokens.copy_(torch.randint(4, engine.vocab_size, x.tokens.shape, device=engine.device))
    if seq > 1 and position == 0 and engine.fresh_chunk(index, [0]):
        return x, 0
    return x, engine.graph_key(index, position + seq)[1]


def kernel_table(run, iters: int) -> dict:
    """GPU kernels of ``iters`` calls of ``run``: per kernel name, launches and microseconds per call."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            run()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA or e.name.startswith(("Memcpy", "Memset")):
            continue
        r = rows.setdefault(e.name, {"name": e.name[:140], "launches": 0, "us": 0.0})
        r["launches"] += 1
        r["us"] += e.time_range.elapsed_us()
    table = sorted(({**r, "launches": r["launches"] / iters, "us": round(r["us"] / iters, 2)} for r in rows.values()),
                   key=lambda r: -r["us"])
    return {"kernels_per_call": round(sum(r["launches"] for r in table), 1),
            "kernel_us_per_call": round(sum(r["us"] for r in table), 1), "top": table[:25]}


def replay_ms(engine, x: StepInputs, kv_len: int, iters: int) -> float:
    """Median CUDA-event time of the step captured as one graph over ``x``."""
    with torch.inference_mode():
        graph = captured(lambda: engine._forward(x, kv_len), warm=1)
    return event_ms(graph.replay, iters)


def captured(run, reps: int = 1, warm: int = 3) -> torch.cuda.CUDAGraph:
    """``reps`` calls of ``run()`` captured as one CUDA graph, after ``warm`` calls on a side stream (where anything
    compiles, autotunes or allocates)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warm):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            run()
    return graph


def event_ms(run, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(10):
        run()
    times = []
    for _ in range(iters):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def sdpa_table(lengths: list[int], iters: int, heads: int = 4, kv_heads: int = 1, dim: int = 256) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = []
    for n in lengths:
        q = torch.randn(1, heads, n, dim, device="cuda", dtype=torch.float16)
        k, v = (torch.randn(1, kv_heads, n, dim, device="cuda", dtype=torch.float16) for _ in range(2))
        sdpa = F.scaled_dot_product_attention
        forms = {"gqa": partial(sdpa, q, k, v, is_causal=True, enable_gqa=True),
                 "expanded": partial(sdpa, q, k.expand(1, heads, n, dim), v.expand(1, heads, n, dim), is_causal=True)}
        for backend in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            for form, run in forms.items():
                row = {"length": n, "backend": "default" if backend is None else backend.name, "form": form}
                try:
                    if backend is None:
                        row["ms"] = round(event_ms(run, iters), 4)
                    else:
                        with sdpa_kernel([backend]):
                            row["ms"] = round(event_ms(run, iters), 4)
                except RuntimeError as e:
                    row["error"] = str(e).splitlines()[0][:160]
                out.append(row)
                print(json.dumps(row), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", default="fresh_128,fresh_64,pool_128,decode_b64")
    p.add_argument("--sdpa-lengths", default="64,128,512", help="empty: no sdpa table")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--model", default="gemma-3-1b")
    a = p.parse_args()
    device = torch.device("cuda")
    engine = random_engine(a.model, device, fresh_prefill=True)
    out = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cases": {}}
    for case in a.cases.split(","):
        form, n = case.rsplit("_", 1)
        engine.forward.fresh = form == "fresh"
        batch, seq, position = (int(n[1:]), 1, 192) if form == "decode" else (1, int(n), 0)
        x, kv_len = step_inputs(engine, batch, seq, position)
        with torch.inference_mode():
            table = kernel_table(partial(engine._forward, x, kv_len), a.iters)
            table["replay_ms"] = round(replay_ms(engine, x, kv_len, 100), 4)
        out["cases"][case] = {"kv_len": kv_len, **table}
        print(case, json.dumps({k: v for k, v in out["cases"][case].items() if k != "top"}), flush=True)
        for r in table["top"][:12]:
            print(f"   {r['launches']:6.1f} x {r['us']:8.1f} us  {r['name'][:110]}", flush=True)
        a.out.write_text(json.dumps(out, indent=1))
    if a.sdpa_lengths:
        out["sdpa"] = sdpa_table([int(n) for n in a.sdpa_lengths.split(",")], 100)
    a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
