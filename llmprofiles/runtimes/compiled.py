"""The torch.compile runtime (CUDA; also runs on CPU): one compile per profile.

Every profile is a ``torch.compile`` of the same module, so the weights exist
once. A fully static profile (decode, seq == 1) is compiled for that exact shape
(matmuls autotuned for it) and replayed as a CUDA graph, which removes
per-kernel host overhead; a dynamic profile is compiled for its range and warmed
at its opt. Before compiling, sibling projections (q/k/v, gate/up) are fused
into one GEMM each, single-token inputs (decode, and the last-token lm_head) are
computed as tuned reductions, and so is the attention of a single query token,
instead of an SDPA kernel (``fusion.py``). ``make build`` saves the compiler's
cache artifacts so serving starts warm. On CUDA the build compiles each static
profile several times, each from an empty compile cache, keeps the fastest graph
and saves its kernels (:func:`tune_static_profile`): autotuning picks differ
between compiles, and so did the decode time of two fresh builds (issue 12).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from llmprofiles import models
from llmprofiles.engine import Engine, copy_in
from llmprofiles.manifest import EngineLoadError, profiles_of
from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange
from llmprofiles.runtimes import fusion
from llmprofiles.runtimes.weights import load_weights

log = logging.getLogger(__name__)

COMPILE_CACHE = "compile_cache.bin"


# Dynamo settings while a profile is compiled (Dynamo traces on the first calls).
# Float attributes of the model (norm eps, embedding and attention scales) become
# constants: as symbolic floats they make Dynamo restart and trace the model twice.
# A warm gemma-3-1b prefill compile on CPU went from 74-80 s to 21-24 s (bench/NOTES.md).
# Calls after the warm-up need no patch (entering one costs ~40 us): they hit the
# compiled graphs.
COMPILE_CONFIG = {"specialize_float": True}


class StaticGraphRunner:
    """A static-shape profile compiled for its exact shape and replayed as a CUDA graph."""

    def __init__(self, fn: Callable, shape: tuple[int, ...], device: torch.device):
        self.ids = torch.zeros(shape, dtype=torch.int64, device=device)
        self.pos = models.default_position_ids(self.ids).contiguous()
        self.graph = None
        if device.type == "cuda":
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream), torch.no_grad(), torch._dynamo.config.patch(**COMPILE_CONFIG):
                for _ in range(3):  # compile, autotune and settle allocations before capture
                    fn(self.ids, self.pos)
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.out = fn(self.ids, self.pos)
        self.fn = fn

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            with torch.no_grad():
                return self.fn(input_ids, position_ids)
        copy_in(self.ids, input_ids)  # host or device tensors, any layout: straight into the graph's inputs
        copy_in(self.pos, position_ids)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites self.out


def compiled_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the one layout every compiled graph sees: its own storage, row-major.

    Dynamo guards on how an input is laid out, not only on its shape. Warmed with
    ``default_position_ids`` (an expanded view of an arange), the prefill graph was
    guarded on ``position_ids._base.size()[0]``; a request whose position_ids were
    no view (sent by the client, or copied to the GPU by ``.to``) failed that guard
    ("'NoneType' object has no attribute 'size'") and recompiled on the first request
    (~30 s for gemma-3-1b on the H200, issue 12). A stride-0 batch dim (numpy's
    ``arange(n)[None, :]``) fails the stride guards the same way. Copying such inputs
    (a few hundred int64s) makes warm-up and requests hit the same guards.
    """
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    if t._base is None and t.stride() == tuple(reversed(strides)):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


class DynamicRunner:
    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(input_ids, position_ids)


# A static profile is tuned for its one shape: matmul templates (max_autotune) and
# the launch configs of reductions and pointwise kernels (coordinate descent), which
# is where the single-token projections go (fusion.use_gemv). The CUDA graph is
# captured by StaticGraphRunner, not by inductor. Measured variants: bench/NOTES.md.
STATIC_OPTIONS = {"max_autotune": True, "coordinate_descent_tuning": True, "triton.cudagraphs": False}

