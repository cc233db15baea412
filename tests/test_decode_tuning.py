"""Build-time tuning of the static decode profile: the selection logic, and build_compiled's use of it (no GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llmprofiles.build import build
from llmprofiles.profiles.sets import PROFILE_SETS
from llmprofiles.runtimes import compiled
from llmprofiles.runtimes.compiled import pick_fastest


@pytest.fixture(autouse=True)
def inductor_autotune_cache_on(monkeypatch):
    """Inductor reads no autotune cache under Triton's interpreter (conftest.py sets it without a GPU)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def fake_attempts(times: list[float | Exception]):
    """An attempt function over fixed outcomes: a time, or an exception that attempt raises."""
    calls = []

    def attempt(k: int):
        calls.append(k)
        if isinstance(times[k], Exception):
            raise times[k]
        return times[k], f"artifacts-{k}".encode()

    return attempt, calls


def test_the_fastest_attempt_wins_and_every_attempt_is_recorded():
    attempt, calls = fake_attempts([1.9, 1.4, 1.6])
    payload, record = pick_fastest(attempt, 3)
    assert calls == [0, 1, 2]
    assert payload == b"artifacts-1"
    assert record["winner"] == 1 and record["winner_ms"] == 1.4 and record["runs"] == 3
    assert [a["ms"] for a in record["attempts"]] == [1.9, 1.4, 1.6]
    assert record["spread"] == pytest.approx((1.9 - 1.4) / 1.4)


def test_a_tie_keeps_the_first_attempt():
    payload, record = pick_fastest(fake_attempts([1.5, 1.5])[0], 2)
    assert payload == b"artifacts-0" and record["winner"] == 0


def test_a_failed_attempt_is_recorded_and_skipped():
    attempt, _ = fake_attempts([RuntimeError("autotune crashed"), 1.7, torch.cuda.OutOfMemoryError("oom")])
    payload, record = pick_fastest(attempt, 3)
    assert payload == b"artifacts-1" and record["winner"] == 1
    assert record["attempts"][0] == {"attempt": 0, "error": "RuntimeError: autotune crashed"}
    assert record["attempts"][2]["error"].startswith("OutOfMemoryError")
    assert record["spread"] == 0.0  # one timed attempt


def test_all_attempts_failing_raises_with_every_error():
    attempt, _ = fake_attempts([RuntimeError("first"), ValueError("second")])
    with pytest.raises(RuntimeError, match="all 2 tuning attempts failed: RuntimeError: first; ValueError: second"):
        pick_fastest(attempt, 2)


@pytest.mark.parametrize("runs", [0, -1, 1.5])
def test_fewer_than_one_run_raises(runs):
    with pytest.raises(ValueError, match="at least one run"):
        pick_fastest(fake_attempts([1.0])[0], runs)


def test_build_refuses_zero_tune_runs_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="--tune-runs 0"):
        build("tiny", "multi", "torch-compile", "cpu", "float32", tmp_path / "llm", tune_runs=0)


