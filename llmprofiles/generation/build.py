"""Build the ``generate`` model: weights once, a tokenizer, the step profiles, config.pbtxt.

The profiles come from the one declaration (``profiles/sets.py``: ``GENERATE``),
with build-time overrides, and are written to the manifest, where model.py reads
them. Skips the work when nothing it depends on changed.

Run (``make build`` calls it through build/build_generate.py)::

    python -m llmprofiles.generation.build --model tiny --out model_repository/generate --slots 4
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from llmprofiles import models
from llmprofiles.build import DTYPES, MODEL_CONFIG, WEIGHTS, built_already, clear_version_dir, source_fingerprint, step
from llmprofiles.generation import tokenizer as tok
from llmprofiles.generation.forward import ModelShape
from llmprofiles.manifest import sha256_file, sha256_json, write_manifest
from llmprofiles.profiles.generation import GenerationSpec, parse_buckets
from llmprofiles.profiles.sets import generate_spec

log = logging.getLogger(__name__)

RUNTIME = "kv-portable"
# How often running sequences are asked whether their client cancelled (each ask is a round trip to the server,
# through the same stub-to-server path as every response: 64 streams every 5 ms made 12,800 a second).
CANCEL_CHECK_MS = 20
# Threads sending responses off the scheduler thread (llmprofiles.serving.pump); 0 sends from the scheduler
# thread. 0 by default: on the CPU machine the pump raised TTFT p50 from 24 to 80-110 ms at 8 streams
# (requests waited longer for admission; cause not found), with tokens/s unchanged. To be measured on a GPU.
SEND_THREADS = 0
# Tokens per streamed response after the first (llmprofiles.serving.pump.StreamInterval); 1 = every token.
STREAM_INTERVAL = 1
# The most the scheduler spends per step sending streamed tokens (Scheduler.send_budget_s); 0 = no limit.
# On the H200 at 64 streams (2026-11-30, session 9, --phase stream): 6,755 tokens/s and ITL p99 13.3 ms with 2,
# against 1,956 tokens/s and 42.5 ms with none (and 5,749 / 15.9 ms with stream_interval 8). Session 12, side by
# side in one call (bench/results/2026-11-30-session12-check/): 16,054 tokens/s, ITL p99 6.07 ms with 0.5 and
# CANCEL_CHECK_MS 20, against 11,696 and 8.17 ms with 2 and 5; TTFT p50 13.5 against 13.8 ms. Each response is a
# ~0.4 ms round trip whatever it carries, so under load fewer responses with more tokens each keep the steps
# going; the ITL per token follows the step. One stream sends one response per step (the first send of a step
# always goes), so every token still leaves as it is made.
SEND_BUDGET_MS = 0.5
# Decode steps the scheduler launches per iteration before it takes their tokens (Scheduler.decode_steps), on a
# GPU; a CPU runs each step before the host goes on, so one. On the H200 at 64 streams, side by side in one call
# (2026-11-30, session 13, bench/results/2026-11-30-session13-decode-steps/): 16,521 tokens/s with 1, 19,614 with 2,
# 17,021 with 4, 14,310 with 8; TTFT p50 13.1, 21.6, 43.8, 92.0 ms (a prompt's first token is taken with its
# iteration's steps). At one stream ITL p50 1.32 ms for each. That run's steps after an iteration's first waited
# for the GPU (one pinned input buffer per profile; now a ring of them). With the ring, in the run of record
# (bench/results/2026-11-30-nvidia-h200-generate.md): 18,335 tokens/s with 1, 19,968 with 2, 19,716 with 4.
DECODE_STEPS = {"cuda": 2, "cpu": 1}
# 1: a decode step whose rows all choose greedily takes their tokens from the step itself, chosen inside its captured
# graph (GenerationEngine.decode_greedy), so the scheduler launches no ban, argmax or copy of the logits after the
# replay; 0: sample_tensor over the step's logits, as for sampled rows. The same tokens either way (CPU and GPU
# tests). Built after session 15's run, where the H200 server at 64 streams was host-bound (the host waited 0.19 ms
# per step for the GPU) and sampling took 0.37 ms of the host's 2.74 ms per step. On the H200 at 64 streams (session
# 16, bench/results/2026-11-30-session16-run-of-record/; `--stream-variant graph_greedy=0`, not side by side: the
# off runs had a neighbour server on the other GPU) the host's sampling per step fell from 0.26-0.31 to 0.08 ms and
# its engine call from 0.41-0.48 to 0.32 ms; 26,664 and 26,075 tokens/s on, 23,946-25,063 off.
GRAPH_GREEDY = 1
# Programmatic dependent launch for the batch-1 decode step (--decode-pdl; forward.PDL_OPTIONS), off by default.
# One compile replayed in 1.17 and 1.27 ms against 1.39 without (bench/probes/decode_step.py, pdl_load.py: restored
# from the cache it kept 1.27-1.31), but the served steps of two fresh builds replayed in 1.93 and 1.52 ms
# (`make bench-generate`'s engine phase; H200, session 12): with coordinate descent, PDL compiles differ widely from
# one to the next, as llm's did (0.99 against 1.48 ms). The batch-1 step's best of several compiles (DECODE_TUNE_RUNS)
# is built for that, and not yet run with PDL.
DECODE_PDL = False
# A prompt's first chunk attending only to itself, compiled whole (--fresh-prefill; KVForward.fresh_prefill), on by
# default on CUDA. Served side by side on the H200 (x2 host, one fresh build of each, each build's Triton phase run
# twice on swapped GPUs; session 14, bench/results/2026-11-30-session14-fresh-prefill/): 21,613 and 21,084 tokens/s
# at 64 streams against 20,406 and 20,089 without; TTFT p50 at one stream 4.71 / 4.74 ms against 4.88 / 5.02. Its
# costs: about 90 s more build (its compile), and server start-up 71-86 s against 32-40 s (not yet explained).
# The probe (bench/probes/prefill_step.py, session 13): prefill_128's graph replay 1.95 ms against 2.45 through the
# pool; logits within 0.009 of the pool path's in fp16.
FRESH_PREFILL = True
# Prompts per prefill step on CUDA when --prefill-batches is not given (the model's spec declares 1): whole prompts of
# one length bucket prefilled together (Scheduler._batchable). Served on the H200 (x2 host, one tuned fresh build of
# each, one Triton run each on different GPUs; session 15, bench/results/2026-11-30-session15-prefill-batches/): at 64
# streams 21,944 tokens/s against 19,943 with one prompt per step, ITL p50 2.15 against 2.70 ms, TTFT p99 73 against
# 169 ms; its costs: ITL p99 9.15 against 4.76 ms (a four-prompt step, 3.4 ms, between two decode steps), TTFT p50
# 35.5 against 20.1 ms, one more compile at build and server start-up 122 against 93 s (that compile is gone since
# session 16: forward.ANY_BATCH_FRESH; start-up 82-84 s in the run of record). 434 of its 463 prefill steps
# took four prompts: prompts prefilled together finish together and come back together. On a CPU a batch costs its
# prompts' sum, so one.
PREFILL_BATCHES = {"cuda": (1, 2, 4), "cpu": (1,)}
# Compiles of the batch-1 decode step at build on CUDA, the fastest kept (--decode-tune-runs; generation/tuning.py).
# On the H200 (session 15, a fresh build): attempts replayed in 1.515, 1.329 and 1.945 ms; the kept 1.329 served at
# 1.374, the engine phase's call 1.386 ms (two fresh builds of one compile each: 1.525 and 1.425, session 13). Run of
# record (session 16, two fresh builds): attempts 1.247 / 1.272 / 1.317 and 1.320 / 1.298 / 1.307 ms, engine calls
# 1.352 and 1.358 ms (spread 0.4%).
DECODE_TUNE_RUNS = 3
CODE = ["generation/build.py", "generation/tuning.py", "generation/forward.py", "generation/attention.py", "generation/mlp.py", "generation/tokenizer.py", "profiles/generation.py", "models.py"]

# Inputs and outputs carry the names TensorRT-LLM, vLLM and genai-perf clients already send and read.
INPUTS = (
    ("text_input", "TYPE_STRING"), ("input_ids", "TYPE_INT64", "-1"),
    ("max_tokens", "TYPE_INT32"), ("min_tokens", "TYPE_INT32"),
    ("stream", "TYPE_BOOL"), ("exclude_input_in_output", "TYPE_BOOL"),
    ("temperature", "TYPE_FP32"), ("top_k", "TYPE_INT32"), ("top_p", "TYPE_FP32"), ("seed", "TYPE_UINT64"),
    ("end_id", "TYPE_INT32"), ("sampling_parameters", "TYPE_STRING"),
    ("return_num_input_tokens", "TYPE_BOOL"), ("return_num_output_tokens", "TYPE_BOOL"),
)
OUTPUTS = (
    ("text_output", "TYPE_STRING", "-1"), ("output_ids", "TYPE_INT64", "-1"), ("finish_reason", "TYPE_STRING", "-1"),
    ("num_input_tokens", "TYPE_UINT32", "1"), ("num_output_tokens", "TYPE_UINT32", "1"),
)


def write_triton_config(model_dir: Path, device: torch.device, max_queue: int) -> None:
    """config.pbtxt of the decoupled generate model."""
    def rows(specs, optional):
        return ",\n".join(
            f'  {{ name: "{s[0]}", data_type: {s[1]}, dims: [ {s[2] if len(s) > 2 else "1"} ]'
            + (", optional: true" if optional else "") + " }" for s in specs)

    kind = "KIND_GPU" if device.type == "cuda" else "KIND_CPU"
    (model_dir / "config.pbtxt").write_text(f"""\
