"""Benchmark of record for the ``generate`` model: the engine alone, through Triton, and HF ``generate`` beside it.

Phases (each fits one 10-minute GPU call; state is saved between them):

- ``engine``: the engine from ``load_generation_engine`` in-process: load and
  warm-up, decode step per batch bucket (batch full, ~192 positions of context),
  prefill per length bucket, GPU memory (weights, KV pool, the rest), the host
  gap between decode steps of the real Scheduler at full batch, and greedy tokens
  against HF ``generate`` on the same weights;
- ``triton``: tritonserver over a repository holding only ``generate``: start-up,
  the first request after ready against the steady state, ``client/generate.py``
  (gRPC streaming) at each concurrency, and perf_analyzer as an outside client at
  the same concurrencies (TTFT/ITL from its profile export);
- ``load``: a fresh server under concurrency 64 for ``--load-seconds`` with ~10%
  of requests cancelled mid-stream: errors, memory drift, slots free at the end;
- ``anchor``: HF ``generate`` with ``cache_implementation="static"`` in-process,
  time per decoded token from two generation lengths;
- ``stream``: an A/B of how responses are sent: ``stream_interval`` (tokens per
  streamed response after the first), ``send_threads`` (the response pump) and
  ``send_budget_ms`` (the scheduler's sending time per step).
  A fresh server per variant, over a copy of the build's ``config.pbtxt`` with
  only those values changed, driven by ``client/generate.py`` at
  ``--stream-concurrency``. The defaults are the ``triton`` phase's row at that
  concurrency;
- ``report``: the .md/.json/.png from the saved state.

Writes ``<out-dir>/<date>-<gpu>-generate.{md,json,png}``; the last stdout line is JSON.

Run on the H200 (``make bench-generate`` builds first), one phase per call::

    make bench-generate PY=python3 BENCH_ARGS="--phase engine"
    make bench-generate PY=python3 BENCH_ARGS="--phase triton --server-pythonpath /path/to/numpy126"

On CPU, end to end with small counts::

    python -m bench.generate_bench --model tiny --device cpu --quick --out-dir bench/tmp
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from llmprofiles.loadgen import latency_summary
from llmprofiles.manifest import read_manifest

PHASES = ("engine", "triton", "load", "anchor", "stream")
PROMPT_LEN = 128
OUTPUT_TOKENS = 128
MEMORY_HEADROOM = 0.15  # GPU memory target: weights + KV pool + at most 15%
FLAT_BYTES = 64 << 20  # a load run's memory counts as flat within this drift
SEED = 0
WORK = Path("bench/tmp/generate")  # server log, perf_analyzer inputs, exports and logs (git-ignored)

# Full-run settings, and what --quick changes (a flag given explicitly wins over both).
FULL = dict(decode_iters=200, decode_warmup=20, prefill_iters=50, gap_rounds=3, correctness_n=100, hf_batch=25,
            concurrency=[1, 8, 32, 64], sweep_seconds=25.0, sweep_requests=4, steady_repeats=5,
            perf_interval_ms=8000, load_seconds=300.0, load_concurrency=64, anchor_batches=[1, 16, 64],
            anchor_lengths=[72, 8], anchor_reps=3, stream_intervals=[4, 8], stream_concurrency=64)
QUICK = dict(decode_iters=20, decode_warmup=3, prefill_iters=10, gap_rounds=1, correctness_n=8, hf_batch=4,
             concurrency=[1, 2], sweep_seconds=None, sweep_requests=2, steady_repeats=3,
             perf_interval_ms=2000, load_seconds=10.0, load_concurrency=4, anchor_batches=[1, 2],
             anchor_lengths=[24, 8], anchor_reps=2, stream_intervals=[2], stream_concurrency=2)


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 1,8,32,64") from None


def ms_stats(samples: list[float]) -> dict:
    return latency_summary(samples)


# --- environment ---------------------------------------------------------------

def nvidia_smi(query: str) -> list[str] | None:
    """One ``nvidia-smi --query-gpu`` line (first GPU) split by comma; None without nvidia-smi."""
    try:
        from bench.llm_bench import visible_gpu

        out = subprocess.run(["nvidia-smi", *visible_gpu(), f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return [x.strip() for x in out.splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def gpu_name(device: str) -> str:
    """The GPU's name without initialising CUDA here (the server phases keep this process off the GPU)."""
    if device == "cpu":
        return "cpu"
    smi = nvidia_smi("name")
    if smi:
        return smi[0]
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"  # a report written off the GPU


def slug(name: str) -> str:
    return name.replace(" ", "-").lower()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(a) -> dict:
    import transformers

    manifest = read_manifest(a.repo / "generate" / "1", verify=False)
    smi = nvidia_smi("driver_version") if a.device == "cuda" else None
    return {"gpu": gpu_name(a.device), "driver": smi[0] if smi else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "tritonserver_wheel": package_version("nvidia-pytriton"),
            "perf_analyzer_wheel": package_version("perf-analyzer"), "date": datetime.date.today().isoformat(),
            "manifest": {k: manifest.get(k) for k in ("model", "dtype", "device", "runtime", "generation",
                                                      "decode_attention", "decode_pdl", "fresh_prefill",
                                                      "decode_b1_tuning")}}


def check_build(a) -> dict:
    """The built generate model's manifest, refused when it is not the model and device asked for."""
    version_dir = a.repo / "generate" / "1"
    build = (f"python build/build_generate.py --model {a.model} --device {a.device} "
             f"--out {a.repo / 'generate'}")
    if not (version_dir / "manifest.json").is_file():
        raise SystemExit(f"no generate model built in {version_dir}; run `{build}`")
    m = read_manifest(version_dir, verify=False)
    if m.get("model") != a.model or m.get("device") != a.device:
        raise SystemExit(f"{version_dir} holds model {m.get('model')!r} built for {m.get('device')!r}; "
                         f"this run asks for {a.model!r} on {a.device!r}: run `{build}`")
    return m


# --- engine phase ----------------------------------------------------------------

def sync_fn(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def fill_slots(engine, slots: int, context: int, rng: np.random.Generator) -> None:
    """Prefill ``context`` random tokens into slots ``0..slots-1``, so decode reads a realistic context."""
    chunk = engine.spec.max_chunk
    for slot in range(slots):
        ids = rng.integers(4, engine.vocab_size, context).tolist()
        for start in range(0, context, chunk):
            engine.prefill(slot, ids[start:start + chunk], start)


def replay_gpu_ms(engine, index: int, needed: int, iters: int) -> dict | None:
    """GPU time of the captured graph alone (CUDA events around one replay), inputs as last filled."""
    graph = engine.graphs.get(engine.graph_key(index, needed)) if engine.cuda_graphs else None
    if graph is None:
        return None
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph[0].replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return ms_stats(samples)


def time_decode(engine, batch: int, position: int, iters: int, warmup: int, sync) -> dict:
    """One decode step of ``batch`` sequences (the bucket full) at ``position``: the engine call, synchronised."""
    slots, tokens, positions = list(range(batch)), [5] * batch, [position] * batch
    index = engine.select(batch, 1)
    for _ in range(warmup):
        engine.decode(slots, tokens, positions)
        sync()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        engine.decode(slots, tokens, positions)
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"batch": batch, "profile": engine.profiles.names[index], "context": position,
            "attention_length": engine.graph_key(index, position + 1)[1],
            "attention": "kernel" if engine.forward.decode_kernel else "matmuls",
            "whole_step": bool(engine.forward.decode_kernel and engine.forward.whole_decode), "call_ms": ms_stats(samples),
            "replay_ms": replay_gpu_ms(engine, index, position + 1, iters)}


def time_prefill(engine, length: int, iters: int, warmup: int, sync, rng: np.random.Generator, batch: int = 1) -> dict:
    """A prefill step of ``batch`` whole prompts of ``length`` tokens from position 0 (slots 0..batch-1): the engine
    call, synchronised, and its graph's replay."""
    prompts = [rng.integers(4, engine.vocab_size, length).tolist() for _ in range(batch)]
    slots = list(range(batch))
    index = engine.select(batch, length)
    for _ in range(warmup):
        engine.prefill_many(slots, prompts)
        sync()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        engine.prefill_many(slots, prompts)
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    fresh = engine.fresh_chunk(index, [0])  # a first chunk that attends only to itself: its own graph
    return {"batch": batch, "length": length, "profile": engine.profiles.names[index], "call_ms": ms_stats(samples),
            "fresh": fresh, "replay_ms": replay_gpu_ms(engine, index, 0 if fresh else length, iters)}


# The decode forms compare_attention times, as the report names them.
DECODE_FORMS = {"matmuls": "batched matmuls, by layer", "kernel_layers": "kernel, by layer",
                "kernel": "attention kernel", "whole": "kernel, compiled whole (served)"}


def compare_attention(engine, buckets: list[int], position: int, iters: int, warmup: int, sync) -> dict:
    """Decode in each form side by side, in one process: ``{form: {batch: time_decode}}`` (forms: DECODE_FORMS).

    The batched matmuls and, where the served step is compiled whole, the kernel layer by layer: their layer
    halves compile for decode shapes first and their graphs are captured here. The served form's graphs are
    put back after, and it is timed again last, so every form runs in the same window.
    """
    f = engine.forward
    kept, whole, out = engine.graphs, f.whole_decode, {}
    try:
        engine.graphs, f.decode_kernel = {}, False
        out["matmuls"] = {str(b): time_decode(engine, b, position, iters, warmup, sync) for b in buckets}
        if whole:
            engine.graphs, f.decode_kernel, f.whole_decode = {}, True, False
            out["kernel_layers"] = {str(b): time_decode(engine, b, position, iters, warmup, sync) for b in buckets}
    finally:
        engine.graphs, f.decode_kernel, f.whole_decode = kept, True, whole
    out["whole" if whole else "kernel"] = {str(b): time_decode(engine, b, position, iters, warmup, sync)
                                           for b in buckets}
    return out


def memory_now(device: torch.device) -> dict | None:
    """PyTorch's allocated and reserved bytes on ``device`` now (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    stats = torch.cuda.memory_stats(device)
    # inactive split: reserved blocks cut up by earlier allocations and free now (the allocator's fragmentation)
    return {"allocated_bytes": stats["allocated_bytes.all.current"], "reserved_bytes": stats["reserved_bytes.all.current"],
            "inactive_split_bytes": stats["inactive_split_bytes.all.current"]}


def weight_bytes(engine) -> int:
    """Bytes of the engine's weights, each storage once (lm_head may be the embedding)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in engine.forward.w.values()}
    return sum(storages.values())


def step_intervals_ms(events: list[tuple[float, int, int]], index: int, batch: int) -> list[float]:
    """Wall time between consecutive engine steps that are both ``index`` with ``batch`` rows (no prefill between).

    >>> step_intervals_ms([(0.0, 3, 4), (0.25, 3, 4), (0.375, 5, 1), (0.5, 3, 4), (0.875, 3, 4)], 3, 4)
    [250.0, 375.0]
    """
    return [(b[0] - a[0]) * 1e3 for a, b in zip(events, events[1:])
            if a[1] == b[1] == index and a[2] == b[2] == batch]