def test_build_compiled_loads_the_winner_before_compiling_and_records_the_tuning(monkeypatch, tmp_path):
    """The CUDA path's order, with the GPU parts faked: check the MLP kernels, tune each static profile, load the
    winners, compile, save. The kernels' check decides whether the tuning and the engine compile with them."""
    from llmprofiles.generation import engine as generation_engine

    events = []
    checked = {"use": "kernel", "max_rel_diff": 1e-3, "block_sizes": [{"n": 8, "k": 8, "gated": False}]}

    class FakeEngine:
        def __init__(self, wrapper, profiles, device, static_options=None, mlp_kernel=True):
            events.append(f"compile engine {static_options} mlp_kernel={mlp_kernel}")
            self.runners = [f"runner-{i}" for i in range(len(profiles))]
            self.compile_counts = [dict.fromkeys(compiled.COMPILE_COUNTERS, 0) for _ in profiles.names]

    def fake_tune(wrapper, shape, device, runs, mlp_kernel):
        events.append(f"tune {shape} x{runs} mlp_kernel={mlp_kernel}")
        return b"winner", {"ab/kernel.best_config": {"XBLOCK": 64}}, {
            "runs": runs, "attempts": [{"attempt": 0, "ms": 1.3}], "winner": 0, "winner_ms": 1.3, "spread": 0.0,
            "options": {"triton.enable_pdl": True}}

    class NoCache:
        def __enter__(self):
            events.append("fresh cache")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(compiled, "prepare", lambda wrapper: events.append("prepare"))
    monkeypatch.setattr(generation_engine, "check_mlp_kernel", lambda hf, device: events.append("check") or checked)
    monkeypatch.setattr(compiled, "tune_static_profile", fake_tune)
    monkeypatch.setattr(compiled, "CompiledEngine", FakeEngine)
    monkeypatch.setattr(compiled, "replay_ms", lambda runner: 1.31)
    monkeypatch.setattr(compiled, "fresh_compile_cache", NoCache)
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda b: events.append(f"load {b!r}"))
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"all profiles", None))
    monkeypatch.setattr(compiled, "pin_kernel_configs", lambda configs: events.append(f"pin {sorted(configs)}"))
    monkeypatch.setattr(compiled, "kernel_configs", lambda: {"ab/kernel.best_config": {"XBLOCK": 32}})

    def step(what):
        return NoCache()

    ctx = SimpleNamespace(device=torch.device("cuda"), wrapper=SimpleNamespace(model=object()),
                          profiles=PROFILE_SETS["multi"], version_dir=tmp_path)
    artifacts, extra = compiled.build_compiled(ctx, step, tune_runs=2)
    static = [n for i, n in enumerate(PROFILE_SETS["multi"].names) if PROFILE_SETS["multi"].ranges(i)["input_ids"].is_static]
    assert static == ["decode"]
    assert (events.index("check") < events.index("tune (1, 1) x2 mlp_kernel=True") < events.index("load b'winner'")
            < events.index("pin ['ab/kernel.best_config']")
            # the engine compiles the static profile with the options the tuning kept
            < events.index("compile engine {'decode': {'triton.enable_pdl': True}} mlp_kernel=True"))
    assert extra["mlp_kernel"] == checked  # the manifest's record, with the block sizes the server pins
    assert artifacts == [compiled.COMPILE_CACHE, compiled.KERNEL_CONFIGS]
    assert (tmp_path / compiled.COMPILE_CACHE).read_bytes() == b"all profiles"
    assert json.loads((tmp_path / compiled.KERNEL_CONFIGS).read_text()) == {"ab/kernel.best_config": {"XBLOCK": 64}}
    record = extra["decode_tuning"]["decode"]
    assert record["final_ms"] == 1.31 and record["winner"] == 0
    # The engine's cache now holds another config for the pinned kernel: recorded as changed.
    assert record["final_configs"] == {"kept": 1, "same": 0, "changed": 1, "missing": 0}

    events.clear()  # kernels the check refused: the tuning and the engine compile without them
    checked = {"use": "pytorch", "reason": "outputs differ"}
    artifacts, extra = compiled.build_compiled(ctx, step, tune_runs=2)
    assert "tune (1, 1) x2 mlp_kernel=False" in events and extra["mlp_kernel"] == checked
    assert "compile engine {'decode': {'triton.enable_pdl': True}} mlp_kernel=False" in events

    events.clear()  # the single-profile set has no static profile: nothing to check or tune, no record
    ctx.profiles = PROFILE_SETS["single"]
    artifacts, extra = compiled.build_compiled(ctx, step, tune_runs=2)
    assert not any(e.startswith(("tune", "check")) for e in events) and extra == {}


def test_tuning_cycles_the_option_variants_and_keeps_the_fastest_correct_attempt(monkeypatch):
    """Attempt k compiles with variant k % n; an attempt whose logits are wrong is refused however fast."""
    variants = ({"triton.enable_pdl": True}, {})
    compiles, times, diffs = [], iter([1.1, 1.3, 1.2]), iter([0.01, 0.02, 5.0, 0.01])

    class FakeEngine:
        def __init__(self, wrapper, profiles, device, static_options=None, mlp_kernel=True):
            compiles.append(static_options)
            self.runners = ["runner"]

    def fake_check(runner, reference, shape, device):
        diff = next(diffs)
        if diff > compiled.TUNE_MAX_DIFF:
            raise ValueError(f"logits differ by {diff}")
        return diff

    monkeypatch.setattr(compiled, "tune_variants", lambda device: variants)
    monkeypatch.setattr(compiled, "CompiledEngine", FakeEngine)
    monkeypatch.setattr(compiled, "check_attempt", fake_check)
    monkeypatch.setattr(compiled, "replay_ms", lambda runner: next(times))
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    monkeypatch.setattr(compiled, "kernel_configs", lambda: {})
    _, _, record = compiled.tune_static_profile(object(), (1, 1), torch.device("cpu"), 4)
    assert compiles == [{"static": v} for v in variants + variants]
    # attempt 2 is wrong, so it is refused before it is timed; attempt 0 (1.1 ms, PDL) wins
    assert "differ by 5.0" in record["attempts"][2]["error"] and record["winner"] == 0
    assert record["options"] == {"triton.enable_pdl": True}
    assert [a["options"] for a in record["attempts"]] == list(variants + variants)
    assert [a.get("max_abs_diff") for a in record["attempts"]] == [0.01, 0.02, None, 0.01]