# Written by `make build` (llmprofiles.generation.build): do not edit.
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
{rows(INPUTS, optional=True)}
]
output [
{rows(OUTPUTS, optional=False)}
]
instance_group [ {{ count: 1, kind: {kind} }} ]
parameters [
  {{ key: "max_queue", value: {{ string_value: "{max_queue}" }} }},
  {{ key: "cancel_check_ms", value: {{ string_value: "{CANCEL_CHECK_MS}" }} }},
  {{ key: "send_threads", value: {{ string_value: "{SEND_THREADS}" }} }},
  {{ key: "stream_interval", value: {{ string_value: "{STREAM_INTERVAL}" }} }},
  {{ key: "send_budget_ms", value: {{ string_value: "{SEND_BUDGET_MS}" }} }},
  {{ key: "decode_steps", value: {{ string_value: "{DECODE_STEPS[device.type]}" }} }},
  {{ key: "graph_greedy", value: {{ string_value: "{GRAPH_GREEDY}" }} }}
]
""")


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The state dict with tied tensors stored once (the engine re-ties lm_head to the embedding)."""
    from safetensors.torch import save_file

    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def build_generate(source: str, spec: GenerationSpec, device: str, dtype: str, model_dir: Path,
                   max_queue: int, force: bool = False, decode_pdl: bool = False,
                   fresh_prefill: bool = FRESH_PREFILL, decode_tune_runs: int = DECODE_TUNE_RUNS) -> dict:
    """Build into ``model_dir``. ``decode_pdl``: compile the batch-1 decode step with programmatic dependent launch
    where its probe passes (off by default: see DECODE_PDL). ``fresh_prefill``: a prompt's first chunk attends
    only to itself, compiled whole, on CUDA (on by default: see FRESH_PREFILL). ``decode_tune_runs``: compiles of the
    batch-1 decode step on CUDA, the fastest kept (1: one, untuned; see DECODE_TUNE_RUNS)."""
    device_t = torch.device(device)
    version_dir = model_dir / "1"
    pkg = Path(__file__).parents[1]
    inputs = {"source": source_fingerprint(source), "generation": spec.to_dict(), "device": device_t.type,
              "dtype": dtype, "decode_pdl": decode_pdl, "fresh_prefill": fresh_prefill,
              "decode_tune_runs": decode_tune_runs if device_t.type == "cuda" else 1, "code": sha256_json({f: sha256_file(pkg / f) for f in CODE}),
              "versions": {"torch": torch.__version__, "python": sys.version.split()[0]}}
    inputs_hash = sha256_json(inputs)
    old = None if force else built_already(version_dir, inputs_hash)
    if old is not None:
        write_triton_config(model_dir, device_t, max_queue)
        return old
    profiles = spec.profiles()
    print(f"{model_dir.name}: building generate engine, {spec.slots} slots x {spec.max_context} context, "
          f"{len(profiles)} step profiles {list(profiles.names)}, model {source}, {dtype} on {device_t}")
    clear_version_dir(version_dir)
    with step("load model"):
        hf = models.load_model(source, DTYPES[dtype], "cpu")
    config = hf.config.to_dict()
    ModelShape.from_config(config)  # refuse an unsupported architecture now, not at serve time
    (version_dir / MODEL_CONFIG).write_text(hf.config.to_json_string())
    with step("save weights (one copy, shared by every step profile)"):
        save_weights(hf, version_dir / WEIGHTS)
    with step("tokenizer"):
        if source in models.PRESETS:
            files = tok.train_bpe(hf.config.vocab_size, version_dir, spec.max_context)
        else:
            files = tok.copy_tokenizer(Path(source), version_dir)
    # inputs_hash goes in last, with the build complete: a build cut short (in the CUDA warm-up, minutes) is not
    # "up to date" for the next one, which builds again instead of leaving the server to compile at start-up.
    fields = {"model": source, "runtime": RUNTIME, "generation": spec.to_dict(),
              "profiles": profiles.to_dict(), "device": device_t.type, "dtype": dtype,
              "vocab_size": hf.config.vocab_size, "versions": inputs["versions"]}
    if device_t.type == "cuda":
        from llmprofiles.generation.engine import check_decode_kernel

        with step("check the decode attention kernel against the batched matmuls"):
            fields["decode_attention"] = check_decode_kernel(hf, device_t)
        print(f"{model_dir.name}: decode attention: {fields['decode_attention']}")
        from llmprofiles.generation.engine import check_mlp_kernel

        with step("check the batch-1 matrix-vector kernels (MLP, q/k/v, output) against PyTorch, autotuning them"):
            fields["mlp_kernel"] = check_mlp_kernel(hf, device_t)
        print(f"{model_dir.name}: batch-1 matrix-vector kernels: {fields['mlp_kernel']}")
        fields["decode_pdl"] = False
        if decode_pdl:
            from llmprofiles.runtimes.compiled import pdl_works

            with step("probe programmatic dependent launch (the batch-1 decode step uses it where it works)"):
                fields["decode_pdl"] = bool(torch.cuda.get_device_capability(device_t)[0] >= 9 and pdl_works(device_t))
        print(f"{model_dir.name}: decode PDL: {fields['decode_pdl']}")
        fields["fresh_prefill"] = fresh_prefill
    artifacts = [MODEL_CONFIG, WEIGHTS, *files]
    manifest = write_manifest(version_dir, fields, artifacts)  # the engine loads from it; incomplete until the end
    write_triton_config(model_dir, device_t, max_queue)
    if device_t.type == "cuda":
        from llmprofiles.generation.engine import load_generation_engine

        engine = load_generation_engine(version_dir, device_t)
        tuning = None
        if decode_tune_runs > 1:
            with step(f"tune the batch-1 decode step: {decode_tune_runs} compiles from empty caches, keep the fastest"):
                tuning = tune_b1(engine, decode_tune_runs)
        tuned = tuning is not None and "winner" in tuning
        with step("compile the steps and capture every step profile once (fills the inductor cache)"):
            engine.warm_up(reuse_tuned=tuned)  # the rest tuned now, and saved
        if tuned:
            from llmprofiles.generation.tuning import served_b1_ms

            tuning["final_ms"] = final = served_b1_ms(engine)
            print(f"{model_dir.name}: batch-1 decode replay ms per attempt "
                  f"{[round(a['ms'], 4) if 'ms' in a else 'failed' for a in tuning['attempts']]}, kept attempt "
                  f"{tuning['winner'] + 1}; served {final:.4f}", flush=True)
            if abs(final - tuning["winner_ms"]) > 0.05 * tuning["winner_ms"]:
                log.warning("the built batch-1 decode step replays in %.4f ms, the kept attempt in %.4f ms: its kernels "
                            "may not have been reused", final, tuning["winner_ms"])
        if tuning:
            fields["decode_b1_tuning"] = tuning
    manifest = write_manifest(version_dir, {**fields, "inputs_hash": inputs_hash}, artifacts)
    print(f"{model_dir.name}: wrote {version_dir}/manifest.json (content {manifest['content_hash'][:12]})")
    return manifest