def host_gap(engine, tokenizer, decode: dict, rounds: int, rng: np.random.Generator, batch: int | None = None) -> dict:
    """The real Scheduler at ``batch`` streams (default: full batch; no-op emit): wall per decode step against
    the engine's step alone.

    A decode step's wall time in the loop spans sampling (which waits for the GPU),
    detokenizing, emitting, scheduling and the next launch; minus the GPU time of
    the step's graph it is the time the GPU sits idle per step.
    """
    from llmprofiles.generation.scheduler import GenerateRequest, Observer, Scheduler

    class StepClock(Observer):
        def __init__(self):
            self.events: list[tuple[float, int, int]] = []
            self.spent: dict[str, float] = {}  # the scheduler thread's seconds by part, as the server counts them

        def step(self, profile_index: int, tokens: int) -> None:
            self.events.append((time.perf_counter(), profile_index, tokens))

        def scheduler_time(self, seconds: dict[str, float], responses: int) -> None:
            for part, t in seconds.items():
                self.spent[part] = self.spent.get(part, 0.0) + t

    batch = batch or engine.spec.max_batch
    index = engine.select(batch, 1)
    clock = StepClock()
    sched = Scheduler(engine, tokenizer, lambda out: None, max_queue=batch, observer=clock)
    intervals, wall, tokens = [], 0.0, 0
    for _ in range(rounds):
        clock.events.clear()
        clock.spent.clear()
        for _ in range(batch):
            prompt = rng.integers(4, engine.vocab_size, PROMPT_LEN).tolist()
            sched.submit(GenerateRequest(prompt, max_tokens=OUTPUT_TOKENS, min_tokens=OUTPUT_TOKENS, stream=True))
        t0 = time.perf_counter()
        while sched.run_once():
            pass
        wall += time.perf_counter() - t0
        tokens += batch * OUTPUT_TOKENS
        intervals += step_intervals_ms(clock.events, index, batch)
    step = ms_stats(intervals)
    decode_steps = sum(1 for _, i, _ in clock.events if engine.profiles.names[i].startswith("decode"))
    alone = decode[str(batch)]
    gpu = (alone["replay_ms"] or alone["call_ms"])["p50_ms"]
    return {"concurrency": batch, "profile": engine.profiles.names[index], "steps": len(intervals),
            "step_wall_ms": step, "engine_call_p50_ms": alone["call_ms"]["p50_ms"],
            "gpu_step_p50_ms": gpu, "gpu_step_is": "graph replay (CUDA events)" if alone["replay_ms"] else "engine call",
            "host_gap_ms": None if step["p50_ms"] is None else step["p50_ms"] - gpu,
            "tokens_per_s": tokens / wall if wall else None,
            # the last round's, per decode step, comparable with the server's (scheduler_split)
            "scheduler_ms_per_step": {k: v * 1e3 / decode_steps for k, v in clock.spent.items()} if decode_steps else None}


