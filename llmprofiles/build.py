"""Build a multi-profile engine into a Triton model version folder.

Exports the model once over the union envelope of its profiles, then lets the
chosen runtime specialise every profile, and writes the artifacts, a manifest
and the model's ``config.pbtxt``. Skips the work when nothing it depends on
changed.

Run (``make build`` calls it through build/build_engine.py)::

    python -m llmprofiles.build --model tiny --profile-set multi --out model_repository/llm
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from llmprofiles import models
from llmprofiles.export import BuildContext, export, unique_weights
from llmprofiles.manifest import EngineLoadError, read_manifest, sha256_file, sha256_json, write_manifest
from llmprofiles.profiles.sets import PROFILE_SETS
from llmprofiles.profiles.spec import ProfileSet
from llmprofiles.runtimes.load import build_runtime

log = logging.getLogger("llmprofiles.build")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RUNTIMES = ("aoti", "torch-compile", "tensorrt")
WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "model_config.json"


@contextmanager
def step(what: str) -> Iterator[None]:
    """Print a long step's start and its duration, so a build never looks stuck."""
    print(f"  .. {what}", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"  ok {what} ({time.perf_counter() - t0:.1f} s)", flush=True)


def source_fingerprint(source: str) -> dict:
    if source in models.PRESETS:
        return {"preset": source, "seed": models.SEED, "config": models.PRESETS[source].__dict__}
    path = Path(source)
    if not (path / "config.json").is_file():
        raise SystemExit(f"MODEL={source!r} is neither a preset {sorted(models.PRESETS)} nor a local HF dir with config.json")
    # Name, size and mtime of every file: cheap, and changes whenever weights are replaced.
    return {"dir": str(path.resolve()),
            "files": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir()) if f.is_file()}}


def code_fingerprint(runtime: str) -> str:
    pkg = Path(__file__).parent
    runtime_files = (["runtimes/tensorrt.py"] if runtime == "tensorrt" else
                     ["runtimes/compiled.py", "runtimes/aoti.py", "runtimes/weights.py", "runtimes/fusion.py"])
    files = ["build.py", "export.py", "models.py", "profiles/spec.py", "runtimes/load.py", *runtime_files]
    return sha256_json({f: sha256_file(pkg / f) for f in files})



def built_already(version_dir: Path, inputs_hash: str) -> dict | None:
    """The manifest in ``version_dir`` when it was built from exactly these inputs, else None."""
    try:
        old = read_manifest(version_dir)
    except EngineLoadError:
        return None
    if old.get("inputs_hash") != inputs_hash:
        return None
    print(f"{version_dir.parent.name}: up to date ({version_dir}/manifest.json, inputs {inputs_hash[:12]})")
    return old


def clear_version_dir(version_dir: Path) -> None:
    """Remove every build output of a model version, keeping its model.py."""
    for f in version_dir.glob("*"):
        if f.name != "model.py":
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    version_dir.mkdir(parents=True, exist_ok=True)

def write_triton_config(model_dir: Path, profiles: ProfileSet, dtype: torch.dtype, device: torch.device) -> None:
    """config.pbtxt, derived from the profile set and the build's device and dtype."""
    rank = len(profiles.envelope()["input_ids"].min)
    dims = ", ".join(["-1"] * rank)
    logits_type = "TYPE_FP32" if dtype == torch.float32 else {torch.float16: "TYPE_FP16", torch.bfloat16: "TYPE_BF16"}[dtype]
    kind = "KIND_GPU" if device.type == "cuda" else "KIND_CPU"
    (model_dir / "config.pbtxt").write_text(f"""\
# Written by `make build` (llmprofiles.build) from the profile set: do not edit.
backend: "python"
max_batch_size: 0
input [
  {{ name: "input_ids", data_type: TYPE_INT64, dims: [ {dims} ] }},
  {{ name: "position_ids", data_type: TYPE_INT64, dims: [ {dims} ], optional: true }}
]
output [
  {{ name: "logits", data_type: {logits_type}, dims: [ -1, -1 ] }},
  {{ name: "profile_index", data_type: TYPE_INT32, dims: [ 1 ] }}
]
instance_group [ {{ count: 1, kind: {kind} }} ]
parameters [
  {{ key: "profile_names", value: {{ string_value: "{','.join(profiles.names)}" }} }}
]
{warmup_config(profiles)}""")


def warmup_config(profiles: ProfileSet) -> str:
    """Triton's model_warmup: one zero request per profile at its opt, sent by the server before ready.

    They take the whole path of a client's request (server core, stub, model.py), so the first
    client after ready pays none of that path's first-call costs (session 7 measured the first decode
    on the H200 at 2.15x the steady state with model.py warmed from inside).
    """
    samples = []
    for i, name in enumerate(profiles.names):
        dims = ", ".join(str(d) for d in profiles.ranges(i)["input_ids"].opt)
        inputs = "".join(f"""
    inputs {{ key: "{n}", value: {{ data_type: TYPE_INT64, dims: [ {dims} ], zero_data: true }} }}"""
                         for n in ("input_ids", "position_ids"))
        samples.append(f"""  {{
    name: "profile {i} {name}"
    batch_size: 1{inputs}
  }}""")
    return "model_warmup [\n" + ",\n".join(samples) + "\n]\n"