def tune_b1(engine, runs: int) -> dict:
    """The batch-1 decode step's best of ``runs`` compiles, kept in the inductor cache (generation/tuning.py); the
    tuning record, or why it failed (the build goes on with the warm-up's own compile)."""
    from llmprofiles.generation.tuning import keep, tune_decode_b1

    try:
        record, artifacts, configs = tune_decode_b1(engine, runs)
    except Exception as e:  # noqa: BLE001 - every attempt failed, or the private compile-cache API moved
        log.warning("tuning the batch-1 decode step failed, its compile is not tuned: %s", e)
        return {"runs": runs, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    keep(artifacts, configs)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help=f"a preset {sorted(models.PRESETS)} or a local Hugging Face model dir")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device the engine is served on")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto = float32 on CPU, float16 on CUDA")
    p.add_argument("--out", type=Path, required=True, help="Triton model folder, e.g. model_repository/generate")
    p.add_argument("--slots", type=int, help="KV-cache sequence slots (default: the model's declared spec)")
    p.add_argument("--max-context", type=int, help="positions per slot, prompt plus output")
    p.add_argument("--decode-buckets", type=parse_buckets, help="decode batch buckets, e.g. 1,2,4,8")
    p.add_argument("--prefill-buckets", type=parse_buckets, help="prefill length buckets, e.g. 64,128,256")
    p.add_argument("--prefill-batches", type=parse_buckets,
                   help="prompts per prefill step, from 1, e.g. 1,2,4 (default: 1,2,4 on CUDA, 1 on CPU; "
                        "see PREFILL_BATCHES)")
    p.add_argument("--max-queue", type=int, help="requests that may wait for a slot (default: 4 x slots)")
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest says up to date")
    p.add_argument("--decode-pdl", action=argparse.BooleanOptionalAction, default=DECODE_PDL,
                   help="batch-1 decode step with programmatic dependent launch (CUDA, compute capability 9+)")
    p.add_argument("--decode-tune-runs", type=int, default=DECODE_TUNE_RUNS,
                   help="compiles of the batch-1 decode step on CUDA, the fastest kept (1 = one compile, untuned)")
    p.add_argument("--fresh-prefill", action=argparse.BooleanOptionalAction, default=FRESH_PREFILL,
                   help="a prompt's first chunk attends only to itself, compiled whole (CUDA)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dtype = a.dtype if a.dtype != "auto" else ("float16" if a.device == "cuda" else "float32")
    try:
        spec = generate_spec(a.model).replace(slots=a.slots, max_context=a.max_context,
                                              decode_buckets=a.decode_buckets, prefill_buckets=a.prefill_buckets,
                                              prefill_batches=a.prefill_batches)
        if a.prefill_batches is None:  # the device's default, within the slots
            spec = spec.replace(prefill_batches=tuple(b for b in PREFILL_BATCHES[a.device] if b <= spec.slots))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"generate spec: {e}") from None
    max_queue = a.max_queue if a.max_queue is not None else 4 * spec.slots
    if max_queue < 0:
        raise SystemExit(f"--max-queue {max_queue} must be >= 0")
    if a.decode_tune_runs < 1:
        raise SystemExit(f"--decode-tune-runs {a.decode_tune_runs}: give at least 1 (1 compiles the step once)")
    build_generate(a.model, spec, a.device, dtype, a.out, max_queue, a.force, a.decode_pdl, a.fresh_prefill,
                   a.decode_tune_runs)


if __name__ == "__main__":
    sys.exit(main())