def load_hf(version_dir: Path, dtype: torch.dtype, device: torch.device):
    """HF's model on the build's own weights and config (a folder of links named as HF expects)."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="hf-view-") as tmp:
        (Path(tmp) / "config.json").symlink_to((version_dir / "model_config.json").resolve())
        (Path(tmp) / "model.safetensors").symlink_to((version_dir / "weights.safetensors").resolve())
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, local_files_only=True)
    model.config.use_cache = model.generation_config.use_cache = True  # the build saved use_cache=False
    return model.to(device).eval()


def compare_greedy(reference: list[list[int]], got: list[list[int]], n_tokens: int) -> dict:
    """How many sequences agree on their first ``n_tokens``; where the others first differ.

    >>> r = compare_greedy([[1, 2, 3], [1, 2, 3], [4, 5, 6]], [[1, 2, 3], [1, 9, 3], [4, 5, 7]], 3)
    >>> r["identical"], r["first_divergence"], r["median_first_divergence"]
    (1, [1, 2], 1.5)
    """
    if len(reference) != len(got):
        raise ValueError(f"{len(reference)} reference sequences but {len(got)} from the engine")
    divergence = []
    for ref, out in zip(reference, got):
        ref, out = ref[:n_tokens], out[:n_tokens]
        first = next((i for i, (x, y) in enumerate(zip(ref, out)) if x != y), None)
        if first is None and len(ref) != len(out):
            first = min(len(ref), len(out))
        if first is not None:
            divergence.append(first)
    return {"prompts": len(reference), "tokens": n_tokens, "identical": len(reference) - len(divergence),
            "first_divergence": divergence,
            "median_first_divergence": float(np.median(divergence)) if divergence else None}


def greedy_vs_hf(engine, tokenizer, hf, n: int, n_tokens: int, hf_batch: int, rng: np.random.Generator) -> dict:
    """Greedy tokens of HF ``generate`` (batches, default cache) and of the engine through the Scheduler."""
    from llmprofiles.generation.scheduler import GenerateRequest, Scheduler

    prompts = [rng.integers(4, engine.vocab_size, PROMPT_LEN).tolist() for _ in range(n)]
    reference = []
    t0 = time.perf_counter()
    for i in range(0, n, hf_batch):
        ids = torch.tensor(prompts[i:i + hf_batch], device=hf.device)
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                              min_new_tokens=n_tokens, do_sample=False, use_cache=True,
                              pad_token_id=engine.shape.eos_token_id)
        reference += out[:, PROMPT_LEN:].tolist()
    hf_s = time.perf_counter() - t0
    finals = {}
    sched = Scheduler(engine, tokenizer, lambda o: finals.__setitem__(id(o.request), o) if o.final else None,
                      max_queue=n)
    requests = [GenerateRequest(p, max_tokens=n_tokens, min_tokens=n_tokens) for p in prompts]
    for r in requests:
        sched.submit(r)
    while sched.run_once():
        pass
    got = [finals[id(r)].ids for r in requests]
    return compare_greedy(reference, got, n_tokens) | {"hf_generate_s": hf_s}


def phase_engine(a, state: dict) -> dict:
    from llmprofiles.generation.engine import load_generation_engine
    from llmprofiles.generation.tokenizer import Tokenizer

    device = torch.device("cuda:0" if a.device == "cuda" else "cpu")
    cuda, sync = device.type == "cuda", sync_fn(device)
    version_dir = a.repo / "generate" / "1"
    rng = np.random.default_rng(SEED)
    base = 0
    if cuda:
        torch.cuda.init()  # the allocator's statistics refuse an uninitialised device ("Invalid device argument")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    engine = load_generation_engine(version_dir, device)
    load_s = time.perf_counter() - t0
    stages = {"after_load": memory_now(device)}  # where the memory beyond weights and KV goes, by stage
    warm = engine.warm_up()
    stages["after_warm_up"] = memory_now(device)
    print(f"engine loaded in {load_s:.1f} s, warm-up {sum(warm):.1f} s ({len(warm)} profiles)", flush=True)
    tokenizer = Tokenizer(version_dir)
    spec = engine.spec
    context = min(a.decode_context, spec.max_context - 1)
    fill_slots(engine, spec.max_batch, context, rng)
    sync()
    stages["after_filling_slots"] = memory_now(device)
    decode = {}
    for b in spec.decode_buckets:
        decode[str(b)] = time_decode(engine, b, context, a.decode_iters, a.decode_warmup, sync)
        r = decode[str(b)]
        print(f"decode batch {b}: call p50 {r['call_ms']['p50_ms']:.3f} ms, p99 {r['call_ms']['p99_ms']:.3f} ms"
              + (f", graph replay p50 {r['replay_ms']['p50_ms']:.3f} ms" if r["replay_ms"] else ""), flush=True)
    stages["after_decode_timing"] = memory_now(device)
    prefill = {}
    for b in spec.prefill_batches:  # batched prefill profiles (prefill_batches), each prompt its own slot
        for n in spec.prefill_buckets:
            key = str(n) if b == 1 else f"{b}x{n}"
            prefill[key] = time_prefill(engine, n, a.prefill_iters, max(1, a.decode_warmup // 4), sync, rng, batch=b)
            print(f"prefill {key}: p50 {prefill[key]['call_ms']['p50_ms']:.3f} ms", flush=True)
    stages["after_prefill_timing"] = memory_now(device)
    gaps = {}
    for b in (spec.max_batch, 1):
        gaps[b] = host_gap(engine, tokenizer, decode, a.gap_rounds, rng, batch=b)
        stages[f"after_scheduler_at_batch_{b}"] = memory_now(device)
    for g in gaps.values():
        print(f"host gap at batch {g['concurrency']}: step wall p50 {g['step_wall_ms']['p50_ms']:.3f} ms vs GPU "
              f"{g['gpu_step_p50_ms']:.3f} ms -> gap {g['host_gap_ms']:.3f} ms", flush=True)
    gap = gaps[spec.max_batch]
    memory = {"weights_bytes": weight_bytes(engine), "kv_bytes": engine.kv_bytes}
    if cuda:  # before the HF model is loaded for the correctness check
        sync()
        memory |= {"max_allocated_bytes": torch.cuda.max_memory_allocated(device) - base,
                   "max_reserved_bytes": torch.cuda.max_memory_reserved(device)}
        for key in ("allocated", "reserved"):
            memory[f"rest_{key}_bytes"] = memory[f"max_{key}_bytes"] - memory["weights_bytes"] - memory["kv_bytes"]
        memory["stages"] = {k: r | {"allocated_bytes": r["allocated_bytes"] - base} for k, r in stages.items()}
    print(f"memory: {json.dumps(memory)}", flush=True)
    attention_ab = None
    if cuda and engine.forward.decode_kernel:  # after the memory figures: the matmul form's graphs add their own
        attention_ab = compare_attention(engine, sorted({1, spec.max_batch}), context, a.decode_iters,
                                         a.decode_warmup, sync)
        for form, rows in attention_ab.items():
            print(f"decode attention {form}: " + ", ".join(
                f"batch {b} call p50 {r['call_ms']['p50_ms']:.3f} ms, replay p50 "
                f"{r['replay_ms']['p50_ms'] if r['replay_ms'] else float('nan'):.3f} ms" for b, r in rows.items()), flush=True)
    dtype = getattr(torch, read_manifest(version_dir, verify=False)["dtype"])
    hf = load_hf(version_dir, dtype, device)
    greedy = greedy_vs_hf(engine, tokenizer, hf, a.correctness_n, a.correctness_tokens, a.hf_batch, rng)
    print(f"greedy vs HF: {greedy['identical']}/{greedy['prompts']} identical over {greedy['tokens']} tokens",
          flush=True)
    return {"load_s": load_s, "warm_up_s": warm, "profiles": list(engine.profiles.names), "decode": decode,
            "prefill": prefill, "host_gap": gap, "host_gap_b1": gaps[1], "memory": memory, "greedy": greedy,
            "attention_ab": attention_ab,
            "spec": spec.to_dict(), "dtype": str(dtype).replace("torch.", "")}


# --- through Triton ---------------------------------------------------------------

class GrpcStream:
    """One tritonclient gRPC stream sending 128-token ``generate`` requests one at a time; cancels on demand."""

    def __init__(self, url: str, model: str = "generate"):
        import tritonclient.grpc as grpc

        self.grpc, self.url, self.model = grpc, url, model
        self.ids = itertools.count()
        self._open()

    def _open(self) -> None:
        self.responses: queue.Queue = queue.Queue()
        self.client = self.grpc.InferenceServerClient(self.url)
        self.client.start_stream(callback=lambda result, error: self.responses.put((time.perf_counter(), result, error)))

    def _inputs(self, prompt: list[int], max_tokens: int) -> list:
        out = []
        for name, dtype, array in (("input_ids", "INT64", np.array(prompt, dtype=np.int64)),
                                   ("max_tokens", "INT32", np.array([max_tokens], dtype=np.int32)),
                                   ("min_tokens", "INT32", np.array([max_tokens], dtype=np.int32)),
                                   ("stream", "BOOL", np.array([True]))):
            out.append(self.grpc.InferInput(name, list(array.shape), dtype))
            out[-1].set_data_from_numpy(array)
        return out

    def request(self, prompt: list[int], max_tokens: int, cancel_after: int | None = None,
                timeout_s: float = 120.0) -> dict:
        """TTFT, end-to-end and tokens of one request; ``cancel_after`` tokens, cancel it (a fresh stream follows)."""
        rid = f"b{next(self.ids)}"
        sent = time.perf_counter()
        out = {"ttft_ms": None, "e2e_ms": None, "tokens": 0, "cancelled": False, "error": None}
        try:
            self.client.async_stream_infer(self.model, self._inputs(prompt, max_tokens), request_id=rid,
                                           enable_empty_final_response=True)
            while True:
                t, result, error = self.responses.get(timeout=timeout_s)
                if error is not None:
                    out["error"] = str(error)
                    break
                response = result.get_response()
                if response.id != rid:
                    continue
                ids = result.as_numpy("output_ids")
                n = 0 if ids is None else int(ids.size)
                if n and out["ttft_ms"] is None:
                    out["ttft_ms"] = (t - sent) * 1e3
                out["tokens"] += n
                final = response.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    out["e2e_ms"] = (t - sent) * 1e3
                    break
                if cancel_after is not None and out["tokens"] >= cancel_after:
                    out["cancelled"] = True
                    self.reset()
                    break
        except queue.Empty:
            out["error"] = f"no response within {timeout_s:g} s"
            self.reset()
        except Exception as e:  # tritonclient raises its own types for a broken stream
            out["error"] = f"{type(e).__name__}: {e}"
            self.reset()
        if out["error"] is None and not out["cancelled"] and out["tokens"] != max_tokens:
            out["error"] = f"{out['tokens']} tokens, asked for exactly {max_tokens}"
        return out

    def reset(self) -> None:
        """Cancel whatever is in flight and open a fresh stream."""
        self.close()
        self._open()

    def close(self) -> None:
        try:
            self.client.stop_stream(cancel_requests=True)
        finally:
            self.client.close()


# The config.pbtxt parameters the stream phase may vary: the generate model logs each value it read.
STREAM_PARAMS = ("stream_interval", "send_threads", "send_budget_ms", "cancel_check_ms", "decode_steps", "graph_greedy")


def parse_variant(text: str) -> dict[str, float]:
    """``"stream_interval=4,send_budget_ms=0.5"`` -> ``{"stream_interval": 4, "send_budget_ms": 0.5}``.

    >>> parse_variant("send_threads=4, send_budget_ms=0.5")
    {'send_threads': 4, 'send_budget_ms': 0.5}
    """
    out = {}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        value = value.strip()
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if key not in STREAM_PARAMS or not number >= 0:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r}: each part of a stream variant is NAME=NUMBER (>= 0), NAME one of {list(STREAM_PARAMS)}")
        out[key] = int(number) if number.is_integer() else number
    return out


def variant_name(overrides: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def with_parameters(config: str, overrides: dict[str, int]) -> str:
    """``config.pbtxt`` text with each named parameter's value replaced; nothing else changes.

    >>> with_parameters('{ key: "stream_interval", value: { string_value: "1" } }', {"stream_interval": 8})
    '{ key: "stream_interval", value: { string_value: "8" } }'
    """
    for key, value in overrides.items():
        pattern = re.compile(rf'(key:\s*"{re.escape(key)}",\s*value:\s*\{{\s*string_value:\s*")([^"]*)(")')
        config, n = pattern.subn(lambda m: f"{m[1]}{value}{m[3]}", config)
        if n != 1:
            raise RuntimeError(f"the build's config.pbtxt has {n} {key} parameters, expected 1: rebuild it")
    return config


@contextlib.contextmanager
def serving(a, vocab: int, overrides: dict[str, int] | None = None):
    """tritonserver over a repository holding only ``generate`` (a link to the build).

    With ``overrides`` (config parameters), ``generate`` is a folder holding a copy of the build's
    ``config.pbtxt`` with those values and links to everything else of the build.
    """
    from llmprofiles.serving.launcher import TritonServer, overlay_python

    tmp = WORK
    tmp.mkdir(parents=True, exist_ok=True)
    repo = Path(tempfile.mkdtemp(prefix="generate-repo-", dir=tmp))
    built = (a.repo / "generate").resolve()
    if not overrides:
        (repo / "generate").symlink_to(built)
    else:
        (repo / "generate").mkdir()
        for item in built.iterdir():
            if item.name != "config.pbtxt":
                (repo / "generate" / item.name).symlink_to(item)
        config = with_parameters((built / "config.pbtxt").read_text(), overrides)
        (repo / "generate" / "config.pbtxt").write_text(config)
    server = TritonServer([repo], a.port_base, a.port_base + 1, a.port_base + 2, work=tmp / "triton",
                          log_path=tmp / "server.log", ready_timeout_s=900)
    # The server's Python must have numpy < 2 (BYTES outputs): a numpy-1.26 folder first on its PYTHONPATH.
    # TritonServer reads os.environ when it starts, so set it only around the start; this process keeps its own.
    # The stub ignores PYTHONPATH: it imports from the Python named by STUB_PYTHON (else this one), so a
    # numpy-1 folder goes first in a venv made over this interpreter's packages.
    old = os.environ.get("STUB_PYTHON")
    if a.server_pythonpath:
        os.environ["STUB_PYTHON"] = str(overlay_python(tmp / "stub-venv", [a.server_pythonpath]))
    try:
        server.start()
    finally:
        if old is None:
            os.environ.pop("STUB_PYTHON", None)
        else:
            os.environ["STUB_PYTHON"] = old
    try:
        print(f"tritonserver ready in {server.startup_s:.1f} s (log {server.log_path})", flush=True)
        yield server
    finally:
        server.stop()
        shutil.rmtree(repo, ignore_errors=True)


def server_memory(server) -> dict:
    from bench.llm_bench import gpu_used_bytes, proc_tree_rss_bytes

    return {"host_rss_bytes": proc_tree_rss_bytes(server.pid), "gpu_used_bytes": gpu_used_bytes()}


def server_gauges(server) -> dict:
    from llmprofiles.serving.launcher import metric_sum

    m = server.metrics()
    return {"active_sequences": metric_sum(m, "llm_generate_active_sequences", model="generate"),
            "queue_size": metric_sum(m, "llm_generate_queue_size", model="generate")}


def scheduler_counters(server) -> dict:
    """The generate model's counters of its scheduler thread's time (by part), decode steps and output tokens."""
    from llmprofiles.generation.scheduler import TIME_PARTS
    from llmprofiles.serving.launcher import metric_sum

    time.sleep(0.3)  # the model's metrics timer sends every 0.1 s
    m = server.metrics()
    out = {part: metric_sum(m, "llm_generate_scheduler_seconds_total", model="generate", part=part) or 0.0
           for part in TIME_PARTS}
    out["decode_steps"] = sum(v for (name, labels), v in m.items() if name == "llm_generate_steps_total"
                              and any(k == "profile" and p.startswith("decode") for k, p in labels))
    out["output_tokens"] = metric_sum(m, "llm_generate_output_tokens_total", model="generate") or 0.0
    out["responses"] = metric_sum(m, "llm_generate_responses_total", model="generate") or 0.0
    return out


def with_host(per: dict[str, float]) -> dict[str, float]:
    """The scheduler's parts per step, plus "host": what the parts leave of the whole iteration."""
    return per | {"host": per["iteration"] - sum(v for k, v in per.items() if k not in ("iteration", "host"))}


def scheduler_split(before: dict, after: dict) -> dict | None:
    """Between two scheduler_counters: the scheduler thread's ms per decode step, by part, and "host" (the rest)."""
    d = {k: after[k] - before[k] for k in after}
    steps = d.pop("decode_steps")
    if steps <= 0:
        return None
    per = with_host({k: v * 1e3 / steps for k, v in d.items() if k not in ("output_tokens", "responses")})
    out = {"decode_steps": steps, "rows_per_step": d["output_tokens"] / steps, "ms_per_step": per}
    if d.get("responses"):
        out["responses_per_step"] = d["responses"] / steps
    return out


def first_vs_steady(server, vocab: int, repeats: int) -> dict:
    """The first request after ready, then the same request ``repeats`` times (the steady state)."""
    prompt = np.random.default_rng(SEED + 1).integers(4, vocab, PROMPT_LEN).tolist()
    stream = GrpcStream(server.grpc_url)
    try:
        first = stream.request(prompt, OUTPUT_TOKENS)
        steady = [stream.request(prompt, OUTPUT_TOKENS) for _ in range(repeats)]
    finally:
        stream.close()
    errors = [r["error"] for r in [first, *steady] if r["error"]]
    if errors:
        raise RuntimeError(f"first/steady requests failed: {errors[0]}")
    return {"first": first, "steady": steady,
            "steady_ttft_p50_ms": float(np.median([r["ttft_ms"] for r in steady])),
            "steady_e2e_p50_ms": float(np.median([r["e2e_ms"] for r in steady]))}


def client_command(server, a, concurrency: int, vocab: int) -> list[str]:
    cmd = [sys.executable, "client/generate.py", "--protocol", "grpc", "--url", server.grpc_url,
           "--concurrency", str(concurrency), "--prompt-len", str(PROMPT_LEN), "--max-tokens", str(OUTPUT_TOKENS),
           "--warmup", "1", "--vocab", str(vocab), "--metrics-url", f"127.0.0.1:{server.metrics_port}",
           "--timeout-s", "300"]
    if a.sweep_seconds:
        return cmd + ["--duration-s", f"{a.sweep_seconds:g}"]
    return cmd + ["--requests", str(concurrency * a.sweep_requests)]


