"""Is the engine's static decode compile a cache hit on the tuning attempt's artifacts? (CPU is enough)

Replays, on CPU, what ``build_compiled`` does on CUDA: in an empty compile cache,
compile the static decode profile the way ``tune_static_profile`` does and save
the cache artifacts; ``torch._dynamo.reset()``; in another empty cache, load
those artifacts and build the engine the way ``build_compiled`` does. Prints the
inductor / AOTAutograd cache counters of each phase and what the saved artifacts
hold (FX graph entries, autotune ``.best_config`` entries, ...).

    .venv/bin/python -m bench.probes.tuning_reuse            # the tuning path of compiled.py
    .venv/bin/python -m bench.probes.tuning_reuse --logs     # plus inductor's cache logs (fx graph cache key details)
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

import torch
from torch._dynamo.utils import counters

from llmprofiles import models
from llmprofiles.profiles.sets import PROFILE_SETS
from llmprofiles.profiles.spec import InputSpec, ProfileSet
from llmprofiles.runtimes import compiled

CACHE_COUNTERS = ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass")


def snapshot() -> dict[str, dict[str, int]]:
    return {group: dict(counters[group]) for group in ("inductor", "aot_autograd") if counters[group]}


def cache_counters(snap: dict) -> dict[str, int]:
    ind, aot = snap.get("inductor", {}), snap.get("aot_autograd", {})
    out = {k: ind.get(k, 0) for k in CACHE_COUNTERS}
    out.update({k: v for k, v in aot.items() if k.startswith("autograd_cache")})
    out.update({k: v for k, v in ind.items() if "autotune" in k or "coordesc" in k or "benchmark" in k})
    return out


def artifact_kinds(saved: bytes | None) -> dict[str, int]:
    if saved is None:
        return {}
    from torch.compiler._cache import CacheArtifactManager

    found = CacheArtifactManager.deserialize(saved) or {}
    return {kind: len(items) for kind, items in found.items()}


def decode_only() -> ProfileSet:
    """The multi set's static decode profile alone, so the engine's counters are its compile's."""
    multi = PROFILE_SETS["multi"]
    i = multi.names.index("decode")
    return ProfileSet(names=("decode",), inputs=tuple(InputSpec(s.name, profiles=(s.profiles[i],)) for s in multi.inputs))


def tiny_wrapper() -> torch.nn.Module:
    return models.LastTokenLM(models.load_model("tiny", torch.float32, "cpu")).eval()


def tune_once(wrapper: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
              runs: int) -> tuple[bytes | None, dict, dict]:
    """``compiled.tune_static_profile`` itself; on CPU its CUDA-graph timing is faked (every attempt 1 ms)."""
    counters.clear()
    if device.type != "cuda":
        compiled.replay_ms = lambda runner, replays=0: 1.0
    saved, _, record = compiled.tune_static_profile(wrapper, shape, device, runs)
    return saved, record, snapshot()


def engine_from(wrapper: torch.nn.Module, artifacts: bytes | None, device: torch.device,
                profiles: ProfileSet) -> tuple[object, dict]:
    """``build_compiled``'s final step: an empty cache, the winner's artifacts loaded, the engine compiled."""
    torch._dynamo.reset()
    compiled.clear_recorded_artifacts()
    counters.clear()
    with compiled.fresh_compile_cache():
        if artifacts is not None:
            torch.compiler.load_cache_artifacts(artifacts)
        loaded = snapshot()
        counters.clear()
        engine = compiled.CompiledEngine(wrapper, profiles, device)
        return engine, {"load": loaded, "engine": snapshot()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=1, help="tuning attempts (on CPU all time 1 ms: the first wins)")
    p.add_argument("--multi", action="store_true", help="build the whole multi set (decode + prefill), as the build")
    p.add_argument("--logs", action="store_true", help="print inductor's cache logs (very verbose)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if a.logs:
        torch._logging.set_logs(inductor=logging.DEBUG)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wrapper = tiny_wrapper().to(device)
    compiled.prepare(wrapper)  # as build_compiled does before tuning
    shape = PROFILE_SETS["multi"].ranges(0)["input_ids"].min
    saved, record, tuned = tune_once(wrapper, shape, device, a.runs)
    print(f"tuning ({a.runs} attempt(s)) counters:", cache_counters(tuned))
    print("  all inductor counters:", tuned.get("inductor", {}))
    print("kept artifacts:", artifact_kinds(saved), "record:", record.get("artifacts"))
    profiles = PROFILE_SETS["multi"] if a.multi else decode_only()
    engine, phases = engine_from(wrapper, saved, device, profiles)
    print("after load_cache_artifacts:", cache_counters(phases["load"]))
    print("engine counters, all profiles:", cache_counters(phases["engine"]))
    for name, counts in zip(profiles.names, engine.compile_counts):
        print(f"  {name}: {counts}")


if __name__ == "__main__":
    main()