def test_check_attempt_measures_against_the_eager_module_and_refuses_wrong_logits():
    def reference(ids, pos):
        return (ids * 0.5 + pos).float()

    assert compiled.check_attempt(reference, reference, (1, 1), torch.device("cpu")) == 0.0
    assert compiled.check_attempt(lambda i, p: reference(i, p) + 0.03, reference, (1, 1), torch.device("cpu")) \
        == pytest.approx(0.03, abs=1e-3)
    # the bound scales with the largest reference logit (here up to ~1000): 10% of it
    with pytest.raises(ValueError, match="differ from the eager module's by"):
        compiled.check_attempt(lambda i, p: reference(i, p) * 1.5, reference, (1, 1), torch.device("cpu"))
    with pytest.raises(ValueError, match="nan"):
        compiled.check_attempt(lambda i, p: reference(i, p) * float("nan"), reference, (1, 1), torch.device("cpu"))


def test_the_served_engine_compiles_with_the_options_its_build_kept():
    manifest = {"decode_tuning": {"decode": {"options": {"triton.enable_pdl": True}}, "other": {"options": {}}}}
    assert compiled.tune_options(manifest) == {"decode": {"triton.enable_pdl": True}}
    assert compiled.tune_options({}) == {} and compiled.tune_options({"decode_tuning": {"decode": {}}}) == {}
    assert compiled.tune_variants(torch.device("cpu")) == ({},)  # PDL is for CUDA capability 9 and later


def test_build_compiled_does_nothing_on_cpu():
    ctx = SimpleNamespace(device=torch.device("cpu"))
    assert compiled.build_compiled(ctx, None, tune_runs=3) == ([], {})


def make_dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "MAKEFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-n", "build", "PY=python3", *args], capture_output=True, text=True, check=True,
                          env=env, cwd=Path(__file__).parent.parent).stdout


def test_make_build_fresh_wipes_the_inductor_cache_and_only_the_chosen_builds():
    out = make_dry_run("FRESH=1", "BUILD_MODELS=llm", "TUNE_RUNS=2", "DEVICE=cuda")
    lines = out.splitlines()
    assert lines[0].startswith("rm -rf ") and lines[0].rstrip('"').endswith(".cache/inductor")
    assert "for m in llm; do" in lines[1] and "! -name model.py -delete" in lines[1]
    assert "--tune-runs 2 --profile-set multi --out model_repository/llm" in out
    assert "llm_single" not in out and "build_generate" not in out
    plain = make_dry_run()
    assert "rm -rf" not in plain and "--tune-runs" not in plain and "build_generate" in plain
    assert "rm -rf" not in make_dry_run("FRESH=0")


def test_kernel_configs_round_trip_through_the_cache_and_compare():
    """What the build keeps of a tuning attempt (each kernel's .best_config) is pinned back verbatim at load."""
    kept = {"ab/k1.best_config": {"XBLOCK": 64, "num_warps": 4, "found_by_coordesc": True},
            "cd/k2.best_config": {"R0_BLOCK": 128, "num_warps": 8}}
    with compiled.fresh_compile_cache():
        assert compiled.kernel_configs() == {}
        assert compiled.pin_kernel_configs(kept) == 2
        from torch._inductor.runtime.runtime_utils import cache_dir

        # Inductor's own files carry the tuning time: it is not part of the choice.
        extra = Path(cache_dir()) / "ef" / "k3.best_config"
        extra.parent.mkdir()
        extra.write_text(json.dumps({"XBLOCK": 8, "time_taken_ms": 12}))
        now = compiled.kernel_configs()
        assert now == {**kept, "ef/k3.best_config": {"XBLOCK": 8}}
        assert compiled.compare_configs(kept, now) == {"kept": 2, "same": 2, "changed": 0, "missing": 0}
        retuned = {**now, "ab/k1.best_config": {"XBLOCK": 32, "num_warps": 4, "found_by_coordesc": True}}
        del retuned["cd/k2.best_config"]
        assert compiled.compare_configs(kept, retuned) == {"kept": 2, "same": 0, "changed": 1, "missing": 1}