def last_json_line(text: str) -> dict | None:
    """The last stdout line that parses as a JSON object (the project's clients end with one).

    >>> last_json_line('table\\n{"ok": true}\\n')
    {'ok': True}
    """
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def run_client(server, a, concurrency: int, vocab: int, tag: str = "") -> dict:
    """client/generate.py at one concurrency, as a user runs it; its JSON summary."""
    cmd = client_command(server, a, concurrency, vocab)
    print(f"$ {' '.join(cmd)}", flush=True)
    limit = (a.sweep_seconds or 0) + 600
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    (WORK / f"client{tag}_c{concurrency}.log").write_text(p.stdout + p.stderr)
    result = last_json_line(p.stdout)
    if result is None:
        raise RuntimeError(f"client/generate.py exited {p.returncode} without a JSON line; stderr:\n{p.stderr[-2000:]}")
    result["returncode"] = p.returncode
    return result


def client_figures(result: dict) -> dict:
    """The figures the report compares, from client/generate.py's JSON."""
    return {"ttft": result.get("ttft"), "itl": result.get("itl"), "e2e": result.get("e2e"),
            "output_tokens_per_s": result.get("output_tokens_per_s"), "count": result.get("count"),
            "errors": result.get("errors"), "mismatches": result.get("mismatches"), "ok": result.get("ok"),
            "wall_s": result.get("wall_s"), "server_steps": (result.get("server") or {}).get("steps")}


def perf_analyzer_binary(a) -> str | None:
    if a.perf_analyzer:  # named but absent (the carried wheel did not install): not run, not a failed phase
        return str(a.perf_analyzer) if a.perf_analyzer.is_file() else None
    beside = Path(sys.executable).parent / "perf_analyzer"
    return str(beside) if beside.is_file() else shutil.which("perf_analyzer")


def perf_input_data(vocab: int, n: int = 64) -> dict:
    """perf_analyzer's --input-data: ``n`` random 128-token prompts, each asking for exactly 128 streamed tokens."""
    rng = np.random.default_rng(SEED + 2)
    return {"data": [{"input_ids": {"content": rng.integers(4, vocab, PROMPT_LEN).tolist(), "shape": [PROMPT_LEN]},
                      "max_tokens": [OUTPUT_TOKENS], "min_tokens": [OUTPUT_TOKENS], "stream": [True]}
                     for _ in range(n)]}


def response_tokens(output: object) -> int:
    """Tokens in one exported response: ``output_ids`` is a list (several), a number (one) or empty."""
    if not isinstance(output, dict) or "output_ids" not in output:
        return 1  # outputs not exported: one token per streamed response
    ids = output["output_ids"]
    if isinstance(ids, list):
        return len(ids)
    return 0 if ids == "" or ids is None else 1


def parse_profile_export(doc: dict) -> list[dict]:
    """TTFT, ITL and output tokens/s per experiment of a perf_analyzer profile export.

    Timestamps are ns. TTFT is the first token-carrying response minus the request's
    ``timestamp``; ITL is the gap between successive token-carrying responses, split
    evenly over the tokens of a response that carries several; tokens/s counts the
    tokens whose responses fall inside the measurement windows (``window_boundaries``),
    or between the first request and the last response when there are none.
    """
    out = []
    for exp in doc.get("experiments", []):
        ttft, itl, requests = [], [], exp.get("requests", [])
        stamped = []  # (response time, tokens)
        for r in requests:
            times = r.get("response_timestamps", [])
            outputs = r.get("response_outputs") or [None] * len(times)
            last = None
            for t, o in zip(times, outputs):
                n = response_tokens(o)
                stamped.append((t, n))
                if not n:
                    continue
                if last is None:
                    ttft.append((t - r["timestamp"]) / 1e6)
                else:
                    itl += [(t - last) / 1e6 / n] * n
                last = t
        bounds = exp.get("window_boundaries") or []
        if len(bounds) >= 2:
            lo, hi = min(bounds), max(bounds)
        elif requests and stamped:
            lo, hi = min(r["timestamp"] for r in requests), max(t for t, _ in stamped)
        else:
            lo = hi = 0
        tokens = sum(n for t, n in stamped if lo <= t <= hi)
        span_s = (hi - lo) / 1e9
        out.append({"mode": exp.get("experiment", {}).get("mode"), "concurrency": exp.get("experiment", {}).get("value"),
                    "requests": len(requests), "ttft": latency_summary(ttft), "itl": latency_summary(itl),
                    "output_tokens": tokens, "window_s": span_s,
                    "output_tokens_per_s": tokens / span_s if span_s > 0 else None})
    return out


def run_perf_analyzer(binary: str, server, a, concurrency: int, vocab: int) -> dict:
    tmp = WORK
    data, export = tmp / "perf_input.json", tmp / f"perf_export_c{concurrency}.json"
    data.write_text(json.dumps(perf_input_data(vocab)))
    cmd = [binary, "-m", "generate", "-i", "grpc", "--streaming", "-u", server.grpc_url,
           "--concurrency-range", str(concurrency), "--input-data", str(data),
           "--profile-export-file", str(export), "--measurement-interval", str(a.perf_interval_ms),
           "--stability-percentage", "999", "--max-trials", "6"]
    print(f"$ {' '.join(cmd)}", flush=True)
    # perf_analyzer refuses an export path that exists ("Path must not already exist"); a stale export of an
    # earlier run would then be read as this run's figures (it was, once, in session 7's pump A/B).
    export.unlink(missing_ok=True)
    try:  # an outside check: its failure is a row, never the end of the phase's sweep
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=6 * a.perf_interval_ms / 1e3 + 60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"command": " ".join(cmd), "error": f"{type(e).__name__}: {e}"[:400]}
    (tmp / f"perf_analyzer_c{concurrency}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0 or not export.is_file():
        return {"command": " ".join(cmd), "error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}"}
    parsed = parse_profile_export(json.loads(export.read_text()))
    return {"command": " ".join(cmd), **(parsed[0] if parsed else {"error": "no experiment in the export"})}


def phase_triton(a, state: dict) -> dict:
    vocab = read_manifest(a.repo / "generate" / "1", verify=False)["vocab_size"]
    out: dict = {}
    with serving(a, vocab) as server:
        out["startup_s"] = server.startup_s
        out["first_vs_steady"] = first_vs_steady(server, vocab, a.steady_repeats)
        fs = out["first_vs_steady"]
        print(f"first request: ttft {fs['first']['ttft_ms']:.1f} ms, total {fs['first']['e2e_ms']:.1f} ms; steady "
              f"p50 ttft {fs['steady_ttft_p50_ms']:.1f} ms, total {fs['steady_e2e_p50_ms']:.1f} ms", flush=True)
        out["client"] = {}
        for c in a.concurrency:
            before = scheduler_counters(server)
            result = run_client(server, a, c, vocab)
            out["client"][str(c)] = client_figures(result) | {"command": " ".join(client_command(server, a, c, vocab)),
                                                              "scheduler": scheduler_split(before, scheduler_counters(server))}
            f = out["client"][str(c)]
            if not f["ttft"]:  # the client refused to run (its JSON names why): keep going, report it
                f["error"] = result.get("error", "no figures")
                print(f"client c={c} failed: {f['error']}", flush=True)
                continue
            print(f"client c={c}: ttft p50 {f['ttft']['p50_ms']}, itl p50 {f['itl']['p50_ms']} p99 "
                  f"{f['itl']['p99_ms']}, {f['output_tokens_per_s']} tok/s, errors {f['errors']}", flush=True)
        out["memory_after_sweep"] = server_memory(server)
        binary = perf_analyzer_binary(a)
        out["perf_analyzer"] = {}
        for c in a.concurrency:
            if binary is None:
                out["perf_analyzer"][str(c)] = {"not_run": "perf_analyzer not found"}
                continue
            out["perf_analyzer"][str(c)] = run_perf_analyzer(binary, server, a, c, vocab)
            print(f"perf_analyzer c={c}: {json.dumps(out['perf_analyzer'][str(c)])[:300]}", flush=True)
        out["gauges_end"] = server_gauges(server)
    return out


def stream_variants(a) -> list[dict[str, int]]:
    """The stream phase's variants: each --stream-intervals value alone, then each --stream-variant."""
    return [{"stream_interval": k} for k in a.stream_intervals] + list(a.stream_variant)


def phase_stream(a, state: dict) -> dict:
    """An A/B of how responses are sent: a fresh server per variant, client/generate.py at one concurrency."""
    vocab = read_manifest(a.repo / "generate" / "1", verify=False)["vocab_size"]
    out: dict = {"concurrency": a.stream_concurrency, "variants": {}}
    for overrides in stream_variants(a):
        name = variant_name(overrides)
        tag = "_" + name.replace("=", "").replace(",", "_")
        with serving(a, vocab, overrides) as server:
            also = {}  # the same server at the other concurrencies first (its warm state, before the main run)
            for c in a.stream_also:
                before = scheduler_counters(server)
                also[str(c)] = client_figures(run_client(server, a, c, vocab, tag=tag)) | {
                    "scheduler": scheduler_split(before, scheduler_counters(server))}
            before = scheduler_counters(server)
            result = run_client(server, a, a.stream_concurrency, vocab, tag=tag)
            f = client_figures(result) | {"startup_s": server.startup_s, "overrides": overrides,
                                          "command": " ".join(client_command(server, a, a.stream_concurrency, vocab)),
                                          "scheduler": scheduler_split(before, scheduler_counters(server))}
            if also:
                f["also"] = also
            if not f["ttft"]:
                f["error"] = result.get("error", "no figures")
            log = server.log_path.read_text(errors="replace")
            (WORK / f"server{tag}.log").write_text(log)
            absent = [f"{k} {v}" for k, v in overrides.items() if not re.search(rf"\b{k} {v}\b", log)]
            if absent:  # the model says what it read at load
                f["error"] = f"the server's log does not show {absent}: the variant did not take"
        out["variants"][name] = f
        print(f"stream variant {name} at c={a.stream_concurrency}: {json.dumps(f)[:400]}", flush=True)
    return out


def cancel_load(server, concurrency: int, seconds: float, vocab: int, cancel_every: int = 10) -> dict:
    """``concurrency`` streams for ``seconds``; every ``cancel_every``-th request is cancelled after a few tokens."""
    lock, counter = threading.Lock(), itertools.count()
    results: list[dict] = []
    clock: dict = {}

    def start_clock() -> None:  # once every stream has warmed up: memory from here, then the clock
        clock["memory_start"] = server_memory(server)
        clock["t0"] = time.perf_counter()
        clock["deadline"] = clock["t0"] + seconds

    start = threading.Barrier(concurrency, action=start_clock)

    def worker(w: int) -> None:
        rng = np.random.default_rng((SEED, 3, w))
        stream = None
        try:
            stream = GrpcStream(server.grpc_url)
            warm = stream.request(rng.integers(4, vocab, PROMPT_LEN).tolist(), OUTPUT_TOKENS)
            start.wait(timeout=900)
            if warm["error"]:
                with lock:
                    results.append(warm)
            while time.perf_counter() < clock["deadline"]:
                i = next(counter)
                cancel = 2 + i % 7 if i % cancel_every == cancel_every // 2 else None
                r = stream.request(rng.integers(4, vocab, PROMPT_LEN).tolist(), OUTPUT_TOKENS, cancel_after=cancel)
                with lock:
                    results.append(r)
        except Exception as e:  # a stream that could not start: count it, release the others
            start.abort()
            with lock:
                results.append({"error": f"stream {w}: {type(e).__name__}: {e}", "cancelled": False, "tokens": 0})
        finally:
            if stream is not None:
                stream.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if "t0" not in clock:
        raise RuntimeError(f"the load run never started: {results[0]['error'] if results else 'no stream'}")
    t0, before = clock["t0"], clock["memory_start"]
    wall = time.perf_counter() - t0
    errors = [r["error"] for r in results if r["error"]]
    done = [r for r in results if not r["error"] and not r["cancelled"]]
    return {"concurrency": concurrency, "seconds": seconds, "wall_s": wall, "requests": len(results),
            "completed": len(done), "cancelled": sum(r["cancelled"] for r in results), "errors": len(errors),
            "error_samples": sorted(set(errors))[:5], "output_tokens_per_s": sum(r["tokens"] for r in done) / wall,
            "ttft": latency_summary([r["ttft_ms"] for r in done]), "memory_start": before}


def phase_load(a, state: dict) -> dict:
    vocab = read_manifest(a.repo / "generate" / "1", verify=False)["vocab_size"]
    with serving(a, vocab) as server:
        print(f"load: concurrency {a.load_concurrency} for {a.load_seconds:g} s, every 10th request cancelled",
              flush=True)
        load = cancel_load(server, a.load_concurrency, a.load_seconds, vocab)
        gauges = server_gauges(server)
        for _ in range(40):  # a cancelled request frees its slot at the next scheduler step
            if not gauges["active_sequences"] and not gauges["queue_size"]:
                break
            time.sleep(0.25)
            gauges = server_gauges(server)
        load["memory_end"] = server_memory(server)
        load["gauges_end"] = gauges
        print(f"load: {load['requests']} requests, {load['cancelled']} cancelled, {load['errors']} errors; "
              f"gauges at the end {gauges}", flush=True)
    return load


# --- anchor: HF generate with a static cache --------------------------------------------

def phase_anchor(a, state: dict) -> dict:
    device = torch.device("cuda:0" if a.device == "cuda" else "cpu")
    sync = sync_fn(device)
    version_dir = a.repo / "generate" / "1"
    dtype = getattr(torch, read_manifest(version_dir, verify=False)["dtype"])
    hf = load_hf(version_dir, dtype, device)
    long, short = a.anchor_lengths
    out = dict(state.get("anchor") or {})
    batches = dict(out.get("batches") or {})
    for b in a.anchor_batches:
        ids = torch.from_numpy(np.random.default_rng((SEED, 4, b)).integers(4, hf.config.vocab_size, (b, PROMPT_LEN)))
        ids = ids.to(device)

        def generate(n: int) -> float:
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, use_cache=True, cache_implementation="static",
                            pad_token_id=hf.config.eos_token_id if isinstance(hf.config.eos_token_id, int) else 0)
            sync()
            return time.perf_counter() - t0

        first_s = generate(long)  # compiles (about 70 s per batch size on the H200)
        for n in (short, long, short):  # settle recompiles before timing
            generate(n)
        longs, shorts = [], []
        for _ in range(a.anchor_reps):
            longs.append(generate(long))
            shorts.append(generate(short))
        per_token_ms = (np.median(longs) - np.median(shorts)) / (long - short) * 1e3
        batches[str(b)] = {"batch": b, "first_call_s": first_s, "long": long, "short": short,
                           "long_s": longs, "short_s": shorts, "per_token_ms": float(per_token_ms),
                           "tokens_per_s": float(b * 1e3 / per_token_ms) if per_token_ms > 0 else None}
        print(f"anchor batch {b}: {per_token_ms:.3f} ms per decoded token "
              f"({batches[str(b)]['tokens_per_s']} tok/s); first call {first_s:.1f} s", flush=True)
    return out | {"batches": batches, "cache_implementation": "static", "prompt_len": PROMPT_LEN}


