"""GPU benchmark: single- vs multi-profile engine, on the engine alone and through Triton.

Both engines come from the same export (``make build`` writes model_repository/llm
and llm_single). Every comparison is measured side by side in one run, calls
interleaved so machine noise hits both engines alike. Writes
``bench/results/<date>-<gpu>.{md,json,png}``; the last stdout line is JSON.

Run (on a GPU, after ``make build DEVICE=cuda MODEL=gemma-3-1b``)::

    python -m bench.llm_bench --phase all

Reproducibility over fresh builds: after each ``make build FRESH=1 ...``, run
``--phase engine --build-label N``; the report shows each build's decode, their
spread, and takes the median over builds as the figure of record. The Triton
phase also times the first request of every regime after the server is ready,
and runs perf_analyzer (when found) beside the project's own client.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmprofiles.loadgen import Caller, percentiles, run_load
from llmprofiles.manifest import read_manifest
from llmprofiles.models import default_position_ids

REPO = Path("model_repository")
MODELS = {"single": "llm_single", "multi": "llm"}
STATE = Path("bench/tmp/state.json")
# fp16 logits vs HF eager: both round every op to fp16, in different orders and fusions,
# so they differ by a few ulps of the largest activations. tests/test_gpu.py asserts the same atol (plus rtol 0.02).
LOGIT_ATOL = 0.02


def stats_ms(samples: list[float]) -> dict:
    p50, p99 = percentiles(samples, (50, 99))
    return {"median_ms": p50, "p99_ms": p99, "mean_ms": float(np.mean(samples)) if samples else None, "n": len(samples)}


def regimes(prefill_seqs: list[int]) -> list[tuple[str, int]]:
    return [("decode", 1)] + [("prefill", s) for s in prefill_seqs]


def call_order(keys: list[str], it: int) -> list[str]:
    """Call order for iteration ``it``: every permutation in turn, so no engine always runs right after another."""
    orders = list(itertools.permutations(keys))
    return list(orders[it % len(orders)])


def inputs(seq: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, seq), generator=g)
    return ids, default_position_ids(ids).contiguous()


# --- engine alone ---------------------------------------------------------------

def load_measured(model: str, device: torch.device, seqs: list[int]):
    """Load one engine, run every regime once, and report its GPU memory (weights, graphs, workspaces)."""
    from llmprofiles.runtimes.load import load_engine

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    engine = load_engine(REPO / model / "1", device)
    load_s = time.perf_counter() - t0
    for seq in seqs:  # every regime compiled and its workspace allocated before timing
        time_call(engine, *inputs(seq, engine.vocab_size, 0), device)
    return engine, {"load_s": load_s, "resident_bytes": torch.cuda.memory_allocated(device) - base,
                    "peak_bytes": torch.cuda.max_memory_allocated(device) - base}


# About one request's round trip through Triton, outside the model (the no-op model's client p50 was 1.98 ms).
IDLE_BEFORE_CALL_S = 0.002


def time_call(engine, ids, pos, device) -> float:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    engine.run(engine.select({"input_ids": ids.shape, "position_ids": pos.shape}), ids, pos)
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def correctness(engine, eager, vocab: int, n: int, device) -> dict:
    """Top-1 agreement and max abs logit diff vs HF eager, on random inputs per regime."""
    out = {}
    for regime, seqs in (("decode", [1] * n), ("prefill", list(np.random.default_rng(1).integers(2, 513, n)))):
        agree, worst, t0 = 0, 0.0, time.perf_counter()
        for i, seq in enumerate(seqs):
            if i and i % 50 == 0:  # a 200-input run once outlived its time slot: show where the time goes
                print(f"  correctness {regime}: {i}/{len(seqs)} in {time.perf_counter() - t0:.1f} s", flush=True)
            ids, pos = inputs(int(seq), vocab, 10_000 + i)
            if regime == "decode":  # a decode step at a random position
                pos = torch.tensor([[int(np.random.default_rng(i).integers(0, 512))]])
            got = engine.run(engine.select({"input_ids": ids.shape, "position_ids": pos.shape}), ids, pos).float()
            with torch.no_grad():
                ref = eager(ids.to(device), pos.to(device)).float()
            agree += int(got.argmax(-1).item() == ref.argmax(-1).item())
            worst = max(worst, (got - ref).abs().max().item())
        out[regime] = {"top1_agreement": agree / len(seqs), "max_abs_diff": worst, "n": len(seqs)}
    return out


def phase_engine(args, on_decode=None) -> dict:
    from llmprofiles.runtimes.compiled import wrapper_from_artifacts

    device = torch.device("cuda:0")
    engines, memory = {}, {}
    measured = regimes([] if args.decode_only else args.prefill_seqs)
    for key in ("single", "multi"):
        engines[key], memory[key] = load_measured(MODELS[key], device, [seq for _, seq in regimes(args.prefill_seqs)])
        print(f"loaded {key}: {memory[key]}", flush=True)
    vocab = engines["multi"].vocab_size
    latency = {}
    for regime, seq in measured:
        ids, pos = inputs(seq, vocab, seq)
        samples = {"single": [], "multi": []}
        for _ in range(args.warmup):
            for key in samples:
                time_call(engines[key], ids, pos, device)
        for it in range(args.iters):
            for key in call_order(list(samples), it):  # interleaved: noise hits both alike
                samples[key].append(time_call(engines[key], ids, pos, device))
        latency[f"{regime}@{seq}"] = {k: stats_ms(v) for k, v in samples.items()}
        print(f"engine {regime} seq={seq}: " + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in latency[f'{regime}@{seq}'].items()), flush=True)
    loaded = {key: decode_at_load(engine) for key, engine in engines.items()}
    print(f"decode at load: {json.dumps(loaded)}", flush=True)
    if on_decode:  # the build's decode is kept even if a later step fails or the call runs out of time
        on_decode({"latency": latency, "memory": memory, "decode_at_load": loaded})
    if args.decode_only:
        return {"latency": latency, "memory": memory, "decode_only": True, "decode_at_load": loaded}
    manifest = read_manifest(REPO / "llm" / "1", verify=False)
    eager = wrapper_from_artifacts(REPO / "llm" / "1", manifest, device)  # HF eager, same weights
    correct = {k: correctness(engines[k], eager, vocab, args.correctness_n, device) for k in ("multi",)}
    print(f"correctness: {correct}", flush=True)
    sharing = weights_shared(engines["multi"])
    return {"latency": latency, "memory": memory, "correctness": correct, "weights_shared": sharing,
            "decode_at_load": loaded, "decode_split": decode_split(engines["multi"], vocab, args.iters)}


def decode_at_load(engine) -> dict:
    """The loaded engine's decode graph replay, and whether loading it reused the build's tuning.

    ``compile`` is the decode profile's inductor counters while it was compiled at load: a
    build whose kernels and launch configs were reused shows an FX graph cache hit and no
    autotune or coordinate-descent benchmark.
    """
    from llmprofiles.runtimes.compiled import StaticGraphRunner, replay_ms

    index = engine.select({"input_ids": (1, 1), "position_ids": (1, 1)})
    runner = engine.runners[index]
    counts = getattr(engine, "compile_counts", None)
    return {"replay_ms": replay_ms(runner) if isinstance(runner, StaticGraphRunner) and runner.graph else None,
            "compile": counts[index] if counts else None}


def build_record(engine: dict) -> dict:
    """One fresh build's decode, measured by the engine phase, with what identifies the build."""
    record = {"date": datetime.date.today().isoformat(),
              "decode": {k: engine["latency"]["decode@1"][k] for k in ("multi", "single")},
              "decode_at_load": engine.get("decode_at_load")}
    for key, model in MODELS.items():
        manifest = read_manifest(REPO / model / "1", verify=False)
        record[f"{key}_content_hash"] = manifest.get("content_hash")
        if manifest.get("decode_tuning"):
            record["decode_tuning"] = manifest["decode_tuning"]
    return record


