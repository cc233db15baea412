"""The batch-1 matrix-vector kernels at each block size, against cuBLAS and inductor, on one GPU (gemma-3-1b's shapes
by default).

For each weight the batch-1 step runs through ``llmprofiles.generation.mlp`` (gate/up with the activation:
``[2 x inter, hidden]``; down: ``[hidden, inter]``; q/k/v: ``[qkv, hidden]``; output: ``[hidden, attn]``), every
block size in ``mlp.CONFIGS`` (and ``--extra-configs``, block sizes the autotuner does not try) is launched
directly, ``--reps`` launches back to back captured in one CUDA graph, and the graph's replay timed with CUDA
events (median of ``--iters`` after a warm-up, divided by ``--reps``), as microseconds and the weights' bytes per
second. Timed one launch at a time, each took about 31 us, cuBLAS 22 us, whatever the block size (session 19): the
host's launch, not the kernel; in the batch-1 step they replay from a CUDA graph too. Each launch reads its own
copy of the weight, cycling over ``--cold-mib`` of copies: a weight read again while still in L2 (50 MB on the H200;
gate/up is 32 MB) was timed above HBM's peak, 5.7 TB/s (session 20), which the step, streaming 2 GB of distinct
weights, never sees. Beside them, in the same process: cuBLAS (``F.linear``) and inductor's
multiply-and-reduce form compiled with coordinate descent (the batch-1 step's form without the kernels). Where the four kernels run at about 2.5 TB/s in the step (session
18's kernel table), this shows which block size gets nearer the 4.8 TB/s of HBM, and what the autotuner picked.

Run on the GPU machine; ends with one JSON line::

    python3 -m bench.probes.mlp_gemv --out $OUT/mlp_gemv.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.probes.step_kernels import captured, event_ms
from llmprofiles.generation import mlp


def graph_us(run, iters: int, reps: int) -> float:
    """Microseconds per ``run()``: ``reps`` calls captured in one CUDA graph, its replay timed."""
    return event_ms(captured(run, reps).replay, iters) * 1000 / reps


def cold_copies(w: torch.Tensor, cold_bytes: int) -> list[torch.Tensor]:
    """``w`` and copies of it, together at least ``cold_bytes``: launches that cycle over them read each from HBM."""
    return [w] + [w.clone() for _ in range(-(-cold_bytes // (w.numel() * w.element_size())) - 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1152)
    p.add_argument("--inter", type=int, default=6912)
    p.add_argument("--qkv", type=int, default=1536, help="q/k/v projection's rows (heads x head_dim + 2 x kv_heads x head_dim)")
    p.add_argument("--attn", type=int, default=1024, help="output projection's columns (heads x head_dim)")
    p.add_argument("--extra-configs", default="", help='more block sizes to time, e.g. "2x2048x4,4x1024x8" (rows x columns x warps)')
    p.add_argument("--iters", type=int, default=200, help="timed replays of each graph")
    p.add_argument("--reps", type=int, default=20, help="launches captured in each graph (at least one per copy)")
    p.add_argument("--cold-mib", type=int, default=256,
                   help="copies of each weight, cycled launch by launch, to this many MiB (0: one copy, read from L2)")
    p.add_argument("--out", type=Path, default=Path("bench/tmp/mlp_gemv.json"))
    a = p.parse_args()
    if not torch.cuda.is_available() or not mlp.available(torch.device("cuda")):
        raise SystemExit("needs a CUDA GPU and Triton")
    dev, dt = torch.device("cuda"), torch.float16
    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.hidden, generator=g).to(dev, dt)
    gate_up = (torch.randn(2 * a.inter, a.hidden, generator=g) * a.hidden ** -0.5).to(dev, dt)
    down = (torch.randn(a.hidden, a.inter, generator=g) * a.inter ** -0.5).to(dev, dt)
    qkv = (torch.randn(a.qkv, a.hidden, generator=g) * a.hidden ** -0.5).to(dev, dt)
    attn = torch.randn(a.attn, generator=g).to(dev, dt)
    o = (torch.randn(a.hidden, a.attn, generator=g) * a.attn ** -0.5).to(dev, dt)
    act = mlp.gemv(h, gate_up, gated=True)  # autotunes each shape once: the autotuner's choice is reported too
    mlp.gemv(act, down, gated=False)
    mlp.gemv(h, qkv, gated=False)
    mlp.gemv(attn, o, gated=False)
    picked = mlp.chosen()
    extra = [tuple(int(v) for v in c.split("x")) for c in a.extra_configs.split(",") if c]
    rows = []

    def row(kernel: str, form: str, us: float, nbytes: int) -> None:
        rows.append({"kernel": kernel, "form": form, "us": round(us, 2), "tb_s": round(nbytes / us / 1e6, 2)})
        print(f"{kernel:8s} {form:28s} {us:8.2f} us {nbytes / us / 1e6:6.2f} TB/s", flush=True)

    for kernel, x, w, gated in (("gate_up", h, gate_up, True), ("down", act, down, False), ("qkv", h, qkv, False),
                                ("o", attn, o, False)):
        nbytes = w.numel() * w.element_size()
        copies = cold_copies(w, a.cold_mib << 20)
        reps = max(a.reps, len(copies))

        def timed(form: str, call) -> None:
            ws = itertools.cycle(copies)
            row(kernel, form, graph_us(lambda: call(next(ws)), a.iters, reps), nbytes)

        for config in [*mlp.CONFIGS, *extra]:
            mlp.FIXED = config
            timed("block %d x %d, %d warps" % config, lambda w: mlp.gemv(x, w, gated))
        mlp.FIXED = None
        timed("cuBLAS (F.linear)", lambda w: F.linear(x, w))
        reduce = torch.compile(lambda x, w: (x.reshape(1, -1) * w).sum(-1), fullgraph=True, dynamic=False,
                               options={"coordinate_descent_tuning": True})
        timed("inductor multiply-and-reduce", lambda w: reduce(x, w))
        del copies
    summary = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "hidden": a.hidden,
               "inter": a.inter, "qkv": a.qkv, "attn": a.attn, "cold_mib": a.cold_mib, "autotuner_picked": picked, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