# --- report -------------------------------------------------------------------

def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("MET" if ok else "MISSED")


def fmt(x: float | None, digits: int = 2, unit: str = "") -> str:
    return "-" if x is None else f"{x:,.{digits}f}{unit}"


def drift_bytes(start: dict, end: dict, key: str) -> int | None:
    a, b = (start or {}).get(key), (end or {}).get(key)
    return b - a if a and b else None


def engine_builds(state: dict) -> list[dict]:
    """The engine phase of each fresh build measured: this state's, then any from --other-build."""
    return [e for e in (state.get("engine"), *state.get("other_builds", [])) if e]


def triton_builds(state: dict) -> list[dict]:
    """The Triton phase of each fresh build measured: this state's, then any from --other-build that ran one."""
    return [t for t in (state.get("triton"), *state.get("other_tritons", [])) if t]


def over_builds(values: list[float | None], digits: int, unit: str) -> tuple[float | None, str]:
    """The median of one figure over the builds that measured it, and how to show it (each value, when several)."""
    got = [v for v in values if v is not None]
    if not got:
        return None, "-"
    mid = float(np.median(got))
    each = f" ({' and '.join(fmt(v, digits) for v in got)})" if len(got) > 1 else ""
    return mid, fmt(mid, digits, unit) + each


def spread(values: list[float]) -> str:
    """How far apart fresh builds' figures are: (largest - smallest) / smallest."""
    return f"{(max(values) - min(values)) / min(values) * 100:.1f}%"


def client_value(triton: dict, conc: str, metric: str, stat: str | None = None) -> float | None:
    """One figure of a Triton phase's ``client/generate.py`` run at ``conc``: ``metric`` (e.g. output_tokens_per_s),
    or ``stat`` of it (``itl``'s p50_ms); None where not measured."""
    c = triton.get("client", {}).get(conc)
    if not c or c.get(metric) is None:
        return None
    return c[metric] if stat is None else c[metric].get(stat)


def targets(state: dict) -> list[list[str]]:
    """Issue 11's targets against this run: ``[target, measured, verdict]``; unmeasured ones say so."""
    eng, tri, load = state.get("engine"), state.get("triton"), state.get("load")
    rows = []

    def row(name: str, measured: str, ok: bool | None) -> None:
        rows.append([name, measured, verdict(ok)])

    builds = engine_builds(state)
    for batch, bound in ((1, 1.2), (64, 2.0)):
        ms, shown = over_builds([d["call_ms"]["p50_ms"] for e in builds if (d := e.get("decode", {}).get(str(batch)))],
                                3, " ms")
        row(f"engine decode step at batch {batch} <= {bound} ms (p50; median of {len(builds)} fresh builds)"
            if len(builds) > 1 else f"engine decode step at batch {batch} <= {bound} ms (median)",
            shown, None if ms is None else ms <= bound)
    runs = triton_builds(state)
    several = f" (median of {len(runs)} fresh builds)" if len(runs) > 1 else ""
    for name, conc, metric, stat, digits, unit, ok in (
            ("Triton concurrency 1: ITL p50 <= 2.0 ms", "1", "itl", "p50_ms", 3, " ms", lambda v: v <= 2.0),
            ("Triton concurrency 1: TTFT p50 <= 15 ms", "1", "ttft", "p50_ms", 2, " ms", lambda v: v <= 15),
            ("Triton concurrency 64: >= 25,000 output tokens/s", "64", "output_tokens_per_s", None, 0, " tok/s",
             lambda v: v >= 25_000),
            ("Triton concurrency 64: ITL p99 <= 10 ms", "64", "itl", "p99_ms", 2, " ms", lambda v: v <= 10)):
        mid, shown = over_builds([client_value(t, conc, metric, stat) for t in runs], digits, unit)
        row(name + several, shown, None if mid is None else ok(mid))
    firsts = [(t["first_vs_steady"]["first"]["e2e_ms"], t["first_vs_steady"]["steady_e2e_p50_ms"])
              for t in runs if t.get("first_vs_steady")]
    if firsts:
        (first, steady), worst = firsts[0], max(f / s for f, s in firsts)
        each = f"; worst of {len(firsts)} fresh builds {worst:.2f}x" if len(firsts) > 1 else ""
        row("first request after ready <= 2x steady state (total latency)",
            f"{first:.1f} ms vs {steady:.1f} ms ({first / steady:.2f}x{each})", worst <= 2)
    else:
        row("first request after ready <= 2x steady state (total latency)", "-", None)
    mem = (eng or {}).get("memory", {})
    if "max_reserved_bytes" in mem:
        declared = mem["weights_bytes"] + mem["kv_bytes"]
        r = mem["max_reserved_bytes"] / declared
        row("GPU memory <= weights + KV pool + 15% (peak reserved by PyTorch)",
            f"{mem['max_reserved_bytes'] / 2**20:,.0f} MiB = {r:.3f}x of {declared / 2**20:,.0f} MiB",
            r <= 1 + MEMORY_HEADROOM)
    else:
        row("GPU memory <= weights + KV pool + 15% (peak reserved by PyTorch)", "no GPU", None)
    g = (eng or {}).get("greedy")
    if g:
        rest = (f"; the other {g['prompts'] - g['identical']} first differ at token "
                f"{fmt(g['median_first_divergence'], 1)} (median)" if g["first_divergence"] else "")
        enough = g["prompts"] >= 100
        row(f"greedy first {g['tokens']} tokens identical to HF generate for >= 95 of 100 prompts",
            f"{g['identical']}/{g['prompts']}{rest}" + ("" if enough else " (fewer than 100 prompts)"),
            None if not enough else (g["identical"] >= 0.95 * g["prompts"] and g["tokens"] >= 32))
    else:
        row("greedy first 32 tokens identical to HF generate for >= 95 of 100 prompts", "-", None)
    if load:
        short = load["wall_s"] < 300 or load["concurrency"] < 64
        why = f" (a {load['wall_s']:.0f} s run at concurrency {load['concurrency']}; the target is 5 min at 64)" if short else ""
        row("load run with cancellations: zero errors", f"{load['errors']} errors in {load['requests']} requests, "
            f"{load['cancelled']} cancelled{why}", False if load["errors"] else (None if short else True))
        drifts = {what: drift_bytes(load["memory_start"], load["memory_end"], key)
                  for what, key in (("host RSS", "host_rss_bytes"), ("GPU", "gpu_used_bytes"))}
        measured = ", ".join(f"{w} {d / 2**20:+.0f} MiB" if d is not None else f"{w} not measured"
                             for w, d in drifts.items())
        known = [d for d in drifts.values() if d is not None]
        flat = None if not known else all(abs(d) < FLAT_BYTES for d in known)
        if flat and (short or len(known) < len(drifts)):
            flat = None
        row("load run: memory flat (drift < 64 MiB)", measured, flat)
        gauges = load.get("gauges_end", {})
        free = gauges.get("active_sequences") == 0 and not gauges.get("queue_size")
        row("load run: every slot free at the end (active sequences and queue 0)",
            f"active {gauges.get('active_sequences')}, queued {gauges.get('queue_size')}",
            None if gauges.get("active_sequences") is None else free)
    else:
        for name in ("load run with cancellations: zero errors", "load run: memory flat (drift < 64 MiB)",
                     "load run: every slot free at the end (active sequences and queue 0)"):
            row(name, "-", None)
    return rows


