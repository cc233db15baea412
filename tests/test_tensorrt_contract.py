"""Contract tests for the TensorRT runtime, on CPU, with a TensorRT stand-in.

TensorRT cannot be installed on the project's machines. These tests hold the
runtime to the rules of the TensorRT API it is written against (enforced by
``tensorrt_standin``) and to the project's profile semantics; ``make
check-tensorrt`` repeats the checks against real TensorRT on a GPU.

Run::

    python -m pytest tests/test_tensorrt_contract.py -q
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tensorrt_standin as standin
from llmprofiles.manifest import EngineLoadError, write_manifest
from llmprofiles.profiles.selection import SelectionError
from llmprofiles.profiles.sets import MULTI, SINGLE
from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange
from llmprofiles.runtimes import tensorrt as rt
from llmprofiles.runtimes.load import load_engine

VOCAB = 8
DECODE, PREFILL = 0, 1


def plan_inputs(profiles: ProfileSet) -> dict[str, list[tuple]]:
    return {name: [(r.min, r.opt, r.max) for r in (profiles.ranges(i)[name] for i in range(len(profiles)))]
            for name in profiles.input_names}


def write_version(tmp_path: Path, engine_bytes: bytes, manifest_profiles: ProfileSet = MULTI, **fields) -> Path:
    version_dir = tmp_path / "llm" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / rt.ENGINE_FILE).write_bytes(engine_bytes)
    write_manifest(version_dir, {"runtime": "tensorrt", "device": "cpu", "dtype": "float16", "vocab_size": VOCAB,
                                 "profiles": manifest_profiles.to_dict(), "tensorrt_version": standin.VERSION,
                                 **fields}, [rt.ENGINE_FILE])
    return version_dir


def request(seq: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(batch * seq, dtype=torch.int64).reshape(batch, seq) % VOCAB
    pos = torch.arange(seq, dtype=torch.int64).expand(batch, seq)
    return ids, pos


def shapes(seq: int) -> dict[str, tuple[int, int]]:
    return {"input_ids": (1, seq), "position_ids": (1, seq)}


@pytest.fixture
def trt(monkeypatch):
    module = standin.tensorrt_module()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.fixture
def engine(trt, tmp_path):
    """The MULTI engine loaded through load_engine, as model.py loads it."""
    return load_engine(write_version(tmp_path, standin.serialize_engine(plan_inputs(MULTI), VOCAB)), "cpu")


# --- build: ProfileSet -> profiled torch_tensorrt.Input ----------------------------------

def test_input_kwargs_declare_every_profile_of_every_input_in_order():
    kwargs = rt.trt_input_kwargs(MULTI)
    assert [kw["name"] for kw in kwargs] == ["input_ids", "position_ids"]
    for kw in kwargs:
        assert kw["dtype"] is torch.int64
        assert set(kw) == {"name", "dtype", "profiles"}  # no single-range shape beside profiles
        assert len(kw["profiles"]) == len(MULTI) == 2
        for i, p in enumerate(kw["profiles"]):
            r = MULTI.ranges(i)[kw["name"]]
            assert (p["min_shape"], p["opt_shape"], p["max_shape"]) == (r.min, r.opt, r.max)
    assert kwargs[0]["profiles"][DECODE] == {"min_shape": (1, 1), "opt_shape": (1, 1), "max_shape": (1, 1)}
    assert kwargs[0]["profiles"][PREFILL] == {"min_shape": (1, 1), "opt_shape": (1, 256), "max_shape": (1, 512)}


@pytest.mark.parametrize("profiles", [MULTI, SINGLE], ids=["multi", "single"])
def test_input_kwargs_union_envelope_is_the_profile_set_envelope(profiles):
    # Torch-TensorRT derives the export envelope from `profiles`: elementwise min
    # of mins, max of maxes, opt from profile 0. It must be what build.py exported over.
    for kw in rt.trt_input_kwargs(profiles):
        ps = kw["profiles"]
        union = ShapeRange(tuple(map(min, zip(*(p["min_shape"] for p in ps)))), ps[0]["opt_shape"],
                           tuple(map(max, zip(*(p["max_shape"] for p in ps)))))
        assert union == profiles.envelope()[kw["name"]]


def test_input_without_profiles_gives_its_single_range_or_static_shape():
    seq = (ShapeRange((1, 1), (1, 1), (1, 1)), ShapeRange((1, 1), (1, 8), (1, 16)))
    ps = ProfileSet(("decode", "prefill"), (
        InputSpec("input_ids", profiles=seq),
        InputSpec("position_ids", shape=ShapeRange((1, 1), (1, 4), (1, 16))),
        InputSpec("scale", shape=ShapeRange((1,), (1,), (1,)), dtype="float32"),
    ))
    ids, pos, scale = rt.trt_input_kwargs(ps)
    assert len(ids["profiles"]) == 2
    assert pos == {"name": "position_ids", "dtype": torch.int64,
                   "min_shape": (1, 1), "opt_shape": (1, 4), "max_shape": (1, 16)}
    assert scale == {"name": "scale", "dtype": torch.float32, "shape": (1,)}


def test_build_compiles_union_export_with_profiled_inputs_into_an_engine_that_loads(trt, monkeypatch, tmp_path):
    tt = standin.torch_tensorrt_module(VOCAB)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", tt)
    version_dir = tmp_path / "llm" / "1"
    version_dir.mkdir(parents=True)
    exported = object()  # the compile call is a stand-in: any export object passes through
    config = SimpleNamespace(sliding_window=512)
    ctx = SimpleNamespace(exported=exported, profiles=MULTI, version_dir=version_dir, dtype=torch.float16,
                          device=torch.device("cuda"), wrapper=SimpleNamespace(model=SimpleNamespace(config=config)))
    steps = []
    monkeypatch.setattr(rt, "on_device", lambda device: rt.contextlib.nullcontext())  # no GPU here

    artifacts, extra = rt.build_tensorrt(ctx, lambda what: steps.append(what) or rt.contextlib.nullcontext())

    (call,) = tt.calls
    assert call["exported_program"] is exported and call["min_block_size"] == 1
    assert call["require_full_compilation"] and call["attn_bias_is_causal"]  # 512 <= sliding window 512
    assert [vars(i) for i in call["arg_inputs"]] == rt.trt_input_kwargs(MULTI)
    assert artifacts == [rt.ENGINE_FILE] and (version_dir / rt.ENGINE_FILE).is_file()
    assert extra["tensorrt_version"] == standin.VERSION and extra["torch_tensorrt_version"] == tt.__version__
    assert len(steps) == 2
    write_manifest(version_dir, {"runtime": "tensorrt", "device": "cpu", "dtype": "float16", "vocab_size": VOCAB,
                                 "profiles": MULTI.to_dict(), **extra}, artifacts)
    loaded = load_engine(version_dir, "cpu")
    assert loaded.profiles == rt.read_profile_table(trt, loaded.cuda_engine, MULTI.names)
    logits = loaded.run(DECODE, *request(1))
    assert logits.dtype == torch.float16 and torch.equal(logits.double(), standin.expected_logits(*request(1), VOCAB))


def test_attention_bias_is_causal_only_while_the_sliding_window_covers_every_sequence():
    assert rt.attention_bias_is_causal(SimpleNamespace(sliding_window=512), 512)
    assert not rt.attention_bias_is_causal(SimpleNamespace(sliding_window=512), 513)
    assert rt.attention_bias_is_causal(SimpleNamespace(), 4096)


@pytest.mark.parametrize("package", ["torch_tensorrt", "tensorrt"])
def test_build_without_tensorrt_packages_names_the_missing_package(monkeypatch, trt, package):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", standin.torch_tensorrt_module(VOCAB))
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(rt.TensorRTUnavailable, match=f"`{package}`"):
        rt.build_tensorrt(SimpleNamespace(device=torch.device("cuda")), None)


def test_build_refuses_cpu_and_non_fp16(monkeypatch, trt):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", standin.torch_tensorrt_module(VOCAB))
    with pytest.raises(SystemExit, match="DEVICE=cuda"):
        rt.build_tensorrt(SimpleNamespace(device=torch.device("cpu"), dtype=torch.float16), None)
    with pytest.raises(SystemExit, match="DTYPE=float16"):
        rt.build_tensorrt(SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32), None)


def test_export_over_union_envelope_serves_decode_and_prefill_shapes():
    """The TensorRT-free part of the build, for real: the tiny model exported over the union."""
    from llmprofiles import models
    from llmprofiles.export import export

    wrapper = models.LastTokenLM(models.load_model("tiny", torch.float32))
    exported = export(wrapper, MULTI.envelope(), wrapper.model.config.vocab_size, torch.device("cpu"))
    # Placeholder names become the engine's TensorRT binding names.
    assert list(exported.graph_signature.user_inputs) == list(MULTI.input_names)
    seq_ranges = {(int(r.lower), int(r.upper)) for r in exported.range_constraints.values()}
    assert (1, 512) in seq_ranges
    module = exported.module()
    for seq in (1, 2, 512):  # decode, and the prefill range's ends
        ids = torch.randint(0, wrapper.model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(seq))
        pos = models.default_position_ids(ids)
        with torch.no_grad():
            torch.testing.assert_close(module(ids, pos), wrapper(ids, pos), rtol=1e-4, atol=1e-4)


@pytest.mark.tensorrt
def test_profiled_torch_tensorrt_inputs_construct_with_every_profile():
    pytest.importorskip("torch_tensorrt", reason="torch_tensorrt (needs TensorRT) is not importable here",
                        exc_type=ImportError)
    inputs = rt.trt_inputs(MULTI)
    for spec, inp in zip(MULTI.inputs, inputs):
        assert len(inp.profiles) == len(MULTI)
        assert tuple(inp.shape["min_shape"]) == MULTI.envelope()[spec.name].min
        assert tuple(inp.shape["max_shape"]) == MULTI.envelope()[spec.name].max


def test_check_tensorrt_without_tensorrt_exits_2_naming_the_package(monkeypatch, capsys):
    from llmprofiles.runtimes import check_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert check_tensorrt.main([]) == 2
    assert "`tensorrt`" in capsys.readouterr().err


# --- load: the engine's table, checked against the manifest -------------------------------

def test_load_without_tensorrt_names_the_missing_package(monkeypatch, tmp_path):
    version_dir = write_version(tmp_path, standin.serialize_engine(plan_inputs(MULTI), VOCAB))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineLoadError, match="`tensorrt`"):
        load_engine(version_dir, "cpu")


def test_load_refuses_engine_with_a_different_profile_count(trt, tmp_path):
    version_dir = write_version(tmp_path, standin.serialize_engine(plan_inputs(SINGLE), VOCAB), MULTI)
    with pytest.raises(EngineLoadError, match=r"1 optimization profile\(s\) but the manifest declares 2"):
        load_engine(version_dir, "cpu")


@pytest.mark.parametrize("field, prefill", [
    ("min", ((1, 2), (1, 256), (1, 512))),
    ("opt", ((1, 1), (1, 128), (1, 512))),
    ("max", ((1, 1), (1, 256), (1, 511))),
])
def test_load_refuses_engine_whose_profile_range_differs(trt, tmp_path, field, prefill):
    inputs = plan_inputs(MULTI)
    inputs["position_ids"][PREFILL] = prefill
    version_dir = write_version(tmp_path, standin.serialize_engine(inputs, VOCAB))
    with pytest.raises(EngineLoadError, match=rf"profile 1 \(prefill\), input 'position_ids': engine {field}_shape"):
        load_engine(version_dir, "cpu")


def test_load_refuses_engine_with_differently_named_inputs(trt, tmp_path):
    inputs = plan_inputs(MULTI)
    inputs["l_input_ids_"] = inputs.pop("input_ids")
    version_dir = write_version(tmp_path, standin.serialize_engine(inputs, VOCAB))
    with pytest.raises(EngineLoadError, match="engine inputs"):
        load_engine(version_dir, "cpu")


def test_load_refuses_engine_built_with_another_tensorrt_version(trt, tmp_path):
    version_dir = write_version(tmp_path, standin.serialize_engine(plan_inputs(MULTI), VOCAB),
                                tensorrt_version="10.0.0")
    with pytest.raises(EngineLoadError, match="built with TensorRT 10.0.0"):
        load_engine(version_dir, "cpu")


def test_load_refuses_a_device_the_engine_was_not_built_for(trt, tmp_path):
    version_dir = write_version(tmp_path, standin.serialize_engine(plan_inputs(MULTI), VOCAB), device="cuda")
    with pytest.raises(EngineLoadError, match="built for 'cuda'"):
        load_engine(version_dir, "cpu")


def test_load_refuses_a_plan_tensorrt_cannot_deserialize(trt, tmp_path):
    version_dir = write_version(tmp_path, b"not a plan")
    with pytest.raises(EngineLoadError, match="could not deserialize"):
        load_engine(version_dir, "cpu")


def test_load_reads_every_profile_shape_from_the_engine(engine):
    queried = set(engine.cuda_engine.profile_shape_queries)
    assert queried == {(n, i) for n in MULTI.input_names for i in range(len(MULTI))}
    assert engine.profiles == MULTI  # names label the indices; every number came from the engine


def test_selection_follows_the_table_read_from_the_engine(trt):
    # An engine no manifest describes: three profiles, prefill capped at 64.
    table = {"decode": ((1, 1), (1, 1), (1, 1)), "short": ((1, 2), (1, 8), (1, 16)), "long": ((1, 1), (1, 32), (1, 64))}
    plan = standin.serialize_engine({n: list(table.values()) for n in MULTI.input_names}, VOCAB)
    cuda_engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan)
    engine = rt.TensorRTEngine(trt, cuda_engine, tuple(table), VOCAB, torch.device("cpu"))
    assert [engine.select(shapes(s)) for s in (1, 2, 16, 17, 64)] == [0, 1, 1, 2, 2]
    with pytest.raises(SelectionError, match="fit no optimization profile"):
        engine.select(shapes(65))


# --- run: pin the first-fit profile, then shapes, then execute -----------------------------

def test_first_fit_on_multi_engine_picks_decode_for_one_token_and_prefill_otherwise(engine):
    assert [engine.select(shapes(s)) for s in (1, 2, 256, 512)] == [DECODE, PREFILL, PREFILL, PREFILL]
    with pytest.raises(SelectionError):
        engine.select(shapes(513))


def test_decode_prefill_decode_pins_profiles_0_1_0_not_sticky(engine):
    for seq in (1, 300, 1):
        engine.run(engine.select(shapes(seq)), *request(seq))
    context = engine.context
    assert context.executed_profiles == [DECODE, PREFILL, DECODE]
    assert [c[1] for c in context.calls if c[0] == "set_optimization_profile_async"] == [DECODE, PREFILL, DECODE]


def test_same_profile_twice_is_pinned_once(engine):
    for seq in (2, 7, 1, 1):
        engine.run(engine.select(shapes(seq)), *request(seq))
    pins = [c[1] for c in engine.context.calls if c[0] == "set_optimization_profile_async"]
    assert pins == [PREFILL, DECODE]
    assert engine.context.executed_profiles == [PREFILL, PREFILL, DECODE, DECODE]


def test_profile_is_pinned_before_input_shapes_on_every_switch(engine):
    for seq in (1, 5, 1):
        engine.run(engine.select(shapes(seq)), *request(seq))
    calls = [c[0] for c in engine.context.calls]
    # Each call: [pin], shapes and addresses for both inputs, output address, execute.
    runs, current = [], []
    for c in calls:
        current.append(c)
        if c == "execute_async_v3":
            runs.append(current)
            current = []
    assert len(runs) == 3
    for run in runs:
        assert run[0] == "set_optimization_profile_async"
        assert run.count("set_input_shape") == 2 and run[-1] == "execute_async_v3"


def test_out_of_range_shapes_are_rejected_before_reaching_the_engine(engine):
    with pytest.raises(SelectionError, match="outside profile"):
        engine.run(DECODE, *request(2))  # decode is seq == 1 only
    with pytest.raises(SelectionError, match="outside profile"):
        engine.run(PREFILL, *request(513))
    with pytest.raises(SelectionError, match="out of range"):
        engine.run(2, *request(1))
    assert engine.context.calls == []


def test_logits_are_the_engine_output_for_the_request_inputs(engine):
    for seq in (1, 3, 512):
        ids, pos = request(seq)
        pos = pos + 10  # non-default positions must reach the engine too
        logits = engine.run(engine.select(shapes(seq)), ids, pos)
        assert logits.shape == (1, VOCAB) and logits.dtype == torch.float32
        assert torch.equal(logits.double(), standin.expected_logits(ids, pos, VOCAB))


def test_requests_through_the_handler_are_served_by_first_fit_on_the_engine(engine):
    from llmprofiles.serving.llm import BadRequest, RequestHandler

    handler = RequestHandler(engine)
    assert [handler(*request(seq), None).profile_index for seq in (1, 64, 1)] == [DECODE, PREFILL, DECODE]
    assert engine.context.executed_profiles == [DECODE, PREFILL, DECODE]
    with pytest.raises(BadRequest, match="fit no optimization profile"):
        handler(*request(513), None)


def test_int32_engine_inputs_receive_converted_token_ids(trt, tmp_path):
    plan = standin.serialize_engine(plan_inputs(MULTI), VOCAB, input_dtype="INT32")
    engine = load_engine(write_version(tmp_path, plan), "cpu")
    ids, pos = request(4)
    assert torch.equal(engine.run(PREFILL, ids, pos).double(), standin.expected_logits(ids, pos, VOCAB))


# --- the stand-in enforces the rules the tests rely on ------------------------------------

@pytest.fixture
def context(trt):
    plan = standin.serialize_engine(plan_inputs(MULTI), VOCAB)
    return trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan).create_execution_context()


def test_standin_rejects_an_invalid_profile_index(context):
    with pytest.raises(standin.RuleBroken, match="outside"):
        context.set_optimization_profile_async(2, 0)


def test_standin_rejects_shapes_set_before_the_profile(context):
    with pytest.raises(standin.RuleBroken, match="before any set_optimization_profile_async"):
        context.set_input_shape("input_ids", (1, 1))


def test_standin_rejects_shapes_outside_the_active_profile(context):
    context.set_optimization_profile_async(DECODE, 0)
    with pytest.raises(standin.RuleBroken, match="outside profile 0"):
        context.set_input_shape("input_ids", (1, 2))


def test_standin_rejects_execute_before_every_input_shape_is_set(context):
    context.set_optimization_profile_async(PREFILL, 0)
    context.set_input_shape("input_ids", (1, 4))
    context.set_input_shape("position_ids", (1, 4))
    context.set_optimization_profile_async(DECODE, 0)  # a switch drops the shapes
    with pytest.raises(standin.RuleBroken, match="no shape set"):
        context.execute_async_v3(0)
