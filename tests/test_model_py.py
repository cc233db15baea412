"""model.py's Triton contract, run without Triton: one response per request, in order.

A minimal stand-in for ``triton_python_backend_utils`` (the module Triton injects
into the stub) lets execute() run in-process against the real built engine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from conftest import REPO, require_built


class FakeTensor:
    def __init__(self, name, capsule_or_tensor):
        self.name = name
        self.tensor = capsule_or_tensor if isinstance(capsule_or_tensor, torch.Tensor) else from_dlpack(capsule_or_tensor)

    @classmethod
    def from_dlpack(cls, name, capsule):
        return cls(name, capsule)

    def to_dlpack(self):
        return to_dlpack(self.tensor)

    def shape(self):
        return list(self.tensor.shape)


class FakeRequest:
    def __init__(self, inputs: dict, parameters: dict | None = None):
        self.inputs = {k: FakeTensor(k, v) for k, v in inputs.items()}
        self._parameters = json.dumps(parameters or {})

    def parameters(self):
        return self._parameters


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, msg, code):
        self.msg, self.code = msg, code


class FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name: t.tensor for t in output_tensors}
        self.error = error


class FakeMetricFamily:
    COUNTER, HISTOGRAM = "counter", "histogram"

    def __init__(self, name, description, kind):
        self.name = name

    def Metric(self, labels, buckets=None):
        m = types.SimpleNamespace(value=0, observed=[])
        m.increment = lambda v: setattr(m, "value", m.value + v)
        m.observe = m.observed.append
        return m


@pytest.fixture(scope="module")
def model():
    require_built("llm")
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.InferenceResponse, pb.TritonError, pb.MetricFamily = FakeTensor, FakeResponse, FakeError, FakeMetricFamily
    pb.get_input_tensor_by_name = lambda req, name: req.inputs.get(name)
    pb.Logger = types.SimpleNamespace(log_info=lambda m: None, log_error=lambda m: None)
    sys.modules["triton_python_backend_utils"] = pb
    spec = importlib.util.spec_from_file_location("llm_model", REPO / "llm" / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.TritonPythonModel()
    m.initialize({"model_config": json.dumps({"name": "llm"}), "model_instance_kind": "CPU",
                  "model_instance_device_id": "0", "model_repository": str(REPO / "llm"), "model_version": "1"})
    yield m
    del sys.modules["triton_python_backend_utils"]


def ids(seq, value=5):
    return torch.full((1, seq), value, dtype=torch.int64)


def test_execute_answers_every_request_in_order_and_bad_ones_alone(model):
    requests = [
        FakeRequest({"input_ids": ids(1)}),
        FakeRequest({"input_ids": ids(600)}),
        FakeRequest({"input_ids": ids(64)}),
        FakeRequest({"input_ids": ids(2)}, {"optimization_profile": "decode"}),
        FakeRequest({"input_ids": ids(3), "position_ids": torch.zeros(1, 4, dtype=torch.int64)}),
        FakeRequest({"input_ids": ids(1, value=-3)}),
        FakeRequest({"input_ids": ids(1)}, {"optimization_profile": "prefill"}),
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    served = [(r.error is None, r.outputs.get("profile_index", torch.tensor([-1])).item()) for r in responses]
    assert served == [(True, 0), (False, -1), (True, 1), (False, -1), (False, -1), (False, -1), (True, 1)]
    assert {r.error.code for r in responses if r.error} == {"INVALID_ARG"}
    assert "600" in responses[1].error.msg and "token id -3" in responses[5].error.msg


def test_metrics_follow_the_profile_that_served(model):
    before = [m.value for m in model.requests]
    model.execute([FakeRequest({"input_ids": ids(1)}), FakeRequest({"input_ids": ids(9)}), FakeRequest({"input_ids": ids(1)})])
    assert [m.value - b for m, b in zip(model.requests, before)] == [2, 1]


def test_engine_fault_fails_only_that_request(model, monkeypatch):
    real = model.engine._forward

    def flaky(index, input_ids, position_ids):
        if input_ids.shape[1] == 7:
            raise RuntimeError("boom")
        return real(index, input_ids, position_ids)

    monkeypatch.setattr(model.engine, "_forward", flaky)
    responses = model.execute([FakeRequest({"input_ids": ids(7)}), FakeRequest({"input_ids": ids(1)})])
    assert responses[0].error.code == "INTERNAL" and "boom" in responses[0].error.msg
    assert responses[1].error is None


class MetadataOnlyTensor(FakeTensor):
    """A tensor whose metadata declares a huge shape; building it would be the allocation issue 13 is about."""

    def __init__(self, name, shape):
        self.name, self._shape = name, list(shape)

    def shape(self):
        return self._shape

    def to_dlpack(self):
        raise AssertionError(f"{self.name} was materialised before its declared shape {self._shape} was checked")


def test_position_ids_without_input_ids_is_invalid_arg_and_counted(model):
    """Issue 13 item 4: was INTERNAL "'NoneType' object has no attribute 'dim'" and not counted."""
    before = model.invalid.value
    (r,) = model.execute([FakeRequest({"position_ids": torch.zeros(1, 1, dtype=torch.int64)})])
    assert r.error.code == "INVALID_ARG" and "input_ids is required" in r.error.msg, r.error.msg
    assert model.invalid.value == before + 1


@pytest.mark.parametrize("shape", [(1, 1 << 40), (1 << 62, 4), (1, 513)])
def test_huge_declared_shape_is_refused_from_metadata_alone(model, shape):
    """Issue 13 item 7: no tensor (input or default position_ids) is built before the shape check."""
    request = FakeRequest({})
    request.inputs = {"input_ids": MetadataOnlyTensor("input_ids", shape)}
    (r,) = model.execute([request])
    assert r.error.code == "INVALID_ARG" and "fit no optimization profile" in r.error.msg, r.error.msg


def test_position_id_at_or_past_max_position_embeddings_is_invalid_arg(model):
    limit = model.handler.max_positions
    assert limit == 32768  # the tiny preset's max_position_embeddings, read from model_config.json
    ok, bad = (FakeRequest({"input_ids": ids(1), "position_ids": torch.full((1, 1), p, dtype=torch.int64)})
               for p in (limit - 1, 10**12))
    r_ok, r_bad = model.execute([ok, bad])
    assert r_ok.error is None
    assert r_bad.error.code == "INVALID_ARG"
    assert "position id 1000000000000 in position_ids is out of range; allowed [0, 32767]" in r_bad.error.msg


def test_huge_profile_value_gives_a_short_error(model):
    """Issue 13 item 5: a 10 MB optimization_profile came back whole in the error."""
    (r,) = model.execute([FakeRequest({"input_ids": ids(1)}, {"optimization_profile": "x" * 10_000_000})])
    assert r.error.code == "INVALID_ARG" and len(r.error.msg) < 300, len(r.error.msg)
    assert "10000" in r.error.msg and "allowed" in r.error.msg