def how_run(state: dict, phase: str) -> str:
    command = state.get("commands", {}).get(phase)
    make = state.get("make", {}).get(phase)
    took = state.get("phase_wall_s", {}).get(phase)
    took = f" ({took:.0f} s)" if took is not None else ""
    return f"`{make}`, which ran `{command}`{took}" if make else f"`{command}`{took}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def sweep_rows(tri: dict, anchor: dict | None) -> list[list[str]]:
    rows = []
    batches = (anchor or {}).get("batches", {})
    for c, f in tri.get("client", {}).items():
        pa = tri.get("perf_analyzer", {}).get(c, {})
        pa_cells = (["not run: " + pa["not_run"]] + [""] * 4 if "not_run" in pa else
                    ["error: " + pa["error"][:80]] + [""] * 4 if "error" in pa else
                    [fmt(pa["ttft"]["p50_ms"]), fmt(pa["ttft"]["p99_ms"]), fmt(pa["itl"]["p50_ms"], 3),
                     fmt(pa["itl"]["p99_ms"], 3), fmt(pa["output_tokens_per_s"], 0)])
        hf = batches.get(c)
        rows.append([c, fmt(f["ttft"]["p50_ms"]), fmt(f["ttft"]["p99_ms"]), fmt(f["itl"]["p50_ms"], 3),
                     fmt(f["itl"]["p99_ms"], 3), fmt(f["output_tokens_per_s"], 0), f"{f['errors']}/{f['count']}",
                     *pa_cells, fmt(hf["tokens_per_s"], 0) if hf else "-"])
    return rows


def prefill_steps_table(clients: dict) -> list[str]:
    """Prefill steps by profile during each `client/generate.py` run (the server's step counters): how often several
    prompts shared a step (prefill_b<b>_<n>: up to b prompts)."""
    steps = {c: {k: v for k, v in (r.get("server_steps") or {}).items() if k.startswith("prefill")}
             for c, r in clients.items()}
    names = sorted({k for v in steps.values() for k in v}, key=lambda k: (k.count("_b"), k))
    if not names:
        return []
    return ["Prefill steps by profile during each run (`llm_generate_steps_total`; `prefill_b<b>_<n>` holds up to b "
            "prompts), beside the requests the client completed:", "",
            *table(["conc", "requests", *names],
                   [[c, f"{clients[c].get('count', 0):,}", *(f"{steps[c].get(n, 0):,.0f}" for n in names)]
                    for c in sorted(steps, key=int)]), ""]


def b1_tuning(manifest: dict) -> str:
    """The build's tuning of the batch-1 decode step, in words (generation/tuning.py)."""
    t = manifest.get("decode_b1_tuning")
    if not t:
        return "one compile, untuned"
    if "winner" not in t:
        return f"tuning failed ({t.get('error', '?')}), one compile"
    attempts = ", ".join(f"{a['ms']:.3f}" if "ms" in a else "failed" for a in t["attempts"])
    return (f"best of {t['runs']} compiles (replay ms {attempts}; kept {t['winner_ms']:.3f}, served "
            f"{t['final_ms']:.3f})" if "final_ms" in t else f"best of {t['runs']} compiles (replay ms {attempts})")


