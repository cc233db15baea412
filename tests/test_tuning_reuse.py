"""The engine's static decode compile reuses the tuning attempt's artifacts: an FX graph cache hit (CPU, tiny model).

``build_compiled`` (CUDA) compiles the static decode profile once per tuning attempt,
each from an empty compile cache, keeps the fastest attempt's cache artifacts, and
compiles the engine after loading them in another empty cache, expecting the decode
compile to be a cache hit on exactly the kept kernels. This replays that on the CPU
(the CUDA-graph timing faked) and checks the cache counters of the engine's decode
compile: one FX graph (and AOTAutograd) cache hit, no miss, no bypass, nothing
autotuned again. bench/probes/tuning_reuse.py prints the same counters.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from llmprofiles import models
from llmprofiles.profiles.sets import PROFILE_SETS
from llmprofiles.profiles.spec import InputSpec, ProfileSet
from llmprofiles.runtimes import compiled

DECODE = PROFILE_SETS["multi"].ranges(0)["input_ids"]
# The multi set's decode profile alone, so the engine's counters are its compile's.
DECODE_ONLY = ProfileSet(names=("decode",), inputs=(InputSpec("input_ids", profiles=(DECODE,)),
                                                    InputSpec("position_ids", profiles=(DECODE,))))


@pytest.fixture
def wrapper():
    w = models.LastTokenLM(models.load_model("tiny", torch.float32, "cpu")).eval()
    compiled.prepare(w)  # as build_compiled does before tuning
    yield w
    torch._dynamo.reset()
    compiled.clear_recorded_artifacts()


def test_the_engine_static_compile_is_a_cache_hit_on_the_kept_attempt(wrapper, monkeypatch):
    assert PROFILE_SETS["multi"].names[0] == "decode" and DECODE.is_static
    monkeypatch.setattr(compiled, "replay_ms", lambda runner, replays=0: 1.0)  # no CUDA graph to time on CPU
    counters.clear()
    artifacts, _, record = compiled.tune_static_profile(wrapper, DECODE.min, torch.device("cpu"), 1)
    # The attempt compiled the static profile (from an empty cache) and kept what it compiled.
    assert counters["inductor"]["fxgraph_cache_miss"] == 1 and counters["inductor"]["fxgraph_cache_hit"] == 0
    assert artifacts, "the tuning attempt saved no cache artifacts"

    # build_compiled's last step: an empty cache, the kept artifacts loaded, the engine compiled.
    torch._dynamo.reset()
    compiled.clear_recorded_artifacts()
    with compiled.fresh_compile_cache():
        torch.compiler.load_cache_artifacts(artifacts)
        counters.clear()
        engine = compiled.CompiledEngine(wrapper, DECODE_ONLY, torch.device("cpu"))
        inductor, aot = dict(counters["inductor"]), dict(counters["aot_autograd"])
    assert inductor.get("fxgraph_cache_hit") == 1, (inductor, aot)
    assert not inductor.get("fxgraph_cache_miss") and not inductor.get("fxgraph_cache_bypass"), (inductor, aot)
    assert aot.get("autograd_cache_hit") == 1 and not aot.get("autograd_cache_miss"), (inductor, aot)
    assert not inductor.get("select_algorithm_autotune") and not inductor.get("coordesc_tuning_bench"), inductor
    # What the build records in the manifest (decode_tuning): the kept artifacts, the engine's compile.
    assert compiled.artifact_counts(artifacts).get("inductor") == 1 and record["artifacts"].get("inductor") == 1
    assert engine.compile_counts[0]["fxgraph_cache_hit"] == 1
    assert sum(engine.compile_counts[0].values()) == 1, engine.compile_counts[0]

    ids = torch.tensor([[7]])
    with torch.no_grad():
        ref = wrapper(ids, models.default_position_ids(ids))
    torch.testing.assert_close(engine.run(0, ids, models.default_position_ids(ids)), ref)


def test_a_loaded_build_compiles_from_a_cache_dir_of_its_own(wrapper, monkeypatch, tmp_path):
    """load_compiled on CUDA: the build's artifacts go into ``<cache dir>/loaded/<content hash>``, and the engine's
    compile hits them there. Two builds of one model share cache keys, so in one shared dir a lookup could take
    another build's entry (compiled.build_cache_dir)."""
    import os

    from torch._inductor.utils import clear_inductor_caches

    monkeypatch.setattr(compiled, "replay_ms", lambda runner, replays=0: 1.0)
    artifacts, _, _ = compiled.tune_static_profile(wrapper, DECODE.min, torch.device("cpu"), 1)
    torch._dynamo.reset()
    compiled.clear_recorded_artifacts()
    clear_inductor_caches()  # nothing in memory: the compile below must find the artifacts on disk
    base = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(base))
    with compiled.build_cache_dir({"content_hash": "0123456789abcdef0123"}) as own:
        assert own == base / "loaded" / "0123456789abcdef" and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(own)
        torch.compiler.load_cache_artifacts(artifacts)
        counters.clear()
        compiled.CompiledEngine(wrapper, DECODE_ONLY, torch.device("cpu"))
        inductor = dict(counters["inductor"])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(base)  # restored
    assert inductor.get("fxgraph_cache_hit") == 1 and not inductor.get("fxgraph_cache_miss"), inductor
    assert any((own / "fxgraph").rglob("*")), "the artifacts were not loaded into the build's own dir"
    assert not (base / "fxgraph").exists(), "the shared dir received the build's graphs"

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")  # unset before: unset after (inductor sets its default itself)
    with compiled.build_cache_dir({}) as unversioned:
        assert unversioned.name == "unversioned"
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