@pytest.mark.parametrize("bad", ["../x.best_config", "/tmp/x.best_config", "ab/kernel.py"])
def test_pinning_refuses_paths_outside_the_cache_or_not_configs(bad):
    with compiled.fresh_compile_cache(), pytest.raises(compiled.EngineLoadError, match="not a kernel config path"):
        compiled.pin_kernel_configs({bad: {"XBLOCK": 1}})


class FakeConfig:
    """What inductor reads of a Triton launch config (triton is not installed on the CPU machine)."""

    def __init__(self, kwargs, num_warps=4, num_stages=1):
        self.kwargs, self.num_warps, self.num_stages = dict(kwargs), num_warps, num_stages


def restored_kernel(filename, *configs):
    """A kernel as an FX graph cache hit restores it: its candidates compiled, its file name from the build."""
    return SimpleNamespace(filename=filename, compile_results=[SimpleNamespace(config=c) for c in configs],
                           inductor_meta={"coordinate_descent_tuning": True}, save_cache_hook="the build's hook",
                           fn=SimpleNamespace(fn=object()), _precompile_config=lambda c: SimpleNamespace(config=c))


def keep_config(filename, configs, config, found_by_coordesc=True):
    """Write ``config`` where inductor looks for the tuned config of the kernel at ``filename``."""
    from torch._inductor.runtime.autotune_cache import AutotuneCache
    from torch._inductor.runtime.triton_heuristics import hash_configs

    cache = AutotuneCache.create({}, filename, hash_configs(configs))
    path = Path(cache.local_cache[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages,
                                "configs_hash": hash_configs(configs), "found_by_coordesc": found_by_coordesc}))


def test_a_restored_kernel_reads_its_tuned_config_from_this_cache_and_keeps_it(monkeypatch, caplog):
    """The build's final compile and every load ran coordinate descent again on the H200 (torch 2.11): each restored
    kernel looked for its tuned config under the temp dir of the compile that made it, and a hit lost its mark."""
    from torch._dynamo.utils import counters
    from torch._inductor.runtime import autotune_cache, triton_heuristics as th
    from torch._inductor.runtime.runtime_utils import cache_dir

    monkeypatch.setattr(autotune_cache, "Config", FakeConfig)
    original = th.CachingAutotuner.recheck_autotune_cache
    small, large = FakeConfig({"XBLOCK": 32}), FakeConfig({"XBLOCK": 64}, num_warps=8)
    counters.clear()
    with compiled.fresh_compile_cache(), compiled.cached_configs_final():
        recheck = th.CachingAutotuner.recheck_autotune_cache
        here = Path(cache_dir())
        kept = restored_kernel("/tmp/a-gone-attempt-dir/ab/cabc123.py", small, large)
        keep_config(str(here / "ab" / "cabc123.py"), [small, large], large)
        recheck(kept, reload_kernel_from_src=None)
        assert kept.filename == str(here / "ab" / "cabc123.py")  # looked up here, not in the gone dir
        assert [r.config for r in kept.compile_results] == [large]
        assert large.found_by_coordesc  # so coordinate descent leaves it alone
        assert kept.autotune_cache_info["autotune_cache_state"] == "hit"
        assert kept.save_cache_hook != "the build's hook"  # a later re-tune is saved here too

        missed = restored_kernel("/tmp/a-gone-attempt-dir/cd/cdef456.py", small, large)
        recheck(missed, reload_kernel_from_src=None)
        assert [r.config for r in missed.compile_results] == [small, large]  # tuned as usual
        assert missed.autotune_cache_info["autotune_cache_state"] == "miss"

        # One candidate, and coordinate descent had found a config outside the candidates: that one is compiled.
        start, found = FakeConfig({"R0_BLOCK": 8}), FakeConfig({"R0_BLOCK": 64}, num_warps=2)
        single = restored_kernel("/tmp/a-gone-attempt-dir/ef/cfff789.py", start)
        keep_config(str(here / "ef" / "cfff789.py"), [start], found)
        recheck(single, reload_kernel_from_src=None)
        (result,) = single.compile_results
        assert result.config.kwargs == {"R0_BLOCK": 64} and result.config.num_warps == 2
        assert result.config.found_by_coordesc
        # One candidate and no coordinate descent: nothing to look up, nothing to tune, not a miss.
        plain = restored_kernel("/tmp/a-gone-attempt-dir/01/c0123.py", start)
        plain.inductor_meta = {}
        recheck(plain, reload_kernel_from_src=None)
        assert [r.config for r in plain.compile_results] == [start]
    assert counters["inductor"]["kernel_config_hit"] == 2 and counters["inductor"]["kernel_config_miss"] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("1 restored kernel(s) had no tuned launch config") and \
        "cdef456.py" in warned[0]
    assert th.CachingAutotuner.recheck_autotune_cache is original  # restored on exit