def report(state: dict) -> str:
    env, eng, tri, load, anchor = (state.get(k) for k in ("env", "engine", "triton", "load", "anchor"))
    m = env["manifest"]
    spec = m.get("generation") or {}
    lines = [f"# The generate model on {env['gpu']}", "",
             f"- date {env['date']}; driver {env['driver']}; torch {env['torch']} (CUDA {env['cuda']}); transformers "
             f"{env['transformers']}; numpy {env['numpy']}; Python {env['python']}; tritonserver from "
             f"nvidia-pytriton {env['tritonserver_wheel']}; perf_analyzer wheel {env['perf_analyzer_wheel'] or 'not installed'}",
             f"- model {m['model']}, {m['dtype']} on {m['device']}; {spec.get('slots')} slots x "
             f"{spec.get('max_context')} positions; decode buckets {spec.get('decode_buckets')}, prefill buckets "
             f"{spec.get('prefill_buckets')}; {PROMPT_LEN}-token prompts, {OUTPUT_TOKENS} output tokens "
             "(min_tokens = max_tokens)",
             f"- built with decode attention {(m.get('decode_attention') or {}).get('use', 'not checked')}; "
             f"programmatic dependent launch in the batch-1 decode step: {m.get('decode_pdl', 'not probed')}; "
             f"a prompt's first chunk attending only to itself: {m.get('fresh_prefill', False)}; prompts per prefill "
             f"step: {spec.get('prefill_batches', [1])}; batch-1 decode step: {b1_tuning(m)}",
             "- commands, by phase:", *(f"  - {p}: {how_run(state, p)}" for p in state.get("commands", {})), ""]
    if state.get("server_pythonpath"):
        lines.insert(4, f"- the server's backend stub imports `{state['server_pythonpath']}` first (numpy < 2 for BYTES outputs), through a venv over the serving Python (STUB_PYTHON)")
    if state.get("notes"):
        lines += ["## Notes on this run", "", *(f"- {n}" for n in state["notes"]), ""]
    for phase, error in state.get("errors", {}).items():
        lines += [f"**The {phase} phase failed:**", "", "```", error[-3000:], "```", ""]
    lines += ["## Targets (issue 11)", "", *table(["target", "measured", "verdict"], targets(state)), ""]
    if eng:
        first_decode = next(iter(eng["decode"].values()))
        lines += ["## Engine alone", "",
                  f"Load {eng['load_s']:.1f} s, then warm-up of {len(eng['warm_up_s'])} profiles "
                  f"{sum(eng['warm_up_s']):.1f} s (graph capture on CUDA; eager on CPU).", "",
                  f"Decode step, the bucket full, at {first_decode['context']} positions of context ("
                  + ("attention by the kernel that reads each row's context in place"
                     + (", the step compiled whole" if first_decode.get("whole_step") else "")
                     if first_decode.get("attention") == "kernel" else
                     f"batched matmuls; on CUDA the graph captured for attention length "
                     f"{first_decode.get('attention_length', '-')}")
                  + "): the engine call (host inputs, copy, replay, GPU sync) and the captured graph alone (GPU time).",
                  "", *table(["batch", "profile", "call p50 ms", "call p99 ms", "graph replay p50 ms", "tokens/s (call p50)"],
                             [[str(d["batch"]), d["profile"], fmt(d["call_ms"]["p50_ms"], 3),
                               fmt(d["call_ms"]["p99_ms"], 3),
                               fmt(d["replay_ms"]["p50_ms"], 3) if d["replay_ms"] else "-",
                               fmt(d["batch"] * 1e3 / d["call_ms"]["p50_ms"], 0)] for d in eng["decode"].values()]),
                  "", *table(["prompts", "prefill length", "profile", "call p50 ms", "call p99 ms", "graph replay p50 ms",
                              "call p50 ms per prompt"],
                             [[str(p.get("batch", 1)), str(p["length"]), p["profile"], fmt(p["call_ms"]["p50_ms"], 3),
                               fmt(p["call_ms"]["p99_ms"], 3),
                               fmt(p["replay_ms"]["p50_ms"], 3) if p.get("replay_ms") else "-",
                               fmt(p["call_ms"]["p50_ms"] / p.get("batch", 1), 3)] for p in eng["prefill"].values()]), ""]
        builds = engine_builds(state)
        if len(builds) > 1:
            buckets = [b for b in eng["decode"] if all(b in e["decode"] for e in builds)]

            lines += [f"The same decode steps on {len(builds)} fresh builds (each its own `make build` from an empty "
                      "inductor cache), engine call p50 ms; the targets take their median:", "",
                      *table(["batch", *(f"build {i + 1}" for i in range(len(builds))), "median", "spread"],
                             [[b, *(fmt(e["decode"][b]["call_ms"]["p50_ms"], 3) for e in builds),
                               fmt(float(np.median([e["decode"][b]["call_ms"]["p50_ms"] for e in builds])), 3),
                               spread([e["decode"][b]["call_ms"]["p50_ms"] for e in builds])] for b in buckets]), ""]
        ab = eng.get("attention_ab")
        if ab:
            def cell(r: dict) -> str:
                return (f"{fmt(r['call_ms']['p50_ms'], 3)} / "
                        + (fmt(r["replay_ms"]["p50_ms"], 3) if r["replay_ms"] else "-"))
            forms = [f for f in DECODE_FORMS if f in ab]
            lines += ["Decode attention side by side, in the same process after the figures above: the batched "
                      "matmuls over gathered slots, layer by layer (graphs captured then)"
                      + (", the kernel that reads the pool in place, layer by layer," if "kernel_layers" in ab else "")
                      + " and the served form (timed again after them). Engine call p50 / graph replay p50, ms:", "",
                      *table(["batch", *(DECODE_FORMS[f] for f in forms)],
                             [[b, *(cell(ab[f][b]) for f in forms)] for b in ab["matmuls"]]), ""]
        g = eng["host_gap"]
        lines += [f"Host gap: the real Scheduler in-process (no-op emit), {g['concurrency']} requests of "
                  f"{PROMPT_LEN}+{OUTPUT_TOKENS} tokens, {g['steps']} decode steps at full batch: wall per step p50 "
                  f"{fmt(g['step_wall_ms']['p50_ms'], 3)} ms (p99 {fmt(g['step_wall_ms']['p99_ms'], 3)}) against "
                  f"{fmt(g['gpu_step_p50_ms'], 3)} ms for the step alone ({g['gpu_step_is']}): **the device waits "
                  f"{fmt(g['host_gap_ms'], 3)} ms per step** for sampling, detokenizing, emitting and scheduling; the "
                  f"engine call alone is {fmt(g['engine_call_p50_ms'], 3)} ms. In-process throughput "
                  f"{fmt(g['tokens_per_s'], 0)} tokens/s, prefill included.", ""]
        g1 = eng.get("host_gap_b1")
        if g1:
            lines += [f"The same with one stream: wall per step p50 {fmt(g1['step_wall_ms']['p50_ms'], 3)} ms against "
                      f"{fmt(g1['gpu_step_p50_ms'], 3)} ms for the step alone: the device waits "
                      f"{fmt(g1['host_gap_ms'], 3)} ms per step for the host. Concurrency 1's ITL through Triton cannot be "
                      "below this wall per step.", ""]
        mem = eng["memory"]
        rows = [["weights", f"{mem['weights_bytes'] / 2**20:,.0f}"], ["KV pool (declared)", f"{mem['kv_bytes'] / 2**20:,.0f}"]]
        if "max_reserved_bytes" in mem:
            rows += [["the rest, peak allocated", f"{mem['rest_allocated_bytes'] / 2**20:,.0f}"],
                     ["the rest, peak reserved", f"{mem['rest_reserved_bytes'] / 2**20:,.0f}"],
                     ["peak allocated / reserved", f"{mem['max_allocated_bytes'] / 2**20:,.0f} / "
                                                   f"{mem['max_reserved_bytes'] / 2**20:,.0f}"]]
        lines += ["GPU memory of the engine (PyTorch's counters, after every bucket and the scheduler ran; the "
                  "CUDA context is not included):", "", *table(["what", "MiB"], rows), ""]
        if mem.get("stages"):
            lines += ["By stage (allocated beyond what was allocated before the load; reserved in all; inactive split: "
                      "reserved, free, and cut up by earlier allocations):", "",
                      *table(["stage", "allocated MiB", "reserved MiB", "inactive split MiB"],
                             [[k.replace("_", " "), f"{r['allocated_bytes'] / 2**20:,.0f}",
                               f"{r['reserved_bytes'] / 2**20:,.0f}",
                               f"{r['inactive_split_bytes'] / 2**20:,.0f}" if "inactive_split_bytes" in r else "-"]
                              for k, r in mem["stages"].items()]), ""]
        gr = eng["greedy"]
        rest = (f"; the others first differ at tokens {gr['first_divergence']} (median "
                f"{fmt(gr['median_first_divergence'], 1)})" if gr["first_divergence"] else "")
        lines += [f"Greedy against HF `generate` (same weights, {eng['dtype']}, default cache, batches of prompts; "
                  f"the engine through the Scheduler): {gr['identical']}/{gr['prompts']} prompts identical over the "
                  f"first {gr['tokens']} tokens{rest}.", ""]
    if tri:
        fs = tri["first_vs_steady"]
        lines += ["## Through Triton (gRPC streaming)", "",
                  f"- server start-up, process start to ready (every profile warm): {tri['startup_s']:.1f} s",
                  f"- the first request after ready: TTFT {fmt(fs['first']['ttft_ms'])} ms, total "
                  f"{fmt(fs['first']['e2e_ms'])} ms; the same request again ({len(fs['steady'])} times), median: "
                  f"TTFT {fmt(fs['steady_ttft_p50_ms'])} ms, total {fmt(fs['steady_e2e_p50_ms'])} ms",
                  f"- GPU memory in use after the sweep (nvidia-smi, whole GPU): "
                  f"{fmt((tri['memory_after_sweep'].get('gpu_used_bytes') or 0) / 2**20, 0, ' MiB') if tri['memory_after_sweep'].get('gpu_used_bytes') else 'not measured'}; "
                  f"server host RSS {fmt((tri['memory_after_sweep'].get('host_rss_bytes') or 0) / 2**20, 0, ' MiB')}", "",
                  "By concurrency: `client/generate.py` and perf_analyzer (an outside client) side by side, ms; "
                  "HF static-cache tokens/s at the same batch, where measured.", "",
                  *table(["conc", "client TTFT p50", "p99", "client ITL p50", "p99", "client tok/s", "errors/requests",
                          "perf_analyzer TTFT p50", "p99", "perf_analyzer ITL p50", "p99", "perf_analyzer tok/s",
                          "HF static tok/s"], sweep_rows(tri, anchor)), ""]
        runs = triton_builds(state)
        if len(runs) > 1:
            levels = [c for c in tri["client"] if all(c in t.get("client", {}) for t in runs)]

            def cells(conc: str, metric: str, stat: str | None, digits: int) -> list[str]:
                values = [client_value(t, conc, metric, stat) for t in runs]
                if any(v is None for v in values):
                    return ["-"] * (len(runs) + 2)
                return [*(fmt(v, digits) for v in values), fmt(float(np.median(values)), digits), spread(values)]

            names = [f"build {i + 1}" for i in range(len(runs))]
            lines += [f"The same Triton phase on {len(runs)} fresh builds (each its own `make build` and its own "
                      "server), `client/generate.py`; the targets take the median:", "",
                      *table(["conc", "figure", *names, "median", "spread"],
                             [[c, label, *cells(c, *figure)] for c in levels for label, figure in (
                                 ("tok/s", ("output_tokens_per_s", None, 0)), ("ITL p50 ms", ("itl", "p50_ms", 3)),
                                 ("ITL p99 ms", ("itl", "p99_ms", 3)), ("TTFT p50 ms", ("ttft", "p50_ms", 2)))]),
                      "", *table(["", *names], [["server start-up s", *(fmt(t.get("startup_s"), 1) for t in runs)]]),
                      ""]
        split = {c: r["scheduler"] for c, r in tri["client"].items() if r.get("scheduler")}
        if split:
            known = next(iter(split.values()))["ms_per_step"]
            parts = [p for p in ("iteration", "launch", "inputs", "step", "sample", "wait", "emit", "prefill", "host")
                     if p in known]
            counted = all("responses_per_step" in r for r in split.values())
            in_process = [g for g in ((eng or {}).get("host_gap"), (eng or {}).get("host_gap_b1"))
                          if g and (per := g.get("scheduler_ms_per_step")) and set(parts) - {"host"} <= set(per)]
            lines += ["The server's scheduler thread during each `client/generate.py` run, ms per decode step (its "
                      "`llm_generate_scheduler_seconds_total` counters over the run's decode steps): the whole "
                      "iteration; enqueueing the step and its sampling ("
                      + ("launch" if "launch" in known else "inputs: the rows' input tokens; step: the engine call; "
                         "sample: sampling and the tokens' copy to the host")
                      + "); waiting for a launched step's tokens, the GPU's share (wait); sending responses, a "
                      "blocking round trip each (emit); prefill chunks; and the rest, the host's own work (host).", "",
                      *table(["conc", "rows per step", *(["responses per step", "ms per response"] if counted else []),
                              *parts],
                             [[c, fmt(r["rows_per_step"], 1),
                               *([fmt(r["responses_per_step"], 1),
                                  fmt(r["ms_per_step"]["emit"] / r["responses_per_step"], 3)] if counted else []),
                               *(fmt(r["ms_per_step"][p], 3) for p in parts)] for c, r in split.items()]
                             + [[f"{g['concurrency']}, in-process", str(g["concurrency"]), *(["-", "-"] if counted else []),
                                 *(fmt(per[p], 3) for p in parts)]
                                for g in in_process for per in (with_host(g["scheduler_ms_per_step"]),)]), ""]
            if in_process:
                lines += ["The in-process rows are the engine phase's host-gap runs (the same Scheduler, a no-op emit, "
                          "every request admitted at once).", ""]
        lines += prefill_steps_table(tri.get("client", {}))
    if load:
        lines += ["## Load run with cancellations", "",
                  f"Concurrency {load['concurrency']} for {load['wall_s']:.0f} s, every 10th request cancelled "
                  f"(stream stopped with cancel_requests) after 2-8 tokens: {load['requests']} requests, "
                  f"{load['completed']} completed, {load['cancelled']} cancelled, {load['errors']} errors; "
                  f"{fmt(load['output_tokens_per_s'], 0)} output tokens/s; TTFT p50 {fmt(load['ttft']['p50_ms'])} ms.",
                  *(f"- error: {e}" for e in load.get("error_samples", [])), "",
                  *table(["reading", "start", "end"],
                         [[k, *(fmt((load[w].get(key) or 0) / 2**20, 0, " MiB") if load[w].get(key) else "-"
                                for w in ("memory_start", "memory_end"))]
                          for k, key in (("server host RSS (tree)", "host_rss_bytes"), ("GPU used", "gpu_used_bytes"))]),
                  "", f"Gauges at the end: {load['gauges_end']}", ""]
    stream = state.get("stream") or {}
    variants = stream.get("variants") or {f"stream_interval={k}": r for k, r in stream.get("intervals", {}).items()}
    if variants:  # ("intervals": the first runs of the phase, before it took other parameters)
        c = str(stream["concurrency"])
        runs = {"the build's config.pbtxt": (tri or {}).get("client", {}).get(c), **variants}
        def split(r: dict) -> list[str]:  # the scheduler thread per decode step (absent in older states)
            sp = r.get("scheduler") or {}
            per = sp.get("ms_per_step") or {}
            return [fmt(per.get("iteration")), fmt(per.get("emit")), fmt(sp.get("responses_per_step"), 1)]

        rows = [[k, fmt(r["output_tokens_per_s"], 0), fmt(r["ttft"]["p50_ms"]), fmt(r["ttft"]["p99_ms"]),
                 fmt(r["itl"]["p50_ms"]), fmt(r["itl"]["p99_ms"]), f"{r['errors']}/{r['count']}", *split(r),
                 "stream phase" if k in variants else "triton phase"]
                for k, r in runs.items() if r and r.get("ttft")]
        lines += [f"## How responses are sent: an A/B at concurrency {c}", "",
                  "`stream_interval` in `config.pbtxt`: a request's first token is sent alone, then one response per "
                  "that many tokens; the rest leaves with the final response. `send_threads`: that many threads send "
                  "the responses instead of the scheduler thread, tokens that pile up for a request going out in one "
                  "response. `send_budget_ms`: the most a step spends sending streamed tokens; the streams served "
                  "least recently go first, the others keep their tokens for a later response. `cancel_check_ms`: how "
                  "often the watcher thread asks the server whether each request was cancelled (a round trip each). "
                  "`decode_steps`: decode steps launched per scheduler iteration before their tokens are taken. "
                  "`graph_greedy`: 1, a greedy step's tokens are chosen inside its captured graph; 0, by sampling "
                  "its logits after it. "
                  "Step, emit and responses: the scheduler thread's ms per decode step, its part sending, and "
                  "responses per step. A fresh server per "
                  "variant, `client/generate.py` over gRPC streaming; its ITL is per "
                  "token (a response's gap divided over the tokens it carries). The first row is the triton phase's, "
                  "with the values the build wrote into `config.pbtxt` (its server log names them).", "",
                  *table(["variant", "tok/s", "TTFT p50", "p99", "ITL p50", "p99", "errors/requests", "step",
                          "emit", "responses", "from"], rows),
                  *(f"- {k}: {r['error']}" for k, r in variants.items() if r.get("error")), ""]
        for other in sorted({c for r in variants.values() for c in r.get("also", {})}, key=int):
            rows = [[k, fmt(r["output_tokens_per_s"], 0), fmt(r["ttft"]["p50_ms"]), fmt(r["ttft"]["p99_ms"]),
                     fmt(r["itl"]["p50_ms"]), fmt(r["itl"]["p99_ms"]), f"{r['errors']}/{r['count']}", *split(r)]
                    for k, r in ((k, v.get("also", {}).get(other)) for k, v in variants.items()) if r and r.get("ttft")]
            lines += [f"The same servers at concurrency {other}, run before the row above:", "",
                      *table(["variant", "tok/s", "TTFT p50", "p99", "ITL p50", "p99", "errors/requests", "step",
                              "emit", "responses"], rows), ""]
    if anchor and anchor.get("batches"):
        rows = []
        for b, r in sorted(anchor["batches"].items(), key=lambda kv: int(kv[0])):
            bucket = (eng or {}).get("decode", {}).get(b)
            rows.append([b, fmt(r["per_token_ms"], 3), fmt(r["tokens_per_s"], 0), f"{r['first_call_s']:.1f}",
                         fmt(bucket["call_ms"]["p50_ms"], 3) if bucket else "-"])
        lines += ["## Anchor: HF `generate`, static cache (compiles itself), in-process", "",
                  f"Time per decoded token from the difference between {r['long']} and {r['short']} new tokens "
                  f"(medians of {len(r['long_s'])}), {PROMPT_LEN}-token prompts, greedy.", "",
                  *table(["batch", "ms per token", "tokens/s", "first call s (compile)", "engine decode step ms"],
                         rows), ""]
    return "\n".join(lines) + "\n"