def decode_split(engine, vocab: int, iters: int) -> dict | None:
    """The multi engine's decode: CUDA graph replay alone (GPU time) vs the runner call (plus host copies)."""
    from bench.decode_variants import kernel_profile, measure, quantiles_ms
    from llmprofiles.runtimes.compiled import StaticGraphRunner

    runner = engine.runners[engine.select({"input_ids": (1, 1), "position_ids": (1, 1)})]
    if not isinstance(runner, StaticGraphRunner) or runner.graph is None:
        return None
    ids, pos = inputs(1, vocab, 1)
    split = measure(runner, ids, pos, iters)
    # The engine's own call in a loop of its own (the per-call table interleaves it with llm_single's):
    # what the profile choice, the checks and the copies to the GPU add to the runner's call.
    calls = []
    for _ in range(iters):
        calls.append(time_call(engine, ids, pos, torch.device("cuda:0")))
    split["engine_call_ms"] = quantiles_ms(calls)
    # The same call with the GPU and this thread idle before it, as a server sees one client's requests: through
    # Triton the handler took 1.27 ms for a 0.92 ms engine call (session 19). Does idling alone cost that?
    calls = []
    for _ in range(iters // 2):
        time.sleep(IDLE_BEFORE_CALL_S)
        calls.append(time_call(engine, ids, pos, torch.device("cuda:0")))
    split["engine_call_after_idle_ms"] = quantiles_ms(calls)
    split["kernels"] = kernel_profile(runner)
    print(f"decode split: {json.dumps(split)}", flush=True)
    return split


def weights_shared(engine) -> dict:
    """Every profile runner of a compiled engine closes over the one module: count weight bytes once."""
    params = list(engine.wrapper.parameters())
    return {"profiles": len(engine.profiles), "weight_bytes": sum(p.numel() * p.element_size() for p in {id(p): p for p in params}.values())}


# --- through Triton ------------------------------------------------------------

def is_compile_worker(pid: int) -> bool:
    """An inductor compile worker (a pool the server's compiles start; it idles, then exits on its own)."""
    try:
        return b"_inductor" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def proc_tree_rss_bytes(pid: int, skip=is_compile_worker) -> int | None:
    """Resident memory of a process and all its descendants (tritonserver + backend stubs); None if it has exited.

    Descendants for which ``skip(pid)`` holds are left out, with their own descendants: by default
    inductor's compile workers, which once held 11 GiB at the start of a load run and left before its
    end (H200, 2026-11-30), so the tree's RSS "fell" by that much.
    """
    if not Path(f"/proc/{pid}").is_dir():
        return None
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p != pid and skip and skip(p):
            continue
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def visible_gpu() -> list[str]:
    """nvidia-smi's ``-i`` for the GPU this process and its servers use: nvidia-smi ignores
    CUDA_VISIBLE_DEVICES and reads GPU 0 by default (on a 2-GPU host, the other benchmark's GPU)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return ["-i", first] if first else []


def gpu_used_bytes() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", *visible_gpu(), "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0]) * 1024 * 1024
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def noop_repo(manifest: dict, kind: str) -> Path:
    root = Path("bench/tmp/noop_repo")
    model = root / "noop"
    (model / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy("bench/noop/model.py", model / "1" / "model.py")
    ltype = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}[manifest["dtype"]]
    (model / "config.pbtxt").write_text(f"""backend: "python"
max_batch_size: 0
input [ {{ name: "input_ids", data_type: TYPE_INT64, dims: [ -1, -1 ] }},
        {{ name: "position_ids", data_type: TYPE_INT64, dims: [ -1, -1 ], optional: true }} ]
output [ {{ name: "logits", data_type: {ltype}, dims: [ -1, -1 ] }},
         {{ name: "profile_index", data_type: TYPE_INT32, dims: [ 1 ] }} ]
instance_group [ {{ count: 1, kind: {kind} }} ]
parameters [ {{ key: "vocab", value: {{ string_value: "{manifest['vocab_size']}" }} }},
             {{ key: "dtype", value: {{ string_value: "{manifest['dtype']}" }} }} ]
""")
    return root


# Triton's cumulative per-model timers (us), in the order a request meets them.
TRITON_STAGES = ("request", "queue", "compute_input", "compute_infer", "compute_output")


def server_split(before: dict, after: dict, model: str) -> dict | None:
    """Mean server-side ms per request of ``model`` between two metric snapshots, by Triton stage.

    ``request`` is the whole time in the server; ``compute_infer`` is the Python
    backend's execute (stub round trip included). For the ``llm`` models,
    ``handler`` is the model's own latency metric: checks, engine and GPU sync.
    """
    from llmprofiles.serving.launcher import metric_sum

    def delta(name: str, **labels: str) -> float | None:
        a, b = metric_sum(after, name, model=model, **labels), metric_sum(before, name, model=model, **labels)
        return None if a is None else a - (b or 0.0)

    n = delta("nv_inference_request_success")
    if not n:
        return None
    split = {"requests": int(n)}
    for stage in TRITON_STAGES:
        us = delta(f"nv_inference_{stage}_duration_us")
        split[f"{stage}_ms"] = None if us is None else us / n / 1e3
    count = delta("llm_profile_latency_ms_count")
    split["handler_ms"] = delta("llm_profile_latency_ms_sum") / count if count else None
    return split


def llm_repo() -> Path:
    """A repository of the two measured models only (links), so a built ``generate`` model is not loaded too."""
    root = Path("bench/tmp/llm_repo")
    root.mkdir(parents=True, exist_ok=True)
    for model in MODELS.values():
        link = root / model
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((REPO / model).resolve(), target_is_directory=True)
    return root


def first_requests(caller, vocab: int, prefill_seqs: list[int]) -> dict:
    """The first request of each regime to each llm model after ready, before any warm-up: ms, or the error."""
    first = {}
    for regime, seq in regimes(prefill_seqs):
        ids, pos = (t.numpy() for t in inputs(seq, vocab, seq))  # the steady state's request
        first[f"{regime}@{seq}"] = cell = {}
        for key in ("multi", "single"):
            try:
                cell[key] = {"ms": caller(MODELS[key], ids, pos).latency_ms}
            except Exception as e:  # a refused or timed-out first request is a finding, not the end of the phase
                cell[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(f"first request {regime} seq={seq}: {cell}", flush=True)
    return first


# perf_analyzer runs: (regime, seq, concurrency), for each llm model.
PERF_RUNS = (("decode", 1, 1), ("decode", 1, 16), ("prefill", 128, 1))


def find_perf_analyzer(explicit: Path | None) -> str | None:
    if explicit:
        return str(explicit) if explicit.is_file() else None
    beside = Path(sys.executable).parent / "perf_analyzer"  # where pip puts the wheel's binary
    return str(beside) if beside.is_file() else shutil.which("perf_analyzer")


def perf_analyzer_command(binary: str, model: str, url: str, seq: int, concurrency: int, interval_ms: int,
                          csv_path: Path) -> list[str]:
    return [binary, "-m", model, "-i", "grpc", "-u", url, "--shape", f"input_ids:1,{seq}",
            "--shape", f"position_ids:1,{seq}", "--input-data", "zero", "--concurrency-range", str(concurrency),
            "--measurement-interval", str(interval_ms), "--max-trials", "6", "-f", str(csv_path),
            # Prefill through Triton varies more than perf_analyzer's default 10% between windows (on the H200
            # it gave up on llm prefill 128): take the windows as they come; p50 and p99 show the spread.
            "--stability-percentage", "999"]


def parse_perf_csv(text: str) -> dict:
    """p50/p99 latency (ms) and infer/s of a perf_analyzer ``-f`` CSV (latencies in us; one row per concurrency)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("perf_analyzer wrote no result row")
    row = rows[0]
    return {"concurrency": int(row["Concurrency"]), "infer_per_s": float(row["Inferences/Second"]),
            "p50_ms": float(row["p50 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3}


def run_perf_analyzer(args, url: str) -> dict:
    """perf_analyzer over gRPC for every PERF_RUNS case and llm model; a missing binary skips, a failure is a row."""
    binary = find_perf_analyzer(args.perf_analyzer)
    if binary is None:
        where = args.perf_analyzer or f"beside {sys.executable} or on PATH"
        return {"not_run": f"perf_analyzer not found ({where})"}
    work = Path("bench/tmp/perf_analyzer")
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for regime, seq, concurrency in PERF_RUNS:
        for key, model in MODELS.items():
            name = f"{model}-{regime}{seq}-c{concurrency}"
            command = perf_analyzer_command(binary, model, url, seq, concurrency, args.perf_interval_ms,
                                            work / f"{name}.csv")
            run = {"model": key, "regime": f"{regime}@{seq}", "concurrency": concurrency, "command": " ".join(command)}
            (work / f"{name}.csv").unlink(missing_ok=True)
            try:
                p = subprocess.run(command, capture_output=True, text=True, timeout=6 * args.perf_interval_ms / 1e3 + 60)
                (work / f"{name}.log").write_text(p.stdout + p.stderr)
                if p.returncode != 0:
                    raise RuntimeError(f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
                run.update(parse_perf_csv((work / f"{name}.csv").read_text()))
            except Exception as e:  # perf_analyzer is an outside check: its failure is reported, never fatal
                run["error"] = f"{type(e).__name__}: {e}"[:400]
            print(f"perf_analyzer {name}: {json.dumps({k: v for k, v in run.items() if k != 'command'})}", flush=True)
            runs.append(run)
    return {"binary": binary, "runs": runs}


def own_client_c16(url: str, seconds: float) -> dict:
    """The project's client (closed loop, 16 threads, decode only) on each llm model, as perf_analyzer's c16 runs."""
    out = {}
    for key, model in MODELS.items():
        try:
            load = run_load(url, "grpc", model, decode_fraction=1.0, concurrency=16, duration_s=seconds, requests=None)
            t = load["total"]
            out[key] = {"p50_ms": t["p50_ms"], "p99_ms": t["p99_ms"], "infer_per_s": t["throughput_rps"],
                        "errors": t["errors"]}
        except Exception as e:
            out[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def phase_triton(args) -> dict:
    from llmprofiles.serving.launcher import TritonServer

    manifest = read_manifest(REPO / "llm" / "1", verify=False)
    kind = "KIND_GPU" if manifest["device"] == "cuda" else "KIND_CPU"
    vocab = manifest["vocab_size"]
    with TritonServer([llm_repo(), noop_repo(manifest, kind)], 18600, 18601, 18602, work=".triton",
                      log_path="bench/tmp/server.log", ready_timeout_s=540) as server:
        print(f"tritonserver ready in {server.startup_s:.1f} s", flush=True)
        caller = Caller("grpc", server.grpc_url)
        noop_ids = np.zeros((1, 1), dtype=np.int64)
        caller("noop", noop_ids, noop_ids)  # opens the gRPC channel, so the first llm request pays no connect
        first = first_requests(caller, vocab, args.prefill_seqs)
        latency, split = {}, {}
        for regime, seq in regimes(args.prefill_seqs):
            ids, pos = (t.numpy() for t in inputs(seq, vocab, seq))
            models = {"noop": "noop", "single": MODELS["single"], "multi": MODELS["multi"]}
            samples = {k: [] for k in models}
            for _ in range(args.warmup):
                for m in models.values():
                    caller(m, ids, pos)
            before = server.metrics()
            for it in range(args.iters):
                for k in call_order(list(models), it):
                    samples[k].append(caller(models[k], ids, pos).latency_ms)
            after = server.metrics()
            latency[f"{regime}@{seq}"] = {k: stats_ms(v) for k, v in samples.items()}
            split[f"{regime}@{seq}"] = {k: server_split(before, after, m) for k, m in models.items()}
            print(f"triton {regime} seq={seq}: " + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in latency[f'{regime}@{seq}'].items()), flush=True)
        caller.close()
        perf = run_perf_analyzer(args, server.grpc_url)
        perf["own_client_c16"] = own_client_c16(server.grpc_url, args.c16_s)
        mem_start = {"host_rss_bytes": proc_tree_rss_bytes(server.pid), "gpu_used_bytes": gpu_used_bytes()}
        load = run_load(server.grpc_url, "grpc", MODELS["multi"], decode_fraction=0.9, prefill_seq=128,
                        concurrency=args.load_concurrency, duration_s=args.load_s, requests=None)
        mem_end = {"host_rss_bytes": proc_tree_rss_bytes(server.pid), "gpu_used_bytes": gpu_used_bytes()}
        print(f"load run: {json.dumps(load)[:400]}", flush=True)
        return {"startup_s": server.startup_s, "first_request": first, "latency": latency, "server_split": split,
                "perf_analyzer": perf, "load": load, "memory_start": mem_start, "memory_end": mem_end}


# --- report -----------------------------------------------------------------

def environment() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    driver = None
    try:
        lines = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True).stdout.split()
        driver = lines[0] if lines else None  # one line per GPU
    except OSError:
        pass
    import transformers

    return {"gpu": gpu, "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(),
            "manifest": {k: read_manifest(REPO / "llm" / "1", verify=False)[k] for k in ("model", "dtype", "runtime")}}


def speedup(single: float | None, multi: float | None) -> str:
    return f"{single / multi:.2f}x" if single and multi else "-"


def how_run(state: dict, phase: str, command: str) -> str:
    make = state.get("make", {}).get(phase)
    return f"`{make}`, which ran `{command}`" if make else f"`{command}`, after `make build DEVICE=cuda MODEL=gemma-3-1b`"


def report(state: dict) -> tuple[str, dict]:
    env, eng, tri = state["env"], state.get("engine"), state.get("triton")
    lines = [f"# Multi- vs single-profile engine on {env['gpu']}", "",
             f"- date {env['date']}; driver {env['driver']}; torch {env['torch']} (CUDA {env['cuda']}); "
             f"transformers {env['transformers']}; Python {env['python']}",
             f"- model {env['manifest']['model']}, {env['manifest']['dtype']}, runtime {env['manifest']['runtime']}, batch 1",
             "- commands, by phase (`make bench` builds both engines, or finds them up to date, first):",
             *(f"  - {phase}: {how_run(state, phase, cmd)}" for phase, cmd in state.get("commands", {}).items()), ""]
    if state.get("notes"):
        lines += ["## Notes on this run", "", *(f"- {n}" for n in state["notes"]), ""]
    if eng:
        rows = []
        for key, cell in eng["latency"].items():
            s, m = cell["single"], cell["multi"]
            rows.append([key.replace("@", " seq="), "engine", f"{s['median_ms']:.3f}", f"{s['p99_ms']:.3f}",
                         f"{m['median_ms']:.3f}", f"{m['p99_ms']:.3f}", speedup(s["median_ms"], m["median_ms"])])
        if tri:
            for key, cell in tri["latency"].items():
                s, m, n = cell["single"], cell["multi"], cell["noop"]
                rows.append([key.replace("@", " seq="), "triton gRPC", f"{s['median_ms']:.3f}", f"{s['p99_ms']:.3f}",
                             f"{m['median_ms']:.3f}", f"{m['p99_ms']:.3f}", speedup(s["median_ms"], m["median_ms"]),
                             f"{n['median_ms']:.3f}"])
        header = ["regime", "measured on", "single p50 ms", "single p99 ms", "multi p50 ms", "multi p99 ms",
                  "speedup (p50)", "no-op p50 ms"]
        rows = [r + [""] * (len(header) - len(r)) for r in rows]
        lines += ["## Per-call latency", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        split = eng.get("decode_split")
        if split:
            lines += ["", f"Multi-profile decode, split: CUDA graph replay alone p50 {split['replay_ms']['p50']:.3f} ms "
                      f"(GPU time); the graph runner's call p50 {split['call_ms']['p50']:.3f} ms; "
                      + (f"the engine's call alone in a loop p50 {split['engine_call_ms']['p50']:.3f} ms (profile "
                         f"choice, checks, copies to the GPU); the table above interleaves it with llm_single."
                         if split.get("engine_call_ms") else "the engine call above adds the profile checks.")
                      + (f" The same call after {IDLE_BEFORE_CALL_S * 1e3:.0f} ms of idling before each, as one "
                         f"client's requests arrive through Triton: p50 {split['engine_call_after_idle_ms']['p50']:.3f} ms."
                         if split.get("engine_call_after_idle_ms") else "")]
            lines += kernel_lines(split.get("kernels"))
        mem = eng["memory"]
        lines += ["", "## GPU memory of each engine (allocated by PyTorch, after warming every regime)", "",
                  "| engine | resident MiB | peak MiB |", "|---|---|---|"]
        lines += [f"| {k} | {v['resident_bytes'] / 2**20:.0f} | {v['peak_bytes'] / 2**20:.0f} |" for k, v in mem.items()]
        lines += ["", f"multi/single peak: {mem['multi']['peak_bytes'] / mem['single']['peak_bytes']:.3f}x; "
                  f"weights {eng['weights_shared']['weight_bytes'] / 2**20:.0f} MiB held once for "
                  f"{eng['weights_shared']['profiles']} profiles", ""]
        lines += ["## Correctness vs HF eager (same weights, same dtype)", "",
                  "| regime | inputs | top-1 agreement | max abs logit diff |", "|---|---|---|---|"]
        for regime, c in eng["correctness"]["multi"].items():
            lines.append(f"| {regime} | {c['n']} | {c['top1_agreement']:.1%} | {c['max_abs_diff']:.4f} |")
    lines += build_lines(state.get("builds"))
    if state.get("triton_error"):
        lines += ["", f"**The Triton phase failed:** `{state['triton_error']}`. Only the engine was measured."]
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in targets(state)]
    if tri:
        load = tri["load"]
        startup = f"{tri['startup_s']:.1f} s" if tri.get("startup_s") is not None else "not measured (see notes)"
        lines += ["", "## Through Triton", "", f"- server start-up (process start to ready): {startup}",
                  *first_request_lines(tri), *perf_analyzer_lines(tri), *split_lines(tri), "",
                  f"- load run: {load.get('concurrency')} clients, {load.get('duration_s')} s, mixed 90% decode / 10% prefill(128)",
                  "", "```", json.dumps(load, indent=1)[:3000], "```", "",
                  *(f"- memory at {when}: host RSS {memory_mib(tri[key]['host_rss_bytes'])}, GPU used (whole GPU) "
                    f"{memory_mib(tri[key]['gpu_used_bytes'])}" for when, key in (("start", "memory_start"), ("end", "memory_end")))]
    return "\n".join(lines) + "\n", state


FIRST_REQUEST_BOUND = 2.0  # the first request after ready may cost at most this many times the steady state


def first_request_rows(tri: dict) -> list[dict]:
    """Per regime and llm model: the first request after ready against the steady-state median of the same request."""
    rows = []
    for key, cell in (tri.get("first_request") or {}).items():
        for model in ("multi", "single"):
            first = cell.get(model, {})
            steady = tri["latency"].get(key, {}).get(model, {}).get("median_ms")
            ms = first.get("ms")
            ratio = ms / steady if ms is not None and steady else None
            rows.append({"regime": key, "model": model, "first_ms": ms, "steady_ms": steady, "ratio": ratio,
                         "error": first.get("error"),
                         "verdict": "met" if ratio is not None and ratio <= FIRST_REQUEST_BOUND else
                         ("not measured" if ms is not None and not steady else "MISSED")})
    return rows


def first_request_lines(tri: dict) -> list[str]:
    rows = first_request_rows(tri)
    if not rows:
        return []
    lines = ["", f"First request after ready: each regime's first request to each model, sent right after the "
             f"server reported ready and before any warm-up, beside the steady state of the same request "
             f"(median after warm-up). Target: at most {FIRST_REQUEST_BOUND:g}x.", "",
             "| regime | model | first request ms | steady p50 ms | first / steady | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        first = f"{r['first_ms']:.3f}" if r["first_ms"] is not None else f"failed: {r['error']}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['regime'].replace('@', ' seq=')} | {r['model']} | {first} | {fmt(r['steady_ms'])} | "
                     f"{ratio} | {r['verdict']} |")
    return lines


def fmt(ms: float | None, digits: int = 3) -> str:
    return "-" if ms is None else f"{ms:.{digits}f}"


def perf_analyzer_lines(tri: dict) -> list[str]:
    """perf_analyzer (an outside client) beside the project's own client, per model, regime and concurrency."""
    perf = tri.get("perf_analyzer")
    if not perf:
        return []
    header = ["model", "regime", "concurrency", "perf_analyzer p50 ms", "p99 ms", "infer/s",
              "own client p50 ms", "p99 ms", "infer/s"]
    lines = ["", "perf_analyzer over gRPC (`--input-data zero`), beside the project's own client: at concurrency 1 "
             "the steady-state table above (infer/s = 1000 / mean ms), at 16 a 16-thread closed loop of decode.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if "not_run" in perf:
        lines.append(f"| all | - | - | not run: {perf['not_run']} | | | | | |")
    own16 = perf.get("own_client_c16", {})
    for run in perf.get("runs", []):
        model, key, c = run["model"], run["regime"], run["concurrency"]
        if c == 1:
            own = tri["latency"].get(key, {}).get(model, {})
            mean = own.get("mean_ms")
            own = {"p50_ms": own.get("median_ms"), "p99_ms": own.get("p99_ms"), "infer_per_s": 1e3 / mean if mean else None}
        else:
            own = own16.get(model, {})
        pa = ([fmt(run.get("p50_ms")), fmt(run.get("p99_ms")), fmt(run.get("infer_per_s"), 1)] if "error" not in run
              else [f"failed: {run['error'][:120]}", "", ""])
        lines.append("| " + " | ".join([MODELS[model], key.replace("@", " seq="), str(c), *pa, fmt(own.get("p50_ms")),
                                        fmt(own.get("p99_ms")), fmt(own.get("infer_per_s"), 1)]) + " |")
    return lines


def build_stats(builds: dict | None) -> dict | None:
    """Decode over fresh builds: per engine the builds' medians, their spread ((max-min)/median) and the median.

    A build is one content hash: an engine measured again beside another engine's fresh build (``llm_single``
    rebuilt, ``llm`` kept) counts once, at the median of its measurements, so ``n`` per engine is the number of
    distinct builds. The ratio is the median of each record's side-by-side ratio (both measured in one process).
    """
    if not builds:
        return None
    out = {}
    for key in ("multi", "single"):
        by_build: dict[str, list[float]] = {}
        for label, b in builds.items():
            by_build.setdefault(b.get(f"{key}_content_hash") or f"record {label}", []).append(
                b["decode"][key]["median_ms"])
        values = [float(np.median(v)) for v in by_build.values()]
        med = float(np.median(values))
        out[key] = {"values": values, "median_ms": med, "spread": (max(values) - min(values)) / med, "n": len(values)}
    out["ratio"] = float(np.median([b["decode"]["single"]["median_ms"] / b["decode"]["multi"]["median_ms"]
                                    for b in builds.values()]))
    out["n"] = len(builds)
    return out


def option_label(options: dict | None) -> str:
    """`` (enable_pdl)`` for an attempt compiled with options over the static defaults; empty for none."""
    names = [k.rsplit(".", 1)[-1] for k, v in (options or {}).items() if v]
    return f" ({'+'.join(names)})" if names else ""


def build_lines(builds: dict | None) -> list[str]:
    st = build_stats(builds)
    if not st:
        return []
    lines = ["", "## Decode over fresh builds", "",
             "Each build from scratch (`make build FRESH=1`: empty inductor cache, no build outputs), then "
             "`--phase engine --build-label N`. The figure of record is the median over builds.", "",
             "| build | date | multi decode p50 ms | single decode p50 ms | multi vs single | build-time tuning: replay ms per compile (kept) |",
             "|---|---|---|---|---|---|"]
    for label, b in builds.items():
        m, s = b["decode"]["multi"]["median_ms"], b["decode"]["single"]["median_ms"]
        tuning = []
        for name, t in (b.get("decode_tuning") or {}).items():
            times = ", ".join((f"{a['ms']:.3f}" if "ms" in a else "failed") + option_label(a.get("options"))
                              for a in t["attempts"])
            final = f"; built engine {t['final_ms']:.3f}" if t.get("final_ms") is not None else ""
            configs = t.get("final_configs")
            if configs:
                final += f"; launch configs kept {configs['same']}/{configs['kept']}"
            benches = (t.get("final_compile") or {}).get("coordesc_tuning_bench")
            if benches is not None:
                final += f"; {benches} coordinate-descent benchmarks in its compile"
            tuning.append(f"{name}: {times} (kept {t['winner'] + 1}{final})")
        served = (b.get("decode_at_load") or {}).get("multi") or {}
        if served.get("replay_ms") is not None:
            counts = served.get("compile") or {}
            retuned = counts.get("coordesc_tuning_bench", 0) + counts.get("select_algorithm_autotune", 0)
            tuning.append(f"served engine replay {served['replay_ms']:.3f}, "
                          + (f"re-tuned at load ({retuned} benchmarks)" if retuned
                             else "compiled afresh at load" if counts.get("fxgraph_cache_miss") else "reused at load"))
        lines.append(f"| {label} | {b.get('date', '-')} | {m:.3f} | {s:.3f} | {speedup(s, m)} | "
                     f"{'; '.join(tuning) or 'not recorded'} |")
    over = [f"{key} {st[key]['median_ms']:.3f} ms median over {st[key]['n']} distinct build(s), spread "
            + (f"{st[key]['spread']:.1%}" if st[key]["n"] > 1 else "not measured") for key in ("multi", "single")]
    lines += ["", f"Over {st['n']} run(s): {'; '.join(over)}; multi vs single {st['ratio']:.2f}x (median of the "
              "runs' side-by-side ratios)."]
    same = [label for label, b in builds.items() if b.get("multi_content_hash") and
            [x.get("multi_content_hash") for x in builds.values()].count(b["multi_content_hash"]) > 1]
    if same:
        lines.append(f"**Runs {', '.join(same)} measured the same multi build (content hash): not fresh builds of it; "
                     "it counts once in the multi figures.**")
    return lines


def split_lines(tri: dict) -> list[str]:
    """Where a call through Triton spends its time: the client's p50 beside the server's own timers (means)."""
    split = tri.get("server_split")
    if not split:
        return []
    header = ["regime", "model", "client p50", "in server", "queue", "input", "execute", "output", "model handler"]
    lines = ["", "Time per call through Triton, ms: the client's p50, then the server's means per request from "
             "its metrics (in server = receipt to response; execute = the Python backend's execute, stub round "
             "trip included; model handler = the llm model's checks, engine and GPU sync).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, models in split.items():
        for model, s in models.items():
            if not s:
                continue
            cells = [s.get(f"{stage}_ms") for stage in TRITON_STAGES] + [s.get("handler_ms")]
            lines.append("| " + " | ".join([key.replace("@", " seq="), model,
                                            f"{tri['latency'][key][model]['median_ms']:.3f}",
                                            *("-" if c is None else f"{c:.3f}" for c in cells)]) + " |")
    return lines


def kernel_lines(k: dict | None) -> list[str]:
    """The decode graph's kernel profile as a table: what the GPU runs in one decode step."""
    if not k:
        return []
    if "error" in k:
        return ["", f"The decode replay's kernel profile failed: {k['error']}"]
    lines = ["", f"Inside one decode replay (profiled over {k['replays']} replays): {k['kernels_per_replay']:.0f} GPU "
             f"kernels, busy {k['busy_ms_per_replay']:.3f} ms.", "",
             "| kernels | per replay | ms per replay |", "|---|---|---|"]
    lines += [f"| {kind} | {r['per_replay']:.0f} | {r['ms_per_replay']:.3f} |" for kind, r in k["by_kind"].items()]
    lines += [f"| top: `{r['name'][:60]}` | {r['per_replay']:.0f} | {r['ms_per_replay']:.3f} |" for r in k["top"][:5]]
    return lines


def targets(state: dict) -> list[list[str]]:
    """The issue's targets against what this run measured: [target, measured, verdict]."""
    eng, tri = state.get("engine"), state.get("triton")
    rows = []

    def row(name: str, measured: str, ok: bool) -> None:
        rows.append([name, measured, "met" if ok else "MISSED"])

    st = build_stats(state.get("builds"))
    if st:  # the figure of record: the median over fresh builds, not one build
        n = st["multi"]["n"]
        row("decode, multi vs single (engine, median) >= 3x",
            f"{st['ratio']:.2f}x (median of {st['n']} side-by-side runs, {st['single']['n']} fresh single build"
            f"{'s' if st['single']['n'] > 1 else ''})", st["ratio"] >= 3)
        row("decode on the engine alone <= 1.0 ms (median)",
            f"{st['multi']['median_ms']:.3f} ms (median of {n} fresh build{'s' if n > 1 else ''})",
            st["multi"]["median_ms"] <= 1.0)
        engines = ("multi", "single")
        measured = "; ".join(
            f"{key} {st[key]['spread']:.1%} over {st[key]['n']} builds "
            f"({', '.join(f'{v:.3f}' for v in st[key]['values'])} ms)" if st[key]["n"] > 1 else f"{key}: one build"
            for key in engines)
        spreads = [st[key]["spread"] for key in engines if st[key]["n"] > 1]
        one_build = [key for key in engines if st[key]["n"] < 2]
        if any(x > 0.10 for x in spreads) or not one_build:
            row("decode over fresh builds: spread (max-min)/median <= 10%", measured, all(x <= 0.10 for x in spreads))
        else:  # a spread within 10% for one engine says nothing of the other's
            rows.append(["decode over fresh builds: spread (max-min)/median <= 10%", measured,
                         f"not measured (one {' and one '.join(one_build)} build)"])
    if eng:
        lat = eng["latency"]
        d = lat["decode@1"]
        if not st:
            row("decode, multi vs single (engine, median) >= 3x", speedup(d["single"]["median_ms"], d["multi"]["median_ms"]),
                d["single"]["median_ms"] / d["multi"]["median_ms"] >= 3)
        for key, cell in lat.items():
            if key.startswith("prefill"):
                r = cell["single"]["median_ms"] / cell["multi"]["median_ms"]
                row(f"{key.replace('@', ' seq=')}, multi vs single >= 0.98x", f"{r:.3f}x", r >= 0.98)
        if not st:
            row("decode on the engine alone <= 1.0 ms (median)", f"{d['multi']['median_ms']:.3f} ms",
                d["multi"]["median_ms"] <= 1.0)
        mem = eng["memory"]
        r = mem["multi"]["peak_bytes"] / mem["single"]["peak_bytes"]
        row("GPU memory multi <= 1.1x single (peak)", f"{r:.3f}x", r <= 1.1)
        for regime, c in eng["correctness"]["multi"].items():
            row(f"{regime}: top-1 agreement with HF eager >= 99% over 200 inputs",
                f"{c['top1_agreement']:.1%} over {c['n']}", c["top1_agreement"] >= 0.99 and c["n"] >= 200)
            row(f"{regime}: max abs logit diff vs HF eager <= {LOGIT_ATOL} (fp16)", f"{c['max_abs_diff']:.4f}",
                c["max_abs_diff"] <= LOGIT_ATOL)
        if tri:
            t = tri["latency"]["decode@1"]
            bound = d["multi"]["median_ms"] + t["noop"]["median_ms"] + 0.2
            for key, cell in tri["latency"].items():
                if key.startswith("prefill"):
                    r = cell["single"]["median_ms"] / cell["multi"]["median_ms"]
                    row(f"{key.replace('@', ' seq=')} through Triton, multi vs single >= 0.98x", f"{r:.3f}x", r >= 0.98)
            row("decode through Triton p50 <= engine + no-op round trip + 0.2 ms",
                f"{t['multi']['median_ms']:.3f} ms (bound {bound:.3f})", t["multi"]["median_ms"] <= bound)
    if tri:
        first = first_request_rows(tri)
        if first:
            worst = max(first, key=lambda r: float("inf") if r["ratio"] is None else r["ratio"])
            measured = (f"worst {worst['regime'].replace('@', ' seq=')} on {worst['model']}: "
                        + (f"{worst['ratio']:.2f}x ({worst['first_ms']:.1f} vs {worst['steady_ms']:.1f} ms)"
                           if worst["ratio"] is not None else "no ratio (a request failed)"))
            row(f"first request after ready <= {FIRST_REQUEST_BOUND:g}x steady state (every regime, both models)",
                measured, all(r["verdict"] == "met" for r in first))
        total = tri["load"]["total"]
        row("load run: zero errors, zero profile mismatches", f"{total['errors']} errors, {total['mismatches']} mismatches",
            total["errors"] == 0 and total["mismatches"] == 0)
        drifts = {what: drift(tri, key) for what, key in (("host RSS", "host_rss_bytes"), ("GPU", "gpu_used_bytes"))}
        measured = ", ".join(f"{what} {d / 2**20:+.0f} MiB" if d is not None else f"{what} not measured"
                             for what, d in drifts.items())
        if None in drifts.values():
            rows.append(["load run: memory flat", measured, "not measured"])
        else:
            row("load run: memory flat", measured + " over the run", all(abs(d) < 64 * 2**20 for d in drifts.values()))
    return rows


def memory_mib(value: int | None) -> str:
    return f"{value / 2**20:.0f} MiB" if value else "not measured"


def drift(tri: dict, key: str) -> int | None:
    """End minus start of one memory reading; None when either was not measured (0 means the probe failed)."""
    start, end = tri["memory_start"].get(key), tri["memory_end"].get(key)
    return end - start if start and end else None


def plot(state: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (where, data) in zip(axes, (("engine alone", state.get("engine")), ("through Triton (gRPC)", state.get("triton")))):
        if not data:
            ax.set_visible(False)
            continue
        keys = list(data["latency"])
        x = np.arange(len(keys))
        for j, k in enumerate(("single", "multi")):
            ax.bar(x + (j - 0.5) * 0.4, [data["latency"][r][k]["median_ms"] for r in keys], 0.4, label=f"{k}-profile")
        ax.set_xticks(x, [r.replace("@", "\nseq=") for r in keys])
        ax.set_ylabel("median ms per call")
        ax.set_yscale("log")
        ax.set_title(where)
        ax.legend()
    fig.suptitle(f"{state['env']['gpu']}: {state['env']['manifest']['model']} {state['env']['manifest']['dtype']}, batch 1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def record_command(state: dict, a: argparse.Namespace, command: str, via_make: str | None) -> None:
    """Keep the phase's command line (and the `make bench` that ran it) for the report's header.

    A build's decode-only run gets its own entry: it must not replace the command of the engine phase whose
    figures the report shows.
    """
    key = f"engine, build {a.build_label} decode only" if a.decode_only else a.phase
    state.setdefault("commands", {})[key] = command
    if not isinstance(state.get("make"), dict):  # saved by an older bench: one command for all phases
        state["make"] = {}
    state["make"][key] = via_make


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Benchmark single- vs multi-profile engines on the GPU.")
    p.add_argument("--phase", choices=("engine", "triton", "report", "all"), default="all",
                   help="engine alone, through Triton, or write the report from saved results")
    p.add_argument("--prefill-seqs", type=lambda s: [int(x) for x in s.split(",")], default=[128, 256, 512],
                   help="comma-separated prefill lengths")
    p.add_argument("--iters", type=int, default=200, help="timed calls per engine and regime")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per engine and regime")
    p.add_argument("--correctness-n", type=int, default=200, help="random inputs per regime for the eager comparison")
    p.add_argument("--load-s", type=float, default=60.0, help="duration of the mixed load run")
    p.add_argument("--load-concurrency", type=int, default=16, help="concurrent clients in the load run")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="where the results are written")
    p.add_argument("--note", action="append", default=[], help="a remark about this run, kept in the report (repeatable)")
    p.add_argument("--build-label", help="engine phase: also record its decode as the fresh build LABEL (e.g. 1, 2), "
                                         "for the spread over fresh builds; run once after each `make build FRESH=1`")
    p.add_argument("--decode-only", action="store_true",
                   help="engine phase with --build-label: measure decode only and keep the saved full engine results")
    p.add_argument("--perf-analyzer", type=Path, help="perf_analyzer binary (default: beside python, then PATH)")
    p.add_argument("--perf-interval-ms", type=int, default=5000, help="perf_analyzer --measurement-interval")
    p.add_argument("--c16-s", type=float, default=10.0,
                   help="seconds of the project's own decode client at concurrency 16, beside perf_analyzer's")
    a = p.parse_args(argv)
    if a.decode_only and not a.build_label:
        p.error("--decode-only records a build's decode: give --build-label too")
    if a.phase in ("engine", "all") and not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA GPU (CI has none)")
    STATE.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(STATE.read_text()) if STATE.is_file() and a.phase != "all" else {}
    command = "python -m bench.llm_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.phase != "report":  # the report phase rewrites saved results, wherever it runs
        state["env"] = environment()
        record_command(state, a, command, os.environ.get("BENCH_VIA_MAKE"))  # set by `make bench`
    state["notes"] = state.get("notes", []) + a.note
    STATE.write_text(json.dumps(state))  # notes stay with the run, whichever phase added them
    if a.phase in ("engine", "all"):
        def save_build(engine: dict) -> None:
            state.setdefault("builds", {})[a.build_label] = build_record(engine)
            STATE.write_text(json.dumps(state))

        engine = phase_engine(a, save_build if a.build_label else None)
        if not a.decode_only:
            state["engine"] = engine
        if a.build_label:
            state.setdefault("builds", {})[a.build_label] = build_record(engine)
        STATE.write_text(json.dumps(state))
    triton_error = None
    if a.phase in ("triton", "all"):
        state.pop("triton_error", None)
        try:
            state["triton"] = phase_triton(a)
        except Exception as e:  # keep what the engine phase measured: report it, name the failure
            triton_error = state["triton_error"] = f"{type(e).__name__}: {e}"
            state.pop("triton", None)
        STATE.write_text(json.dumps(state))
    md, data = report(state)
    stem = a.out_dir / f"{state['env']['date']}-{state['env']['gpu'].replace(' ', '-').lower()}"
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    try:
        plot(state, stem.with_suffix(".png"))
    except ImportError:
        print("matplotlib missing: no plot", flush=True)
    print(md)
    print(json.dumps({"results": str(stem) + ".md", "engine": bool(state.get("engine")), "triton": bool(state.get("triton"))}))
    if triton_error:
        raise SystemExit(f"the Triton phase failed ({triton_error}); server log: bench/tmp/server.log")


if __name__ == "__main__":
    main()