def build(source: str, profile_set: str, runtime: str, device: str, dtype: str, model_dir: Path, force: bool = False,
          tune_runs: int | None = None) -> dict:
    """``tune_runs``: compiles per static profile on CUDA, the fastest kept (None: the runtime's default, compiled.DEFAULT_TUNE_RUNS)."""
    profiles = PROFILE_SETS[profile_set]
    device_t = torch.device(device)
    if tune_runs is not None and tune_runs < 1:
        raise SystemExit(f"--tune-runs {tune_runs}: give at least 1 (1 compiles each static profile once)")
    tuned = runtime == "torch-compile" and device_t.type == "cuda"
    if runtime == "aoti" and device_t.type == "cuda":
        # AOTInductor CUDA packages segfault at load on the H200 machine (see README).
        raise SystemExit("RUNTIME=aoti is CPU-only here; use RUNTIME=torch-compile on CUDA")
    if runtime == "tensorrt":  # fail before minutes of loading and exporting
        from llmprofiles.runtimes.tensorrt import import_tensorrt, import_torch_tensorrt

        if device_t.type != "cuda":
            raise SystemExit("RUNTIME=tensorrt builds on a GPU only; use DEVICE=cuda")
        try:
            import_torch_tensorrt(), import_tensorrt()
        except EngineLoadError as e:
            raise SystemExit(str(e)) from None
    version_dir = model_dir / "1"
    inputs = {
        "source": source_fingerprint(source), "profiles": profiles.to_dict(), "runtime": runtime,
        "device": device_t.type, "dtype": dtype, "code": code_fingerprint(runtime),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    if tuned:  # only where tuning runs, so other builds keep their hashes
        from llmprofiles.runtimes.compiled import DEFAULT_TUNE_RUNS

        inputs["tune_runs"] = tune_runs or DEFAULT_TUNE_RUNS
    inputs_hash = sha256_json(inputs)
    old = None if force else built_already(version_dir, inputs_hash)
    if old is not None:
        write_triton_config(model_dir, profiles, DTYPES[dtype], device_t)
        return old
    print(f"{model_dir.name}: building {runtime} engine, {len(profiles)} profile(s) {list(profiles.names)}, "
          f"model {source}, {dtype} on {device_t}")
    clear_version_dir(version_dir)

    with step("load model"):
        hf = models.load_model(source, DTYPES[dtype], device_t)
        wrapper = models.LastTokenLM(hf)
    with step(f"export over the union envelope {[r.describe() for r in profiles.envelope().values()][0]}"):
        exported = export(wrapper, profiles.envelope(), hf.config.vocab_size, device_t)
    (version_dir / MODEL_CONFIG).write_text(hf.config.to_json_string())
    aliases, saved = {}, [MODEL_CONFIG]
    if runtime != "tensorrt":  # a TensorRT engine carries its own weights
        with step("save weights (one copy, shared by every profile)"):
            from safetensors.torch import save_file

            tensors, aliases = unique_weights(exported)
            save_file({k: v.cpu() for k, v in tensors.items()}, str(version_dir / WEIGHTS))
            saved.append(WEIGHTS)
    ctx = BuildContext(wrapper, exported, profiles, version_dir, DTYPES[dtype], device_t, runtime)
    if tuned:
        from llmprofiles.runtimes.compiled import build_compiled

        artifacts, extra = build_compiled(ctx, step, tune_runs=inputs["tune_runs"])
    else:
        artifacts, extra = build_runtime(ctx, step)
    manifest = write_manifest(version_dir, {
        "inputs_hash": inputs_hash, "model": source, "profile_set": profile_set, "profiles": profiles.to_dict(),
        "runtime": runtime, "device": device_t.type, "dtype": dtype, "vocab_size": hf.config.vocab_size,
        "versions": inputs["versions"], "weight_aliases": aliases, **extra,
    }, [*saved, *artifacts])
    write_triton_config(model_dir, profiles, DTYPES[dtype], device_t)
    print(f"{model_dir.name}: wrote {version_dir}/manifest.json (content {manifest['content_hash'][:12]})")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help=f"a preset {sorted(models.PRESETS)} or a local Hugging Face model dir")
    p.add_argument("--profile-set", default="multi", choices=sorted(PROFILE_SETS), help="which declared profile set to build")
    p.add_argument("--runtime", default="auto", choices=("auto", *RUNTIMES),
                   help="engine runtime; auto = aoti on CPU, torch-compile on CUDA")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device the engine is built for and served on")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto = float32 on CPU, float16 on CUDA")
    p.add_argument("--out", type=Path, required=True, help="Triton model folder, e.g. model_repository/llm")
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest says up to date")
    p.add_argument("--tune-runs", type=int, default=None,
                   help="torch-compile on CUDA: compile each static profile (decode) this many times, each from an "
                        "empty compile cache, and keep the one whose CUDA graph replays fastest (default 3)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runtime = a.runtime if a.runtime != "auto" else ("torch-compile" if a.device == "cuda" else "aoti")
    dtype = a.dtype if a.dtype != "auto" else ("float16" if a.device == "cuda" else "float32")
    build(a.model, a.profile_set, runtime, a.device, dtype, a.out, a.force, a.tune_runs)


if __name__ == "__main__":
    sys.exit(main())