def plot(state: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tri, anchor = state.get("triton") or {}, state.get("anchor") or {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = {"client/generate.py": tri.get("client", {}),
              "perf_analyzer": {c: r for c, r in tri.get("perf_analyzer", {}).items() if "ttft" in r}}
    for label, data in series.items():
        if not data:
            continue
        cs = sorted(data, key=int)
        x = [int(c) for c in cs]
        axes[0].plot(x, [data[c]["ttft"]["p50_ms"] for c in cs], "o-", label=f"{label} p50")
        axes[1].plot(x, [data[c]["itl"]["p50_ms"] for c in cs], "o-", label=f"{label} p50")
        axes[1].plot(x, [data[c]["itl"]["p99_ms"] for c in cs], "s--", label=f"{label} p99")
        axes[2].plot(x, [data[c]["output_tokens_per_s"] for c in cs], "o-", label=label)
    hf = anchor.get("batches", {})
    if hf:
        bs = sorted(hf, key=int)
        axes[2].plot([int(b) for b in bs], [hf[b]["tokens_per_s"] for b in bs], "^:", label="HF generate, static cache")
    levels = sorted({int(c) for c in tri.get("client", {})} | {int(b) for b in hf})
    for ax, title, ylabel in ((axes[0], "TTFT", "ms"), (axes[1], "inter-token latency", "ms"),
                              (axes[2], "output throughput", "tokens/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency (batch for HF)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    env = state["env"]
    fig.suptitle(f"{env['gpu']}: generate, {env['manifest']['model']} {env['manifest']['dtype']}, "
                 f"{PROMPT_LEN}-token prompts, {OUTPUT_TOKENS} output tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(state: dict, out_dir: Path) -> Path:
    stem = out_dir / f"{state['env']['date']}-{slug(state['env']['gpu'])}-generate"
    out_dir.mkdir(parents=True, exist_ok=True)
    md = report(state)
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(state, indent=1) + "\n")
    try:
        plot(state, stem.with_suffix(".png"))
    except ImportError:
        print("matplotlib missing: no plot", flush=True)
    print(md)
    return stem


# --- main ------------------------------------------------------------------------

def state_path(a) -> Path:
    if a.state:
        return a.state
    # In bench/tmp (git-ignored), not beside the results: each device call copies the tracked tree over
    # the machine's, so a state file under bench/results would be reset between the phases' calls.
    return Path("bench/tmp") / f"{datetime.date.today().isoformat()}-{slug(gpu_name(a.device))}-generate-state.json"


def resolve(a) -> None:
    """Settings left unset take the full run's values, or --quick's."""
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if len(a.anchor_lengths) != 2 or a.anchor_lengths[0] <= a.anchor_lengths[1]:
        raise SystemExit(f"--anchor-lengths {a.anchor_lengths} must be two lengths, the longer first (e.g. 72,8)")


def run_all(a, argv: list[str]) -> int:
    """Every phase in its own process (the anchor's compiled HF model must not share the server's GPU time)."""
    failed = []
    for phase in PHASES:
        cmd = [sys.executable, "-m", "bench.generate_bench", *argv, "--phase", phase]
        print(f"\n=== phase {phase}: {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(phase)
    return len(failed)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="Benchmark the generate model: engine, Triton, load, HF anchor.")
    p.add_argument("--phase", choices=(*PHASES, "report", "all"), default="all",
                   help="one phase (state is saved between phases), the report from saved state, or all in turn")
    p.add_argument("--model", default="gemma-3-1b", help="the model the generate build must hold (preset or HF dir)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="the device the build serves on")
    p.add_argument("--quick", action="store_true", help="small counts for a CPU smoke run (explicit flags win)")
    p.add_argument("--repo", type=Path, default=Path("model_repository"), help="the repository holding generate/")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="where results and state go")
    p.add_argument("--state", type=Path, help="state file (default bench/tmp/<date>-<gpu>-generate-state.json)")
    p.add_argument("--note", action="append", default=[], help="a remark kept in the report (repeatable)")
    p.add_argument("--merge", action="append", default=[], type=Path,
                   help="another state file whose phases join this one's (a phase run with its own --state)")
    p.add_argument("--other-build", action="append", default=[], type=Path,
                   help="the state of another fresh build's engine phase: the report gives the spread over builds")
    eng = p.add_argument_group("engine phase")
    eng.add_argument("--decode-iters", type=int, help="timed decode steps per bucket (full: 200)")
    eng.add_argument("--decode-warmup", type=int, help="untimed steps per bucket before timing (full: 20)")
    eng.add_argument("--decode-context", type=int, default=192, help="positions already in each slot when decoding")
    eng.add_argument("--prefill-iters", type=int, help="timed prefills per length bucket (full: 50)")
    eng.add_argument("--gap-rounds", type=int, help="full-batch scheduler runs for the host gap (full: 3)")
    eng.add_argument("--correctness-n", type=int, help="random prompts compared with HF generate (full: 100)")
    eng.add_argument("--correctness-tokens", type=int, default=32, help="greedy tokens compared per prompt")
    eng.add_argument("--hf-batch", type=int, help="prompts per HF generate call in the comparison (full: 25)")
    tri = p.add_argument_group("triton and load phases")
    tri.add_argument("--concurrency", type=ints, help="concurrency levels (full: 1,8,32,64)")
    tri.add_argument("--sweep-seconds", type=float, help="client/generate.py seconds per level (full: 25)")
    tri.add_argument("--sweep-requests", type=int, help="requests per client thread per level when no --sweep-seconds")
    tri.add_argument("--steady-repeats", type=int, help="repeats of the first request for the steady state (full: 5)")
    tri.add_argument("--perf-analyzer", type=Path, help="perf_analyzer binary (default: beside python, then PATH)")
    tri.add_argument("--perf-interval-ms", type=int, help="perf_analyzer --measurement-interval (full: 8000)")
    tri.add_argument("--load-seconds", type=float, help="length of the load run (full: 300)")
    tri.add_argument("--load-concurrency", type=int, help="streams in the load run (full: 64)")
    tri.add_argument("--server-pythonpath", type=Path,
                     help="a folder the server's backend stub imports first (numpy < 2 for BYTES outputs), through a venv "
                          "over this Python (the stub ignores PYTHONPATH)")
    tri.add_argument("--port-base", type=int, default=18700, help="HTTP port; gRPC and metrics take the next two")
    stm = p.add_argument_group("stream phase")
    stm.add_argument("--stream-intervals", type=lambda t: [] if t == "none" else ints(t),
                     help="stream_interval values, one server each (full: 4,8; none: only the --stream-variant ones)")
    stm.add_argument("--stream-variant", type=parse_variant, action="append", default=[],
                     help="more servers, each with these config parameters, e.g. send_threads=4,stream_interval=4 "
                          f"(repeatable; names: {', '.join(STREAM_PARAMS)})")
    stm.add_argument("--stream-concurrency", type=int, help="client/generate.py concurrency (full: 64)")
    stm.add_argument("--stream-also", type=ints, default=[],
                     help="other concurrencies each variant's server also serves, before the main one (e.g. 1)")
    anc = p.add_argument_group("anchor phase")
    anc.add_argument("--anchor-batches", type=ints, help="HF generate batch sizes (full: 1,16,64)")
    anc.add_argument("--anchor-lengths", type=ints, help="two generation lengths, long,short (full: 72,8)")
    anc.add_argument("--anchor-reps", type=int, help="timed calls per length (full: 3)")
    a = p.parse_args(argv)
    resolve(a)
    if a.phase == "all":
        rest = [x for i, x in enumerate(argv) if x != "--phase" and (i == 0 or argv[i - 1] != "--phase")
                and not x.startswith("--phase=")]
        failed = run_all(a, rest)
        main([*rest, "--phase", "report"])
        if failed:
            raise SystemExit(f"{failed} phase(s) failed; see the report")
        return
    if a.device == "cuda" and a.phase in ("engine", "anchor") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU here; on CPU run with --model tiny --device cpu")
    path = state_path(a)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(path.read_text()) if path.is_file() else {}
    if a.phase != "report":
        check_build(a)
        state["env"] = environment(a)
        state.setdefault("commands", {})[a.phase] = shlex.join(["python", "-m", "bench.generate_bench", *argv])
        state.setdefault("make", {})[a.phase] = os.environ.get("BENCH_VIA_MAKE")
        if a.server_pythonpath:
            state["server_pythonpath"] = str(a.server_pythonpath)
    state["notes"] = state.get("notes", []) + [n for n in a.note if n not in state.get("notes", [])]
    others = [json.loads(other.read_text()) for other in a.other_build]
    if others:  # other fresh builds' engine phases (and Triton phases, where run), each its own state: the spread
        state["other_builds"] = [o["engine"] for o in others]
        state["other_tritons"] = [o["triton"] for o in others if o.get("triton")]
    for other in a.merge:  # phases run in parallel elsewhere (another GPU of the host) with their own state
        done = json.loads(other.read_text())
        state.update({phase: done[phase] for phase in PHASES if phase in done})
        for key in ("commands", "make", "phase_wall_s", "errors"):
            state.setdefault(key, {}).update({k: v for k, v in done.get(key, {}).items() if k in PHASES})
    path.write_text(json.dumps(state))
    error = None
    if a.phase in PHASES:
        phase = {"engine": phase_engine, "triton": phase_triton, "load": phase_load, "anchor": phase_anchor,
                 "stream": phase_stream}[a.phase]
        state.setdefault("errors", {}).pop(a.phase, None)
        t0 = time.perf_counter()
        try:
            state[a.phase] = phase(a, state)
        except Exception as e:  # keep what other phases measured: report it and name the failure
            traceback.print_exc()
            error = state["errors"][a.phase] = f"{type(e).__name__}: {e}"
            if a.phase != "anchor":  # the anchor keeps the batch sizes measured in earlier calls
                state.pop(a.phase, None)
        state.setdefault("phase_wall_s", {})[a.phase] = time.perf_counter() - t0
        path.write_text(json.dumps(state))
    if "env" not in state:
        raise SystemExit(f"no saved state at {path}: run a phase first")
    stem = write_report(state, a.out_dir)
    print(json.dumps({"results": f"{stem}.md", "state": str(path), "phase": a.phase,
                      "phases_done": [k for k in PHASES if state.get(k)], "errors": state.get("errors", {}),
                      "targets": {r[0]: f"{r[2]}: {r[1]}" for r in targets(state)}}))
    if error:
        raise SystemExit(f"the {a.phase} phase failed ({error})")


if __name__ == "__main__":
    main()