def test_a_kernel_the_lookup_cannot_read_is_loaded_as_torch_would(monkeypatch, caplog):
    """The lookup uses inductor's private API: if it changed, the kernel still loads, the torch way, with a warning."""
    from torch._inductor.runtime import triton_heuristics as th

    seen = []
    monkeypatch.setattr(th.CachingAutotuner, "recheck_autotune_cache", lambda self, reload: seen.append(self))
    odd = SimpleNamespace(filename="/tmp/gone/ab/c1.py")  # no compile_results, no inductor_meta
    with compiled.fresh_compile_cache(), compiled.cached_configs_final():
        th.CachingAutotuner.recheck_autotune_cache(odd, reload_kernel_from_src=None)
    assert seen == [odd]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("1 restored kernel(s) were looked up as torch does")


def test_a_kernel_rebuilt_from_source_keeps_the_config_its_lookup_found(monkeypatch, caplog):
    """PDL kernels cannot be launched statically, so they skip recheck_autotune_cache: their lookup happens when
    they are rebuilt from source, and on the H200 a hit there was tuned again (75-88 benchmarks per compile)."""
    from torch._dynamo.utils import counters
    from torch._inductor.runtime import triton_heuristics as th

    tuned = []
    monkeypatch.setattr(th.CachingAutotuner, "coordinate_descent_tuning",
                        lambda self, launcher, *a, **k: tuned.append(self.filename) or "re-tuned")
    original = th.CachingAutotuner.coordinate_descent_tuning

    def kernel(name, state):
        return SimpleNamespace(filename=f"/cache/ab/{name}.py", autotune_cache_info={"autotune_cache_state": state})

    counters.clear()
    with compiled.fresh_compile_cache(), compiled.cached_configs_final():
        coordesc = th.CachingAutotuner.coordinate_descent_tuning
        launcher = SimpleNamespace(config=FakeConfig({"XBLOCK": 64}))
        assert coordesc(kernel("c1", "hit"), launcher) is launcher  # kept as cached, not tuned
        assert launcher.config.found_by_coordesc
        assert coordesc(kernel("c2", "miss"), SimpleNamespace(config=FakeConfig({}))) == "re-tuned"
        counted = kernel("c3", "miss")
        counted._looked_up = True  # recheck_autotune_cache saw it and counted it already
        assert coordesc(counted, SimpleNamespace(config=FakeConfig({}))) == "re-tuned"
    assert tuned == ["/cache/ab/c2.py", "/cache/ab/c3.py"]
    assert counters["inductor"]["kernel_config_hit"] == 1 and counters["inductor"]["kernel_config_miss"] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "c2.py" in warned[0]
    assert th.CachingAutotuner.coordinate_descent_tuning is original  # restored on exit


def test_pdl_is_tried_only_where_its_probe_passes(monkeypatch):
    """The probe runs in a child process; a failing probe (or none to run) leaves PDL out of the tuning."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    runs = []

    def fake_run(cmd, **kw):
        runs.append((cmd[1:], kw["env"].get("CUDA_VISIBLE_DEVICES")))
        return SimpleNamespace(returncode=rc, stdout="pdl probe: ok", stderr="boom")

    monkeypatch.setattr(compiled.subprocess, "run", fake_run)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    rc = 0
    assert compiled.tune_variants(torch.device("cuda")) == (compiled.PDL,)  # no compile without PDL where it works
    rc = 1
    assert compiled.tune_variants(torch.device("cuda:1")) == ({},)
    assert runs == [(["-m", "llmprofiles.runtimes.pdl_probe"], None), (["-m", "llmprofiles.runtimes.pdl_probe"], "1")]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert compiled.tune_variants(torch.device("cuda")) == ({},) and len(runs) == 2  # no probe before Hopper


def test_the_pdl_probe_says_it_needs_a_hopper_gpu_on_this_machine():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/test_gpu.py runs the probe")
    done = subprocess.run([sys.executable, "-m", "llmprofiles.runtimes.pdl_probe"], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 2 and "compute capability 9" in done.stderr
