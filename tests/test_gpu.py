"""GPU-only: the torch-compile runtime on CUDA (tiny model). Skips without a GPU."""

from __future__ import annotations

import pytest
import torch

from llmprofiles.build import build
from llmprofiles.models import LastTokenLM, default_position_ids, load_model
from llmprofiles.runtimes.compiled import StaticGraphRunner
from llmprofiles.runtimes.load import load_engine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("repo") / "llm"
    # Artifacts written on the CPU (weights + config); every profile is compiled once, at load on the GPU.
    build("tiny", "multi", "torch-compile", "cpu", "float16", model_dir)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    engine = load_engine(model_dir / "1", "cuda:0")
    torch.cuda.synchronize()
    engine.held_bytes = torch.cuda.memory_allocated() - base
    return engine


@pytest.fixture(scope="module")
def eager():
    return LastTokenLM(load_model("tiny", torch.float16, "cuda"))


@pytest.mark.parametrize("seq, expected", [(1, 0), (2, 1), (256, 1), (512, 1)])
def test_first_fit_on_cuda(engine, seq, expected):
    ids = torch.randint(0, engine.vocab_size, (1, seq))
    assert engine.select({"input_ids": ids.shape, "position_ids": ids.shape}) == expected


def test_decode_profile_is_a_cuda_graph(engine):
    assert isinstance(engine.runners[0], StaticGraphRunner) and engine.runners[0].graph is not None


@pytest.mark.parametrize("seq", [1, 17, 256, 512])
def test_logits_match_eager_fp16(engine, eager, seq):
    for trial in range(5):
        ids = torch.randint(0, engine.vocab_size, (1, seq), generator=torch.Generator().manual_seed(trial))
        pos = default_position_ids(ids)
        got = engine.run(engine.select({"input_ids": ids.shape, "position_ids": pos.shape}), ids, pos).float()
        with torch.no_grad():
            ref = eager(ids.cuda(), pos.cuda()).float()
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)
        assert got.argmax() == ref.argmax()


def test_the_decode_graph_runs_the_mlp_kernels_and_prefill_does_not(engine):
    """The static decode profile was compiled under fusion.mlp_kernels: its graph replays generate's matrix-vector
    kernel (Triton's ``_gemv``) twice a layer. The dynamic prefill profile keeps inductor's MLP, even at [1, 1]."""
    from torch.profiler import ProfilerActivity, profile

    layers = engine.wrapper.model.config.num_hidden_layers

    def gemv_launches(index):
        ids = torch.tensor([[7]])
        engine.run(index, ids, default_position_ids(ids))  # warm
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            engine.run(index, ids, default_position_ids(ids))
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages() if e.key.startswith("_gemv"))

    assert gemv_launches(0) == 2 * layers
    assert gemv_launches(1) == 0


def test_replayed_graph_follows_new_inputs(engine, eager):
    outs = []
    for token in (3, 4):
        ids = torch.tensor([[token]])
        outs.append(engine.run(0, ids, default_position_ids(ids)))
    assert not torch.equal(outs[0], outs[1])


def test_profiles_share_one_copy_of_the_weights(engine):
    assert all(getattr(r.fn, "_orig_mod", None) is engine.wrapper for r in engine.runners)
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.wrapper.parameters())
    # Two profiles, weights held once: plus graph pools and workspaces, far below two copies.
    assert engine.held_bytes < 1.3 * weight_bytes + 32 * 2**20, (engine.held_bytes, weight_bytes)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs compute capability 9 or later")
def test_decode_compiled_with_pdl_matches_eager_and_follows_new_inputs(eager):
    """The option the build's tuning may keep (compiled.PDL): its probe passes and its decode graph is right."""
    import copy
    import subprocess
    import sys

    from llmprofiles.profiles.sets import PROFILE_SETS
    from llmprofiles.runtimes import compiled

    probe = subprocess.run([sys.executable, "-m", "llmprofiles.runtimes.pdl_probe"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    torch._dynamo.reset()
    wrapper = copy.deepcopy(eager)
    decode_only = compiled.static_profile((1, 1))
    engine = compiled.CompiledEngine(wrapper, decode_only, torch.device("cuda"), static_options={"static": compiled.PDL})
    assert PROFILE_SETS["multi"].ranges(0)["input_ids"].is_static
    for token in (3, 4, 5):
        ids = torch.tensor([[token]])
        pos = default_position_ids(ids) + token
        got = engine.run(0, ids, pos).float()
        with torch.no_grad():
            ref = eager(ids.cuda(), pos.cuda()).float()
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)