# Options a static profile's build-time tuning tries over STATIC_OPTIONS: attempt k compiles with
# TUNE_VARIANTS[k % len(TUNE_VARIANTS)], the fastest replay wins, and the winner's options are kept in
# the manifest (decode_tuning.<profile>.options) so every later compile of that profile uses them.
# Programmatic dependent launch (Hopper and later): each kernel lets the next one start launching once
# its own loads are done, and the next one waits for it (griddepcontrol) before reading what it wrote.
# The decode graph is 212 small kernels with a launch ramp each (issue 12). Inductor leaves matmul
# templates without it. On the H200 the compile without PDL lost in each of seven fresh builds, by 15-28%
# to the kept PDL compile: 1.270 / 1.209 / 1.144 / 1.098 / 1.044 / 1.034 / 1.004 ms against
# 0.990 / 0.998 / 0.991 / 0.953 / 0.870 / 0.886 / 0.871 (bench/NOTES.md, sessions 9, 10, 19 and 20). Where
# PDL works it is therefore the only option set tried, and the defaults are the fallback. A PDL compile can
# come out slow too (1.479 and 1.196 ms in sessions 9 and 10), which is why DEFAULT_TUNE_RUNS is two.
PDL = {"triton.enable_pdl": True}
TUNE_VARIANTS = (PDL,)


