"""Fused projections (one GEMM per q/k/v and gate/up group) and the pass that dedupes their products."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from llmprofiles.build import build
from llmprofiles.models import LastTokenLM, default_position_ids, load_model
from llmprofiles.runtimes.fusion import (DedupeProducts, Projection, ProjectionSlice, fuse_projections,
                                         single_query_attention, use_gemv, use_single_query_attention)
from llmprofiles.runtimes.load import load_engine

MM = torch.ops.aten.mm.default


def weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_fused_model_computes_the_same_logits_with_the_same_weight_bytes():
    model = LastTokenLM(load_model("tiny", torch.float32))
    ids = torch.randint(0, 32000, (1, 9), generator=torch.Generator().manual_seed(0))
    pos = default_position_ids(ids)
    with torch.no_grad():
        before, bytes_before = model(ids, pos), weight_bytes(model)
        layers = model.model.config.num_hidden_layers
        assert fuse_projections(model) == 2 * layers
        after = model(ids, pos)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert weight_bytes(model) == bytes_before  # originals dropped: still one copy
    attn = model.model.model.layers[0].self_attn
    assert isinstance(attn.k_proj, ProjectionSlice) and attn.k_proj.fused is attn.q_proj.fused
    assert fuse_projections(model) == 0  # already fused: nothing left to fuse


def test_mismatched_siblings_are_left_alone():
    block = nn.Module()
    block.q_proj, block.k_proj, block.v_proj = nn.Linear(8, 4), nn.Linear(8, 4, bias=False), nn.Linear(8, 4)
    assert fuse_projections(block) == 0
    assert isinstance(block.k_proj, nn.Linear)


def test_gemv_model_computes_the_same_logits_with_the_same_weight_bytes():
    model = LastTokenLM(load_model("tiny", torch.float32))
    fuse_projections(model)
    decode = torch.randint(0, 32000, (1, 1), generator=torch.Generator().manual_seed(1))
    prefill = torch.randint(0, 32000, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = [model(ids, default_position_ids(ids)) for ids in (decode, prefill)]
        bytes_before = weight_bytes(model)
        layers = model.model.config.num_hidden_layers
        # per layer: q/k/v and gate/up (fused) + o_proj + down_proj; then lm_head
        assert use_gemv(model) == 4 * layers + 1
        after = [model(ids, default_position_ids(ids)) for ids in (decode, prefill)]
    for got, want in zip(after, before):  # prefill too: its lm_head sees the last token only
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert weight_bytes(model) == bytes_before
    lm_head = model.model.lm_head
    assert isinstance(lm_head, Projection) and lm_head.weight is model.model.model.embed_tokens.weight  # still tied


def test_gemv_applies_to_one_token_only():
    linear = nn.Linear(8, 5)
    proj = Projection(linear.weight, linear.bias)
    proj.gemv = True
    one, several = torch.randn(1, 1, 8), torch.randn(1, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(proj(one), linear(one))
        assert proj(one).shape == (1, 1, 5)
        assert torch.equal(proj(several), linear(several))  # the GEMM, bit for bit


def count(graph: torch.fx.Graph, target) -> int:
    return sum(1 for n in graph.nodes if n.target is target)


class GroupedAttention(nn.Module):
    num_key_value_groups = 2  # what sdpa_attention_forward reads to repeat the KV heads


@pytest.mark.parametrize("keys", [1, 7])
@pytest.mark.parametrize("masked", [False, True])
def test_single_query_attention_matches_sdpa(keys, masked):
    g = torch.Generator().manual_seed(keys)
    q, k, v = (torch.randn(2, heads, seq, 16, generator=g) for heads, seq in ((4, 1), (2, keys), (2, keys)))
    mask = None
    if masked:  # a sliding window: the oldest key is out of it (for one key, nothing is)
        mask = torch.ones(2, 1, 1, keys, dtype=torch.bool)
        mask[..., 0] = keys == 1
    got, _ = single_query_attention(GroupedAttention(), q, k, v, mask, scaling=0.3)
    k2, v2 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    want = F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask, scale=0.3).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.shape == (2, 1, 4, 16)


def test_single_query_attention_serves_one_token_without_sdpa(monkeypatch):
    model = LastTokenLM(load_model("tiny", torch.float32))
    ref = LastTokenLM(load_model("tiny", torch.float32))
    assert use_single_query_attention(model.model)
    assert not use_single_query_attention(model.model)  # switched already
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(a[0].shape[2]) or sdpa(*a, **kw))
    for seq, pos in ((1, 0), (1, 300), (6, 0)):
        ids = torch.randint(0, 32000, (1, seq), generator=torch.Generator().manual_seed(seq + pos))
        p = default_position_ids(ids) + pos
        with torch.no_grad():
            torch.testing.assert_close(model(ids, p), ref(ids, p), atol=1e-5, rtol=1e-5)
    layers = model.model.config.num_hidden_layers
    # The reference runs SDPA for every token count; the switched model for the 6-token prompt only.
    assert calls.count(1) == 2 * layers and calls.count(6) == 2 * layers


def test_pass_merges_identical_products_and_keeps_the_result():
    def f(x, w):
        return (x @ w.t())[:, :2] + (x @ w.t())[:, 2:4]

    x, w = torch.randn(3, 5), torch.randn(4, 5)
    gm = make_fx(f)(x, w)
    assert count(gm.graph, MM) == 2
    DedupeProducts()(gm.graph)
    gm.recompile()
    assert count(gm.graph, MM) == 1
    torch.testing.assert_close(gm(x, w), f(x, w))


def test_pass_keeps_products_of_different_weights():
    gm = make_fx(lambda x, a, b: x @ a.t() + x @ b.t())(torch.randn(3, 5), torch.randn(4, 5), torch.randn(4, 5))
    DedupeProducts()(gm.graph)
    assert count(gm.graph, MM) == 2


@pytest.fixture(scope="module")
def compiled_engine(tmp_path_factory):
    from torch._dynamo.utils import counters

    model_dir = tmp_path_factory.mktemp("repo") / "llm"
    build("tiny", "multi", "torch-compile", "cpu", "float32", model_dir)
    before = counters["stats"]["unique_graphs"], counters["aot_autograd"]["total"]
    engine = load_engine(model_dir / "1", "cpu")  # compiles every profile
    engine.compiles = {"graphs": counters["stats"]["unique_graphs"] - before[0],
                       "aot_traces": counters["aot_autograd"]["total"] - before[1]}
    return engine


def test_each_compiled_graph_is_traced_once(compiled_engine):
    # decode, prefill at its opt, and prefill at seq 1 (torch.compile specialises size 1)
    assert compiled_engine.compiles["graphs"] == 3
    # A Dynamo restart traces a graph twice; symbolic float attributes caused one per dynamic graph.
    assert compiled_engine.compiles["aot_traces"] == compiled_engine.compiles["graphs"], compiled_engine.compiles


@pytest.mark.parametrize("seq", [1, 7, 130])
def test_compiled_engine_on_cpu_matches_eager(compiled_engine, seq):
    eager = LastTokenLM(load_model("tiny", torch.float32))
    ids = torch.randint(0, 32000, (1, seq), generator=torch.Generator().manual_seed(seq))
    pos = default_position_ids(ids)
    got = compiled_engine.run(compiled_engine.select({"input_ids": ids.shape, "position_ids": pos.shape}), ids, pos)
    with torch.no_grad():
        torch.testing.assert_close(got, eager(ids, pos), atol=1e-4, rtol=1e-4)
    assert isinstance(compiled_engine.wrapper.model.model.layers[0].mlp.up_proj, ProjectionSlice)


def test_compiled_layout_gives_every_request_form_one_layout():
    from llmprofiles.runtimes.compiled import compiled_layout

    ids = torch.zeros(1, 5, dtype=torch.int64)
    own = torch.arange(5).reshape(1, 5).clone()
    assert compiled_layout(own) is own  # already row-major, not a view: no copy
    for pos in (default_position_ids(ids), torch.from_numpy(np.arange(5)[None, :])):  # a view; a stride-0 batch dim
        got = compiled_layout(pos)
        assert got._base is None and got.stride() == (5, 1) and torch.equal(got, pos)


def test_requests_after_load_compile_nothing(compiled_engine):
    """Issue 12: ready means warm. Each request form model.py can hand the handler, at sizes
    the warm-up did not use, from another thread, runs without a Dynamo compile."""
    import threading

    from torch._dynamo.utils import counters
    from torch.utils.dlpack import from_dlpack

    from llmprofiles.serving.llm import RequestHandler

    handler = RequestHandler(compiled_engine)

    def forms(seq):
        ids = from_dlpack(np.zeros((1, seq), dtype=np.int64))  # as Triton hands model.py its inputs
        yield ids, None  # serving.validate builds the default position_ids
        yield ids, from_dlpack(np.arange(seq, dtype=np.int64).reshape(1, seq))  # sent by the client
        yield ids, torch.from_numpy(np.arange(seq, dtype=np.int64)[None, :])  # stride-0 batch dim

    def serve_all(seqs):
        for seq in seqs:
            for ids, pos in forms(seq):
                handler(ids, pos, None)

    before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        serve_all([128, 1, 300, 512, 2])
        errors = []

        def other_thread():  # Triton may call execute on another thread than initialize
            try:
                serve_all([64])
            except Exception as e:
                errors.append(e)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert not errors, errors
    assert counters["stats"]["unique_graphs"] == before


def test_the_mlp_kernel_computes_a_single_token_of_each_fused_gemma_mlp_with_the_same_logits(monkeypatch):
    """use_mlp_kernel switches every gated MLP whose gate/up are fused; under mlp_kernels a single token then goes
    through the MLP kernels (in Triton's interpreter here, where Triton is installed; else their PyTorch form),
    several tokens, unfused MLPs and calls outside mlp_kernels do not. The logits are the same either way."""
    from llmprofiles.generation import mlp
    from llmprofiles.runtimes.fusion import mlp_kernels, use_mlp_kernel

    model = LastTokenLM(load_model("tiny", torch.float32))
    layers = model.model.config.num_hidden_layers
    assert use_mlp_kernel(model) == 0  # gate and up not fused yet: left alone
    fuse_projections(model)
    calls = []
    real = mlp.mlp_op
    monkeypatch.setattr(mlp, "mlp_op", lambda *a: calls.append(a[0].shape) or real(*a))
    decode = torch.randint(0, 32000, (1, 1), generator=torch.Generator().manual_seed(1))
    prefill = torch.randint(0, 32000, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = [model(ids, default_position_ids(ids)) for ids in (decode, prefill)]
        assert use_mlp_kernel(model) == layers and use_mlp_kernel(model) == 0  # once only
        assert torch.equal(model(decode, default_position_ids(decode)), before[0]) and calls == []  # outside: its own
        with mlp_kernels():
            after_decode = model(decode, default_position_ids(decode))
            assert len(calls) == (layers if mlp.available(torch.device("cpu")) else 0)
            calls.clear()
            after_prefill = model(prefill, default_position_ids(prefill))
            assert calls == []
    torch.testing.assert_close(after_decode, before[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(after_prefill, before[1])


def test_an_engine_compiles_its_static_profile_with_the_mlp_kernels_and_persistent_rows_and_its_dynamic_one_without(
        monkeypatch):
    """CompiledEngine: the static decode profile compiles under fusion.persistent_rows and fusion.mlp_kernels, with the
    rows' cache key in its options; the dynamic prefill profile under neither. The setting is baked into each compile,
    unguarded: at the same [1, 1] shape the decode profile runs the MLP kernels (where Triton's interpreter is
    installed) and the prefill profile does not, and neither recompiles (the engine's warm check raises if one does)."""
    from llmprofiles.generation import mlp
    from llmprofiles.profiles.sets import PROFILE_SETS
    from llmprofiles.runtimes import compiled, fusion

    entered, options = [], []
    rows, kernels, compile_ = fusion.persistent_rows, fusion.mlp_kernels, torch.compile
    monkeypatch.setattr(fusion, "persistent_rows", lambda limit=None: entered.append(("rows", limit)) or rows(limit))
    monkeypatch.setattr(fusion, "mlp_kernels", lambda on=True: entered.append(("mlp", on)) or kernels(on))
    monkeypatch.setattr(torch, "compile", lambda *a, **k: options.append(k.get("options", {})) or compile_(*a, **k))
    profiles = PROFILE_SETS["multi"]
    assert [profiles.ranges(i)["input_ids"].is_static for i in range(2)] == [True, False]
    model = LastTokenLM(load_model("tiny", torch.float32))
    engine = compiled.CompiledEngine(model, profiles, torch.device("cpu"), cuda_graphs=False)
    assert entered == [("rows", None), ("mlp", True), ("rows", 0), ("mlp", False)]
    key = fusion.rows_cache_key()["post_grad_custom_post_pass"].uuid()
    assert [getattr(o.get("post_grad_custom_post_pass"), "uuid", lambda: None)() for o in options] == [key, None]
    calls = []
    gemv = mlp.gemv
    monkeypatch.setattr(mlp, "gemv", lambda *a, **k: calls.append(a[1].shape) or gemv(*a, **k))
    ids = torch.tensor([[5]])
    logits = []
    for profile in (0, 1):
        calls.clear()
        logits.append(engine.run(profile, ids, default_position_ids(ids)))
        expected = 2 * model.model.config.num_hidden_layers if profile == 0 and mlp.available(ids.device) else 0
        assert len(calls) == expected, (profile, calls)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)
