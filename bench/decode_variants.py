"""Static decode profile, compile variants side by side in one process (GPU only).

Each variant compiles the seq=1 profile as the engine does (torch.compile, then
a CUDA graph through StaticGraphRunner): the engine's static options, with
coordinate descent on or off ("cdt"), with or without fused projections, with
or without single-token projections as reductions ("gemv", ``fusion.use_gemv``),
with or without single-query attention as reductions instead of SDPA
("sqa", ``fusion.use_single_query_attention``), and with or without the gated MLP's
two kernels ("mlp", ``fusion.use_mlp_kernel``). For each it reports the compile
time, the engine-style call (host tensors in, logits out) and the graph replay
alone, as median and p99 in ms, the max |logit diff| against HF eager, and a
kernel profile of the replay (kernels per replay and GPU busy time, by kind and
by the costliest kernels). Variants run in the order of their module changes
(plain, fused, gemv, sqa, mlp), which are one-way.

    python -m bench.decode_variants --model gemma-3-1b --variants plain,fused+gemv+cdt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmprofiles import models
from llmprofiles.loadgen import percentiles
from llmprofiles.runtimes import fusion
from llmprofiles.runtimes.compiled import PDL, STATIC_OPTIONS, StaticGraphRunner

CDT = {"coordinate_descent_tuning": True}
NO_CDT = {"coordinate_descent_tuning": False}
# name: (fuse projections, single-token projections as reductions, single-query attention without SDPA,
#        the MLP kernels (fusion.use_mlp_kernel), inductor options over STATIC_OPTIONS[, persistent one-row
#        reductions up to this many values (fusion.persistent_rows)])
VARIANTS = {
    "plain": (False, False, False, False, NO_CDT),
    "cdt": (False, False, False, False, CDT),
    "fused": (True, False, False, False, NO_CDT),
    "fused+cdt": (True, False, False, False, CDT),
    "fused+gemv": (True, True, False, False, NO_CDT),
    "fused+gemv+cdt": (True, True, False, False, CDT),
    "fused+gemv+sqa": (True, True, True, False, NO_CDT),
    "fused+gemv+cdt+sqa": (True, True, True, False, CDT),  # what the engine shipped until session 19
    # Independent kernels (e.g. the q and k norms) launched as one.
    "fused+gemv+cdt+sqa+combo": (True, True, True, False, {**CDT, "combo_kernels": True}),
    # Longer pointwise chains (gelu(gate) * up) are stored once instead of recomputed by every program of the
    # reduction that reads them (down_proj's GEMV). Inductor's default threshold is 30 ops.
    "fused+gemv+cdt+sqa+realize": (True, True, True, False, {**CDT, "realize_opcount_threshold": 8}),
    # Coordinate descent that tries every direction and two steps at a time: a wider search for each kernel's
    # launch config, so less left to the order of the benchmarks (the spread between compiles, issue 12).
    "fused+gemv+cdt+sqa+wide": (True, True, True, False, {**CDT, "coordinate_descent_check_all_directions": True,
                                                          "coordinate_descent_search_radius": 2}),
    # Nodes fused even when they share no buffer (e.g. a norm's reduction beside the GEMV that reads its input).
    "fused+gemv+cdt+sqa+aggr": (True, True, True, False, {**CDT, "aggressive_fusion": True}),
    # Programmatic dependent launch: each kernel starts launching while the one before it finishes
    # (the build tries it too: compiled.TUNE_VARIANTS).
    "fused+gemv+cdt+sqa+pdl": (True, True, True, False, {**CDT, **PDL}),
    # The gated MLP's single token through generate's two MLP kernels (gate/up with the activation, then down):
    # inductor's form recomputes gelu(gate) * up in every program of down's GEMV (generate, session 17).
    "fused+gemv+cdt+sqa+mlp": (True, True, True, True, CDT),
    # One-row reductions (the norms, 1,152 values for gemma-3-1b) kept in registers up to 4,096 values, where inductor
    # loops past 1,024 (fusion.PERSISTENT_ROWS: generate's norm kernels fell from 4.6 to 2.0 us, session 18).
    "fused+gemv+cdt+sqa+rows": (True, True, True, False, CDT, 4096),
    "fused+gemv+cdt+sqa+mlp+rows": (True, True, True, True, CDT, 4096),  # what the engine ships (with PDL if it wins)
}


def quantiles_ms(samples: list[float]) -> dict:
    p50, p99 = percentiles(samples, (50, 99))
    return {"p50": p50, "p99": p99}


def measure(runner: StaticGraphRunner, ids: torch.Tensor, pos: torch.Tensor, n: int) -> dict:
    calls, replays = [], []
    for _ in range(n // 10):
        runner(ids, pos)
    torch.cuda.synchronize()
    for _ in range(n):
        t0 = time.perf_counter()
        runner(ids, pos)
        torch.cuda.synchronize()
        calls.append((time.perf_counter() - t0) * 1e3)
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.graph.replay()
        end.record()
        end.synchronize()
        replays.append(start.elapsed_time(end))
    return {"call_ms": quantiles_ms(calls), "replay_ms": quantiles_ms(replays)}


# Inductor names its Triton kernels by kind; everything else is an extern kernel or a copy.
KERNEL_KINDS = (("triton_red", "reduction (GEMVs, norms)"), ("triton_per", "reduction (GEMVs, norms)"),
                ("triton_poi", "pointwise"), ("triton_tem", "matmul template"))


def kernel_kind(name: str) -> str:
    if name.startswith("Memcpy") or name.startswith("Memset"):
        return "copy"
    return next((kind for prefix, kind in KERNEL_KINDS if name.startswith(prefix)), "extern (attention, cuBLAS, other)")


def summarize_kernels(kernels: list[tuple[str, float]], replays: int, top: int = 8) -> dict:
    """Per replay: how many GPU kernels ran and for how long, by kind and by the costliest names.

    ``kernels`` holds (name, duration in us) for every kernel and copy the GPU ran during ``replays`` replays.
    """
    by_kind: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    for name, us in kernels:
        by_kind.setdefault(kernel_kind(name), []).append(us)
        by_name.setdefault(name, []).append(us)

    def row(durations: list[float]) -> dict:
        return {"per_replay": len(durations) / replays, "ms_per_replay": sum(durations) / replays / 1e3}

    names = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"replays": replays, "kernels_per_replay": len(kernels) / replays,
            "busy_ms_per_replay": sum(us for _, us in kernels) / replays / 1e3,
            "by_kind": {k: row(v) for k, v in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))},
            "top": [{"name": n[:120], **row(v)} for n, v in names]}


def kernel_profile(runner: StaticGraphRunner, replays: int = 20) -> dict:
    """Profile ``replays`` CUDA graph replays: the kernels inside, how many and how long (CUPTI via torch.profiler).

    Busy time below the replay's wall time is time the GPU spent between kernels.
    A profiler failure is returned as ``{"error": ...}``: the timings around it stand without it.
    """
    from torch.profiler import ProfilerActivity, profile

    runner.graph.replay()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(replays):
                runner.graph.replay()
            torch.cuda.synchronize()
        kernels = [(e.name, e.time_range.elapsed_us()) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA]
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    if not kernels:
        return {"error": "the profiler recorded no GPU kernels"}
    return summarize_kernels(kernels, replays)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-1b", help="a preset name or a local HF model directory")
    p.add_argument("--variants", default="fused+gemv+cdt,fused+gemv+sqa,fused+gemv+cdt+sqa", help=f"comma-separated, from {sorted(VARIANTS)}")
    p.add_argument("--iters", type=int, default=300, help="timed calls per variant (and as many timed replays)")
    p.add_argument("--out", type=Path, default=Path("bench/tmp/decode_variants.json"), help="where the JSON goes")
    a = p.parse_args()
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    device = torch.device("cuda")
    wrapper = models.LastTokenLM(models.load_model(a.model, torch.float16, device)).eval()
    ids, pos = torch.tensor([[1234]]), torch.tensor([[7]])
    with torch.no_grad():
        ref = wrapper(ids.to(device), pos.to(device)).float()
    results = {}
    for name in sorted(names, key=lambda n: VARIANTS[n][:4]):  # module changes are one-way: plain first
        fused, gemv, sqa, mlp_kernel, extra, *rows = VARIANTS[name]
        rows = rows[0] if rows else 0
        if fused:
            fusion.fuse_projections(wrapper)
        if gemv:
            fusion.use_gemv(wrapper)
        if sqa:
            fusion.use_single_query_attention(wrapper.model)
        if mlp_kernel:
            fusion.use_mlp_kernel(wrapper.model)
        torch._dynamo.reset()
        t0 = time.perf_counter()
        try:
            fn = torch.compile(wrapper, dynamic=False, fullgraph=True,
                               options={**STATIC_OPTIONS, **extra, **fusion.compile_options(), **fusion.rows_cache_key(rows)})
            with fusion.persistent_rows(rows), fusion.mlp_kernels(mlp_kernel):  # the compile runs at the runner's first call
                runner = StaticGraphRunner(fn, (1, 1), device)
        except Exception as e:  # one variant failing to compile must not lose the others' numbers
            results[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"{name:10s} failed: {results[name]['error'][:300]}", flush=True)
            continue
        row = {"compile_s": time.perf_counter() - t0, **measure(runner, ids, pos, a.iters)}
        row["max_abs_diff"] = (runner(ids, pos).float() - ref).abs().max().item()
        row["kernels"] = kernel_profile(runner)
        results[name] = row
        print(f"{name:10s} call p50 {row['call_ms']['p50']:.3f} ms, replay p50 {row['replay_ms']['p50']:.3f} ms, "
              f"diff {row['max_abs_diff']:.4f}, compiled in {row['compile_s']:.0f} s; "
              f"kernels {json.dumps(row['kernels'])[:1500]}", flush=True)
        del runner, fn
    summary = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "static_options": STATIC_OPTIONS, "variants": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