def tune_variants(device: torch.device) -> tuple[dict[str, Any], ...]:
    """The option sets tried for ``device``: PDL where its probe (``pdl_probe``) passes, else the defaults."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return ({},)
    if not pdl_works(device):
        return ({},)
    return TUNE_VARIANTS


def pdl_works(device: torch.device, timeout_s: float = 120) -> bool:
    """Run ``llmprofiles.runtimes.pdl_probe`` on ``device`` in a child process (a kernel fault there
    cannot poison this process's CUDA context); True if it exits 0. Logs why not."""
    env = dict(os.environ)
    if device.index:  # the child sees only this GPU, as its device 0
        visible = env.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[device.index] if visible else str(device.index)
    try:
        done = subprocess.run([sys.executable, "-m", "llmprofiles.runtimes.pdl_probe"], capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        log.warning("PDL probe timed out after %.0f s: tuning without PDL", timeout_s)
        return False
    if done.returncode != 0:
        log.warning("PDL probe failed (exit %d): tuning without PDL: %s", done.returncode,
                    cut((done.stderr or done.stdout).strip()[-600:]))
        return False
    log.info("%s", done.stdout.strip())
    return True


def prepare(wrapper: torch.nn.Module) -> None:
    """The module changes every compile starts from (each pass leaves an already changed module alone). The gated
    MLPs are switched to generate's two MLP kernels for a single token, which only compiles made under
    ``fusion.mlp_kernels()`` take: the static profiles' (:class:`CompiledEngine`)."""
    fusion.fuse_projections(wrapper)
    fusion.use_gemv(wrapper)
    fusion.use_single_query_attention(wrapper.model)
    fusion.use_mlp_kernel(wrapper.model)


def compile_static(wrapper: torch.nn.Module, options: dict[str, Any] | None = None) -> Callable:
    """A static-shape compile; ``options`` (a profile's tuned options, see TUNE_VARIANTS) over STATIC_OPTIONS.
    Its first call must run under ``fusion.persistent_rows()``, whose setting is in the options' cache key."""
    return torch.compile(wrapper, dynamic=False, fullgraph=True,
                         options={**STATIC_OPTIONS, **(options or {}), **fusion.compile_options(),
                                  **fusion.rows_cache_key()})


# Inductor counters that tell whether a profile's compile reused cached work: an FX graph
# cache hit reuses the graph's kernels and compile-time choices (matmul templates); launch
# configs tuned at run time (coordinate descent) are reused when no coordesc benchmark ran.
COMPILE_COUNTERS = ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass",
                    "select_algorithm_autotune", "coordesc_tuning_bench", "kernel_config_hit", "kernel_config_miss")


def compile_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {k: counters["inductor"][k] for k in COMPILE_COUNTERS}


class CompiledEngine(Engine):
    """All profiles are compiled views of one module, so the weights exist once.

    The module is changed in place (projections fused, single tokens as GEMVs, single-query attention, the
    MLPs switched: :func:`prepare`) and owned by the engine. ``static_options`` maps a static profile's name to
    the inductor options its build-time tuning kept (:func:`tune_options`). Static profiles compile with their
    one-row reductions (the norms at batch 1) persistent (``fusion.persistent_rows``) and, with ``mlp_kernel``,
    a single token's MLP through generate's kernels (``fusion.mlp_kernels``); dynamic profiles with neither.
    """

    def __init__(self, wrapper: torch.nn.Module, profiles: ProfileSet, device: torch.device,
                 cuda_graphs: bool = True, static_options: dict[str, dict[str, Any]] | None = None,
                 mlp_kernel: bool = True):
        super().__init__(profiles, wrapper.model.config.vocab_size, device)
        prepare(wrapper)
        self.wrapper = wrapper
        self.runners = []
        self.compile_counts = []  # per profile: COMPILE_COUNTERS over its compile and warm-up
        for i, name in enumerate(profiles.names):
            r = profiles.ranges(i)["input_ids"]
            t0, before = time.perf_counter(), compile_counts()
            # A static profile compiles at its first call, in here.
            with fusion.persistent_rows(None if r.is_static else 0), fusion.mlp_kernels(r.is_static and mlp_kernel):
                if r.is_static:
                    fn = compile_static(wrapper, (static_options or {}).get(name))
                    runner = StaticGraphRunner(fn, r.min, device) if cuda_graphs else DynamicRunner(fn)
                else:
                    runner = DynamicRunner(torch.compile(wrapper, dynamic=True, fullgraph=True,
                                                         options=fusion.compile_options()))
                self.runners.append(runner)
                # Warm at the profile's opt first (the size hint the kernels are tuned
                # for), then at its ends: torch.compile specialises size 1 on its own.
                # Through run(), with host tensors, as a request arrives: the same copy to the
                # device and the same compiled_layout as every request.
                with torch._dynamo.config.patch(**COMPILE_CONFIG):
                    for shape in dict.fromkeys((r.opt, r.min, r.max)):
                        ids = torch.zeros(shape, dtype=torch.int64)
                        self.run(i, ids, models.default_position_ids(ids))
            self.check_warm(i)
            self.compile_counts.append({k: v - before[k] for k, v in compile_counts().items()})
            log.info("profile %d %r ready in %.1f s (%s)", i, name, time.perf_counter() - t0,
                     "static, CUDA graph" if isinstance(runner, StaticGraphRunner) and runner.graph else "compiled")

    def check_warm(self, profile_index: int) -> None:
        """Ready means warm: request-shaped calls must not compile anything.

        Each warmed shape and one inside the range, with position_ids in every form a
        request brings them: the default view serving.validate builds, a contiguous
        tensor (from the client, through DLPack) and a stride-0 batch dim (numpy's
        ``arange(n)[None, :]``). Any recompile raises here, at load, not on a request.
        """
        r = self.profiles.ranges(profile_index)["input_ids"]
        inside = tuple((lo + hi) // 2 for lo, hi in zip(r.min, r.opt))
        with torch._dynamo.config.patch(error_on_recompile=True):
            for shape in dict.fromkeys((r.opt, r.min, r.max, inside)):
                ids = torch.zeros(shape, dtype=torch.int64)
                view = models.default_position_ids(ids)
                stride0 = torch.from_numpy(np.arange(shape[-1], dtype=np.int64)[(None,) * (len(shape) - 1)])
                for pos in (view, view.clone(), stride0):
                    try:
                        self.run(profile_index, ids, pos)
                    except torch._dynamo.exc.RecompileError as e:
                        raise EngineLoadError(
                            f"profile {profile_index} {self.profiles.names[profile_index]!r} recompiled after its "
                            f"warm-up on a request at {list(shape)} (position_ids strides {pos.stride()}): {e}"
                        ) from None

    def _inputs(self, profile_index, input_ids, position_ids):
        runner = self.runners[profile_index]
        if isinstance(runner, StaticGraphRunner) and runner.graph is not None:
            # A replay has no guards: the runner copies host tensors of any layout into its graph's inputs.
            return input_ids, position_ids
        input_ids, position_ids = super()._inputs(profile_index, input_ids, position_ids)
        return compiled_layout(input_ids), compiled_layout(position_ids)

    def _forward(self, profile_index, input_ids, position_ids):
        return self.runners[profile_index](input_ids, position_ids)


def wrapper_from_artifacts(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads((version_dir / "model_config.json").read_text())
    config = AutoConfig.for_model(**cfg)
    dtype = getattr(torch, manifest["dtype"])
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    wrapper = models.LastTokenLM(hf)
    weights = load_weights(version_dir, manifest, device)
    params = dict(wrapper.named_parameters())
    missing = [k for k in params if k not in weights]
    if missing:
        raise EngineLoadError(f"weights.safetensors in {version_dir} lacks {missing[:3]}; run `make build`")
    wrapper.load_state_dict({k: weights[k] for k in wrapper.state_dict() if k in weights}, strict=False, assign=True)
    wrapper.model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: rebuild them on the device.
    for name, buf in list(wrapper.named_buffers()):
        if buf.is_meta:
            if name not in weights:
                raise EngineLoadError(f"buffer {name} missing from weights.safetensors in {version_dir}; run `make build`")
            mod_name, _, attr = name.rpartition(".")
            wrapper.get_submodule(mod_name)._buffers[attr] = weights[name]
    hf.config.use_cache = False
    return wrapper.to(device).eval()


LOADED_CACHES = "loaded"  # under the inductor cache dir: one cache dir per build loaded on CUDA


@contextmanager
def build_cache_dir(manifest: dict[str, Any]):
    """The inductor cache dir of this build alone (``<cache dir>/loaded/<content hash>``) while it loads and compiles.

    Two builds of one model compile the same graphs under the same cache keys, and a lookup takes the first entry of
    a key whose guards fit, in file-name order, not the newest. Loaded into one shared cache dir, a rebuilt engine
    could therefore run the kernels of a build loaded there before it (session 20 loaded two fresh ``llm_single``
    builds into one dir, one after the other). The build's own final compile runs in an empty cache for the same
    reason. The previous setting is restored on exit; a compile after that (none is expected) starts cold, in the
    shared dir, where no build's artifacts are loaded.
    """
    from torch._inductor.runtime.runtime_utils import cache_dir

    key = "TORCHINDUCTOR_CACHE_DIR"
    before = os.environ.get(key)
    own = Path(cache_dir()) / LOADED_CACHES / str(manifest.get("content_hash", "unversioned"))[:16]
    own.mkdir(parents=True, exist_ok=True)
    os.environ[key] = str(own)
    try:
        yield own
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def load_compiled(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> CompiledEngine:
    """Rebuild the module from weights + config and compile its profiles (warm from the saved cache).

    On CUDA the build's artifacts load into a cache dir of this build's own (:func:`build_cache_dir`).
    """
    if device.type != "cuda":
        return _load_compiled(version_dir, manifest, device)
    with build_cache_dir(manifest) as own:
        log.info("inductor cache of this build: %s", own)
        return _load_compiled(version_dir, manifest, device)


def _load_compiled(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> CompiledEngine:
    cache = version_dir / COMPILE_CACHE
    if cache.is_file() and device.type == "cuda":
        t0 = time.perf_counter()
        torch.compiler.load_cache_artifacts(cache.read_bytes())
        log.info("loaded compile cache artifacts in %.1f s", time.perf_counter() - t0)
    configs = version_dir / KERNEL_CONFIGS
    if configs.is_file() and device.type == "cuda":
        log.info("pinned %d tuned kernel launch configs", pin_kernel_configs(json.loads(configs.read_text())))
    mlp_kernel = True  # off CUDA the switched MLPs run their own forward
    if device.type == "cuda":
        from llmprofiles.generation.engine import served_mlp_kernel

        mlp_kernel = served_mlp_kernel(manifest, device) is not False  # the build's check; pins its block sizes
    wrapper = wrapper_from_artifacts(version_dir, manifest, device)
    with cached_configs_final():
        engine = CompiledEngine(wrapper, profiles_of(manifest), device, cuda_graphs=device.type == "cuda",
                                static_options=tune_options(manifest) if device.type == "cuda" else None,
                                mlp_kernel=mlp_kernel)
    engine.version_dir = version_dir
    return engine


def tune_options(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per static profile, the inductor options its build-time tuning kept (none for older builds)."""
    return {name: dict(t["options"]) for name, t in (manifest.get("decode_tuning") or {}).items() if t.get("options")}


# Build-time tuning of static profiles: compiles per profile, and replays timed per compile. Two: the two PDL
# compiles that TUNE_RUNS=3 made when every second attempt was a compile without PDL (session 21).
DEFAULT_TUNE_RUNS = 2
TUNE_REPLAYS = 200
WARM_S = 0.5
KERNEL_CONFIGS = "kernel_configs.json"


def pick_fastest(attempt: Callable[[int], tuple[float, Any]], runs: int) -> tuple[Any, dict]:
    """Call ``attempt(k)`` for k in 0..runs-1 and keep the payload of the fastest.

    ``attempt`` returns (milliseconds, payload). An attempt that raises is recorded and
    skipped: one failed compile does not fail the build while another succeeded.
    Returns (the winner's payload, a record of every attempt and the winner)::

        payload, record = pick_fastest(lambda k: (compile_and_time(), artifacts()), 3)
        record["winner"], record["attempts"][record["winner"]]["ms"]
    """
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs={runs!r}: tuning needs at least one run (an int >= 1)")
    attempts, best, best_payload = [], None, None
    for k in range(runs):
        try:
            ms, payload = attempt(k)
        except Exception as e:  # an autotuning crash or an out-of-memory in one compile
            attempts.append({"attempt": k, "error": cut(f"{type(e).__name__}: {e}")})
            log.warning("tuning attempt %d of %d failed: %s", k + 1, runs, attempts[-1]["error"])
            continue
        attempts.append({"attempt": k, "ms": float(ms)})
        log.info("tuning attempt %d of %d: %.4f ms", k + 1, runs, ms)
        if best is None or ms < attempts[best]["ms"]:
            best, best_payload = k, payload
    if best is None:
        raise RuntimeError(f"all {runs} tuning attempts failed: " + "; ".join(a["error"] for a in attempts))
    times = [a["ms"] for a in attempts if "ms" in a]
    return best_payload, {"runs": runs, "attempts": attempts, "winner": best, "winner_ms": attempts[best]["ms"],
                          "spread": (max(times) - min(times)) / min(times)}


def cut(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


def replay_ms(runner: StaticGraphRunner, replays: int = TUNE_REPLAYS, warm_s: float = WARM_S) -> float:
    """Median GPU time of one CUDA graph replay (CUDA events), after ``warm_s`` of untimed replays.

    The warm-up is timed, not counted: after the host-only work of a compile the GPU has
    idled for seconds, and a few replays do not bring its clocks back up.
    """
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warm_s:
        for _ in range(10):
            runner.graph.replay()
        torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start.record()
        runner.graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def fresh_compile_cache():
    """A context with an empty inductor (and Triton) cache in a temp dir, in memory too; removed on exit."""
    from torch._inductor import utils

    return (getattr(utils, "fresh_cache", None) or utils.fresh_inductor_cache)()


def clear_recorded_artifacts() -> None:
    """Forget the cache artifacts recorded so far, so the next save holds only what follows."""
    from torch.compiler._cache import CacheArtifactManager

    CacheArtifactManager.clear()


def static_profile(shape: tuple[int, ...]) -> ProfileSet:
    """A profile set of one static profile at ``shape``, for both inputs."""
    r = ShapeRange(min=tuple(shape), opt=tuple(shape), max=tuple(shape))
    return ProfileSet(names=("static",), inputs=(InputSpec("input_ids", profiles=(r,)),
                                                 InputSpec("position_ids", profiles=(r,))))


def artifact_counts(saved: bytes | None) -> dict[str, int]:
    """How many cache artifacts of each kind (inductor, aot_autograd, autotune, ...) ``saved`` holds."""
    if saved is None:
        return {}
    from torch.compiler._cache import CacheArtifactManager

    try:
        found = CacheArtifactManager.deserialize(saved) or {}
    except Exception as e:  # a private API: a record, not a reason to fail the build
        return {"unreadable": 1, "error": cut(f"{type(e).__name__}: {e}")}
    return {kind: len(items) for kind, items in found.items()}


def kernel_configs() -> dict[str, dict]:
    """The launch config autotuning chose for each Triton kernel in the current inductor cache.

    Inductor writes one ``<key>.best_config`` JSON file beside each autotuned kernel (benchmarked
    configs and coordinate descent). Keyed by the path under the cache dir, which names the kernel
    source's hash; the tuning time is dropped, so equal choices compare equal.
    """
    from torch._inductor.runtime.runtime_utils import cache_dir

    root, out = Path(cache_dir()), {}
    for path in sorted(root.glob("*/*.best_config")):
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        config.pop("time_taken_ms", None)
        out[path.relative_to(root).as_posix()] = config
    return out


def pin_kernel_configs(configs: dict[str, dict]) -> int:
    """Write the kept launch configs into the current inductor cache; returns how many were written.

    A kernel whose source differs has another path, so a pinned file only ever applies to the
    kernel it was tuned for; inductor also checks that the kernel's candidate configs hash the
    same. Written over whatever the loaded cache artifacts put there.
    """
    from torch._inductor.runtime.runtime_utils import cache_dir

    root = Path(cache_dir())
    for rel, config in configs.items():
        path = root / rel
        if path.suffix != ".best_config" or ".." in Path(rel).parts or Path(rel).is_absolute():
            raise EngineLoadError(f"{KERNEL_CONFIGS}: {rel!r} is not a kernel config path")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
    return len(configs)


@contextmanager
def cached_configs_final():
    """While compiling from saved artifacts: every kernel reads its launch config from this cache, and keeps it.

    On an FX graph cache hit, inductor restores each kernel as a pickled autotuner and looks up its tuned
    config (``.best_config``) beside the kernel's file name *as it was when the kernel was compiled*: a
    temp cache dir of the build's winning attempt, long gone. On the H200 (torch 2.11, 2026-11-30) the
    build's final compile ran coordinate descent again (79-86 benchmarks), saving what it found under
    that stale path; loads then hit those files or not (0 and 12 benchmarks), and the built engines
    replayed 6-12% slower than the compiles they kept. torch 2.11 also drops a cached config's
    ``found_by_coordesc`` mark (pytorch/pytorch#172819), so even a hit was tuned again, and it ignores
    the cache for a kernel with one candidate config.

    This wraps ``CachingAutotuner.recheck_autotune_cache`` (the lookup on a cache hit): the kernel's path
    is re-rooted into the current cache dir, where the artifacts and :func:`pin_kernel_configs` put the
    kept configs; a config found there is kept with its mark, so coordinate descent skips it; a re-tune
    after a miss is saved there. Counts ``kernel_config_hit`` and ``kernel_config_miss`` in inductor's
    counters (see COMPILE_COUNTERS). A torch without that method is left alone.

    That lookup only runs for kernels torch launches statically. A kernel it cannot (a PDL kernel:
    "static launch does not support launch attributes") is rebuilt from its source and looks its config
    up in the current cache dir at once, but the hit still lost its mark: on the H200 (2026-11-30,
    session 9) the PDL decode graph ran 75-88 coordinate-descent benchmarks at the build's final compile
    and at every load. So ``CachingAutotuner.coordinate_descent_tuning`` is wrapped too: a kernel whose
    lookup hit keeps its cached config, untuned, and counts as a hit.
    """
    from torch._dynamo.utils import counters
    from torch._inductor.runtime import triton_heuristics as th
    from torch._inductor.runtime.runtime_utils import cache_dir, triton_config_to_hashable

    original = getattr(th.CachingAutotuner, "recheck_autotune_cache", None)
    if original is None or not hasattr(th, "check_autotune_cache"):
        yield
        return

    def recheck(self, reload_kernel_from_src):
        try:
            keep_cached(self, reload_kernel_from_src)
        except Exception as e:  # private inductor API: if it moved, load as torch would, and say so
            failed.append(f"{type(e).__name__}: {e}")
            original(self, reload_kernel_from_src)

    def coordesc(self, launcher, *args, **kwargs):
        counted = getattr(self, "_looked_up", False)  # recheck counted it already
        if (getattr(self, "autotune_cache_info", None) or {}).get("autotune_cache_state") == "hit":
            if not counted:
                counters["inductor"]["kernel_config_hit"] += 1
            launcher.config.found_by_coordesc = True
            return launcher
        if not counted:
            counters["inductor"]["kernel_config_miss"] += 1
            missed.append(Path(self.filename or "?").name)
        return original_coordesc(self, launcher, *args, **kwargs)

    def keep_cached(self, reload_kernel_from_src):
        self._looked_up = True
        if self.filename:
            self.filename = os.path.join(cache_dir(), *Path(self.filename).parts[-2:])
        configs = [r.config for r in self.compile_results]
        cached, cache, self.autotune_cache_info = th.check_autotune_cache(configs, self.filename, self.inductor_meta)
        if cache is not None:
            self.save_cache_hook = cache.save
        if self.autotune_cache_info.get("autotune_cache_state") != "hit":
            if cache is not None:  # looked up and not found: benchmarked or tuned again at its first run
                counters["inductor"]["kernel_config_miss"] += 1
                missed.append(Path(self.filename).name)
            return  # (no cache at all: one config and nothing to tune)
        counters["inductor"]["kernel_config_hit"] += 1
        best = cached[0]
        found = getattr(best, "found_by_coordesc", False)
        key = triton_config_to_hashable(best)
        for result in self.compile_results:
            if triton_config_to_hashable(result.config) == key:
                result.config.found_by_coordesc = found
                self.compile_results = [result]
                return
        if self.fn.fn is None:  # a config coordinate descent found outside the candidates: compile it now
            self.fn = reload_kernel_from_src().fn
        self.compile_results = [self._precompile_config(best)]

    missed: list[str] = []
    failed: list[str] = []
    original_coordesc = th.CachingAutotuner.coordinate_descent_tuning
    th.CachingAutotuner.recheck_autotune_cache = recheck
    th.CachingAutotuner.coordinate_descent_tuning = coordesc
    try:
        yield
    finally:
        th.CachingAutotuner.recheck_autotune_cache = original
        th.CachingAutotuner.coordinate_descent_tuning = original_coordesc
        if failed:
            log.warning("%d restored kernel(s) were looked up as torch does (its tuned config may be lost): %s",
                        len(failed), failed[0])
        if missed:
            log.warning("%d restored kernel(s) had no tuned launch config in the compile cache and are tuned "
                        "again at their first run (e.g. %s): their speed may differ from the build's",
                        len(missed), ", ".join(missed[:3]))


def compare_configs(kept: dict[str, dict], now: dict[str, dict]) -> dict[str, int]:
    """How many of the kept kernels' configs are in the cache now, unchanged, changed or missing."""
    same = sum(1 for k, v in kept.items() if now.get(k) == v)
    missing = sum(1 for k in kept if k not in now)
    return {"kept": len(kept), "same": same, "changed": len(kept) - same - missing, "missing": missing}


# An attempt whose logits differ from the eager module's by more than this is refused, however fast:
# fp16 compiles of gemma-3-1b differ by ~0.01-0.02 (bench/results), a wrong kernel or a race by far more.
TUNE_MAX_DIFF = 0.1


def check_attempt(runner: Callable, reference: Callable, shape: tuple[int, ...], device: torch.device,
                  max_diff: float = TUNE_MAX_DIFF) -> float:
    """Max abs logit difference of a tuning attempt against the eager module (its MLPs in PyTorch: the MLP
    kernels are checked too), on two fixed inputs.

    Raises ValueError past ``max_diff`` (relative to the largest reference logit when that exceeds 1),
    so :func:`pick_fastest` records the attempt as failed and never keeps it.
    """
    worst = 0.0
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 1000, shape, generator=g).to(device)
        pos = torch.randint(0, 512, shape, generator=g).to(device)
        with torch.no_grad():
            ref = reference(ids, pos).float()  # eager, outside fusion.mlp_kernels: the MLPs in PyTorch
            got = runner(ids, pos).float()
        diff = (got - ref).abs().max().item()
        bound = max_diff * max(1.0, ref.abs().max().item())
        if not diff <= bound:  # NaN fails too
            raise ValueError(f"logits differ from the eager module's by {diff:.4g} (allowed {bound:.4g})")
        worst = max(worst, diff)
    return worst


def tune_static_profile(wrapper: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
                        runs: int, mlp_kernel: bool = True) -> tuple[bytes | None, dict[str, dict], dict]:
    """Compile one static profile ``runs`` times from empty caches; the fastest correct replay wins.

    Attempt k compiles with the options ``tune_variants(device)[k % n]``. Each attempt compiles
    through :class:`CompiledEngine` (one static profile at ``shape``), so it makes exactly the
    compile calls the built engine makes, and is checked against the eager module
    (:func:`check_attempt`). Returns the winner's cache artifacts (its chosen kernels and launch
    configs), its kernels' launch configs (:func:`kernel_configs`) and the tuning record, with
    ``options``: the winner's options; per attempt its options and ``max_abs_diff``;
    ``artifacts``: the kinds the winner's artifacts hold; ``kernel_configs``: how many kernels it
    tuned. Loading those artifacts and pinning those configs before the engine is compiled with
    those options makes its compile a cache hit on exactly those kernels.
    """
    variants = tune_variants(device)
    diffs = {}

    def attempt(k: int) -> tuple[float, tuple[bytes | None, dict[str, dict]]]:
        torch._dynamo.reset()  # Dynamo would otherwise reuse the previous attempt's graph
        clear_recorded_artifacts()
        options = variants[k % len(variants)]
        with fresh_compile_cache():
            engine = CompiledEngine(wrapper, static_profile(shape), device, static_options={"static": options},
                                    mlp_kernel=mlp_kernel)
            diffs[k] = check_attempt(engine.runners[0], wrapper, shape, device)
            ms = replay_ms(engine.runners[0])
            saved = torch.compiler.save_cache_artifacts()
            configs = kernel_configs()
            del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return ms, (None if saved is None else saved[0], configs)

    (artifacts, configs), record = pick_fastest(attempt, runs)
    for a in record["attempts"]:
        a["options"] = variants[a["attempt"] % len(variants)]
        if a["attempt"] in diffs:
            a["max_abs_diff"] = diffs[a["attempt"]]
    record["options"] = variants[record["winner"] % len(variants)]
    record["artifacts"] = artifact_counts(artifacts)
    record["kernel_configs"] = len(configs)
    torch._dynamo.reset()
    clear_recorded_artifacts()
    return artifacts, configs, record


def build_compiled(ctx, step, tune_runs: int | None = None) -> tuple[list[str], dict]:
    """Compile every profile on the GPU and save the compile cache; static profiles tuned first.

    ``tune_runs`` compiles per static profile (None: DEFAULT_TUNE_RUNS). The manifest's
    ``decode_tuning`` maps each static profile to its attempts' replay times, the winner and its options,
    and ``final_ms``, the replay of the engine compiled after loading the winner's
    artifacts: it should equal ``winner_ms`` within noise, or the winner was not reused.
    ``final_compile`` has that profile's COMPILE_COUNTERS in the engine: a pure reuse is
    one fxgraph_cache_hit, a kernel_config_hit per tuned kernel and nothing else (no miss, no
    bypass, no autotune or coordinate-descent benchmark).
    ``final_configs`` compares the winner's kernel launch configs with the cache's after
    that compile (all ``same`` when they were reused). The winner's configs are saved as
    ``kernel_configs.json`` and pinned again when the engine is loaded.
    First, generate's MLP kernels are checked against PyTorch on every layer's weights and autotuned
    (``generation.engine.check_mlp_kernel``); the manifest's ``mlp_kernel`` says whether they serve, with
    the block sizes the server pins.
    """
    if ctx.device.type != "cuda":
        return [], {}
    runs = DEFAULT_TUNE_RUNS if tune_runs is None else tune_runs
    checked = None  # only static profiles run the MLP kernels
    if any(ctx.profiles.ranges(i)["input_ids"].is_static for i in range(len(ctx.profiles))):
        from llmprofiles.generation.engine import check_mlp_kernel

        with step("check the batch-1 MLP kernels against PyTorch, autotuning them"):
            checked = check_mlp_kernel(ctx.wrapper.model, ctx.device)
        print(f"     MLP kernels: {checked}", flush=True)
    mlp_kernel = bool(checked) and checked["use"] == "kernel"
    prepare(ctx.wrapper)
    tuning, kept = {}, {}  # per static profile: its record; its winner's (cache artifacts, launch configs)
    for i, name in enumerate(ctx.profiles.names):
        r = ctx.profiles.ranges(i)["input_ids"]
        if not r.is_static:
            continue
        with step(f"tune static profile {name!r}: {runs} compile(s) from empty caches, keep the fastest replay"):
            artifacts, configs, tuning[name] = tune_static_profile(ctx.wrapper, r.min, ctx.device, runs, mlp_kernel)
        print(f"     {name}: replay ms per attempt "
              f"{[round(a['ms'], 4) if 'ms' in a else 'failed' for a in tuning[name]['attempts']]}, "
              f"kept attempt {tuning[name]['winner'] + 1}", flush=True)
        kept[name] = (artifacts, configs)
    pinned = {path: config for _, configs in kept.values() for path, config in configs.items()}
    # From an empty cache too: a lookup takes the first entry of a key that fits, so an older
    # entry of the same graph (an earlier build's) could win over the tuned one.
    with step("compile every profile on the GPU and save the compiler's cache artifacts"), fresh_compile_cache():
        for artifacts, _ in kept.values():  # the tuned kernels, so the static compiles below are cache hits on them
            if artifacts is not None:
                torch.compiler.load_cache_artifacts(artifacts)
        pin_kernel_configs(pinned)  # and their launch configs, whatever the artifacts restored
        with cached_configs_final():
            engine = CompiledEngine(ctx.wrapper, ctx.profiles, ctx.device,
                                    static_options={name: t["options"] for name, t in tuning.items()},
                                    mlp_kernel=mlp_kernel)
        now = kernel_configs()
        for i, name in enumerate(ctx.profiles.names):
            if name not in tuning:
                continue
            counts = engine.compile_counts[i]
            tuning[name]["final_configs"] = compare_configs(kept[name][1], now)
            tuning[name]["final_compile"] = counts
            if not counts["fxgraph_cache_hit"] or any(v for k, v in counts.items()
                                                        if k not in ("fxgraph_cache_hit", "kernel_config_hit")):
                log.warning("profile %r: the engine's compile did not only reuse the kept attempt's "
                            "artifacts: %s", name, counts)
            tuning[name]["final_ms"] = final = replay_ms(engine.runners[i])
            if abs(final - tuning[name]["winner_ms"]) > 0.05 * tuning[name]["winner_ms"]:
                log.warning("profile %r: the built engine replays in %.4f ms, the kept attempt in %.4f ms: "
                            "its kernels may not have been reused", name, final, tuning[name]["winner_ms"])
        saved = torch.compiler.save_cache_artifacts()
    written = []
    if saved is not None:
        (ctx.version_dir / COMPILE_CACHE).write_bytes(saved[0])
        written.append(COMPILE_CACHE)
    if pinned:
        (ctx.version_dir / KERNEL_CONFIGS).write_text(json.dumps(pinned, indent=1, sort_keys=True))
        written.append(KERNEL_CONFIGS)
    return written, {**({"mlp_kernel": checked} if checked else {}), **({"decode_tuning": tuning} if tuning else {})}
