"""Integration: the real tritonserver serving model_repository/llm over gRPC and HTTP.

Every selection and bad-input case of the model, logits against the eager HF
model, metrics, and the server's health after bad requests.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from llmprofiles.manifest import read_manifest
from llmprofiles.models import LastTokenLM, default_position_ids, load_model
from llmprofiles.profiles.sets import MULTI
from llmprofiles.serving.launcher import metric_sum

from conftest import REPO, free_port

pytestmark = pytest.mark.server

VOCAB = read_manifest(REPO / "llm" / "1", verify=False)["vocab_size"] if (REPO / "llm" / "1" / "manifest.json").is_file() else 32000
DECODE, PREFILL = MULTI.names.index("decode"), MULTI.names.index("prefill")


class Client:
    """One protocol's client with an ``infer(ids, pos, profile) -> (logits, index)`` that raises on error."""

    def __init__(self, protocol: str, server):
        import tritonclient.grpc as grpc
        import tritonclient.http as http

        self.protocol = protocol
        self.mod = grpc if protocol == "grpc" else http
        self.client = self.mod.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)

    def infer(self, ids: np.ndarray, pos: np.ndarray | None = None, profile=None, model: str = "llm"):
        inputs = []
        for name, arr in (("input_ids", ids), ("position_ids", pos)):
            if arr is not None:
                inp = self.mod.InferInput(name, list(arr.shape), "INT64")
                inp.set_data_from_numpy(arr.astype(np.int64))
                inputs.append(inp)
        params = None if profile is None else {"optimization_profile": profile}
        r = self.client.infer(model, inputs, parameters=params)
        return r.as_numpy("logits"), int(r.as_numpy("profile_index")[0])


@pytest.fixture(params=["grpc", "http"])
def client(request, triton_server):
    return Client(request.param, triton_server)


def ids_of(seq: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, seq), dtype=np.int64)


def expect_invalid(client: Client, *args, match: str, **kwargs) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        client.infer(*args, **kwargs)
    msg = str(e.value)
    if client.protocol == "grpc":
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", msg
    else:
        assert e.value.status() == "400", msg
    assert match in msg, msg
    return msg


@pytest.mark.parametrize("seq, expected", [(1, DECODE), (2, PREFILL), (256, PREFILL), (512, PREFILL)])
def test_auto_is_ordered_first_fit(client, seq, expected):
    logits, index = client.infer(ids_of(seq))
    assert index == expected
    assert logits.shape == (1, VOCAB)


def test_auto_is_not_sticky_after_prefill(client):
    assert [client.infer(ids_of(s))[1] for s in (256, 1, 300, 1)] == [PREFILL, DECODE, PREFILL, DECODE]


@pytest.mark.parametrize("choice, seq, expected", [
    ("prefill", 1, PREFILL), ("decode", 1, DECODE), ("1", 1, PREFILL), (1, 1, PREFILL), ("auto", 1, DECODE),
])
def test_manual_choice_overrides_auto(client, choice, seq, expected):
    assert client.infer(ids_of(seq), profile=choice)[1] == expected


@pytest.mark.parametrize("choice, seq, match", [
    ("decode", 2, "outside optimization profile 0"),
    ("prefill", 513, "outside optimization profile 1"),
    ("nope", 1, "'nope' is not a known profile"),
    ("7", 1, "index 7 is out of range"),
    (-1, 1, "index -1 is out of range"),
    ("1.5", 1, "'1.5' is not a known profile"),
])
def test_bad_manual_choice_is_invalid_arg(client, choice, seq, match):
    msg = expect_invalid(client, ids_of(seq), profile=choice, match=match)
    assert "allowed" in msg or "choose another profile" in msg


@pytest.mark.parametrize("shape, match", [((1, 0), "fit no optimization profile"),
                                          ((1, 513), "fit no optimization profile"),
                                          ((2, 4), "fit no optimization profile")])
def test_shape_outside_every_profile_is_invalid_arg(client, shape, match):
    msg = expect_invalid(client, ids_of(shape[1], batch=shape[0]), match=match)
    assert "max [1, 512]" in msg  # names the allowed range


def test_position_ids_shape_mismatch_is_invalid_arg(client):
    expect_invalid(client, ids_of(4), np.zeros((1, 5), dtype=np.int64), match="differs from input_ids shape [1, 4]")


@pytest.mark.parametrize("bad", [-1, VOCAB])
def test_token_id_out_of_vocab_is_invalid_arg(client, bad):
    ids = ids_of(8)
    ids[0, 3] = bad
    expect_invalid(client, ids, match=f"token id {bad} in input_ids is out of range; allowed [0, {VOCAB - 1}]")


@pytest.fixture(scope="module")
def eager():
    manifest = read_manifest(REPO / "llm" / "1", verify=False)
    return LastTokenLM(load_model(manifest["model"], getattr(torch, manifest["dtype"])))


@pytest.mark.parametrize("seq", [1, 7, 256, 512])
def test_logits_match_eager_hf(client, eager, seq):
    ids = ids_of(seq, seed=seq)
    logits, _ = client.infer(ids)
    with torch.no_grad():
        ref = eager(torch.from_numpy(ids), default_position_ids(torch.from_numpy(ids))).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)


def test_explicit_position_ids_are_used(client, eager):
    ids = ids_of(4, seed=3)
    pos = np.array([[17, 18, 20, 40]], dtype=np.int64)
    logits, index = client.infer(ids, pos)
    with torch.no_grad():
        ref = eager(torch.from_numpy(ids), torch.from_numpy(pos)).numpy()
    assert index == PREFILL
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
    # RoPE is relative: the gaps in pos change attention, so logits must differ from 0..3.
    assert not np.allclose(logits, client.infer(ids)[0], atol=1e-4)


def test_single_profile_baseline_serves_decode_on_its_only_profile(client):
    assert client.infer(ids_of(1), model="llm_single")[1] == 0
    expect_invalid(client, ids_of(1), profile="decode", model="llm_single", match="'decode' is not a known profile")


def metric_value(snapshot: dict, name: str, **labels) -> float:
    """One series from ``TritonServer.metrics()``; a missing one fails the test by name."""
    value = metric_sum(snapshot, name, **labels)
    assert value is not None, f"no metric {name} with {labels} in {sorted({n for n, _ in snapshot})}"
    return value


def test_metrics_count_requests_and_latency_per_profile(triton_server):
    c = Client("grpc", triton_server)
    before = triton_server.metrics()
    for _ in range(3):
        c.infer(ids_of(1))
    c.infer(ids_of(64))
    after = triton_server.metrics()
    for profile, n in (("decode", 3), ("prefill", 1)):
        for name in ("llm_profile_requests_total", "llm_profile_latency_ms_count"):
            delta = metric_value(after, name, model="llm", profile=profile) - metric_value(before, name, model="llm", profile=profile)
            assert delta == n, (name, profile)


def test_server_healthy_and_serving_after_bad_requests(triton_server):
    c = Client("http", triton_server)
    before = metric_value(triton_server.metrics(), "llm_profile_invalid_requests_total", model="llm")
    for bad, match in (((ids_of(600),), "fit no optimization profile"), ((ids_of(2), None, "decode"), "outside"),
                       ((np.full((1, 3), VOCAB),), "out of range")):
        expect_invalid(c, *bad, match=match)
    assert triton_server.is_ready()
    assert c.client.is_model_ready("llm")
    assert c.infer(ids_of(1))[1] == DECODE
    assert metric_value(triton_server.metrics(), "llm_profile_invalid_requests_total", model="llm") == before + 3


def test_concurrent_mix_of_good_and_bad_requests_each_get_their_own_answer(triton_server):
    import tritonclient.grpc as grpc

    c = grpc.InferenceServerClient(triton_server.grpc_url)
    cases = [(ids_of(1), None), (ids_of(700), "fit no"), (ids_of(128), None), (ids_of(2), "outside"), (ids_of(1), None)]
    results = {}
    for i, (ids, _) in enumerate(cases):
        inp = grpc.InferInput("input_ids", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        params = {"optimization_profile": "decode"} if ids.shape[1] == 2 else None
        c.async_infer("llm", [inp], callback=lambda result, error, i=i: results.__setitem__(i, (result, error)), parameters=params)
    import time

    deadline = time.time() + 60
    while len(results) < len(cases) and time.time() < deadline:
        time.sleep(0.05)
    assert len(results) == len(cases)
    for i, (_, err) in enumerate(cases):
        r, e = results[i]
        if err:
            assert e is not None and err in str(e)
        else:
            assert e is None and r.as_numpy("logits").shape == (1, VOCAB)


def test_corrupt_engine_fails_load_saying_make_build(tmp_path):
    from llmprofiles.serving.launcher import TritonServer

    repo = tmp_path / "repo"
    shutil.copytree(REPO / "llm", repo / "llm", symlinks=False)
    weights = repo / "llm" / "1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    server = TritonServer(repo, free_port(), free_port(), free_port(), work=tmp_path / "w", ready_timeout_s=120)
    with pytest.raises(RuntimeError) as e:
        server.start()
    server.stop()
    assert "does not match its manifest hash" in str(e.value) and "make build" in str(e.value)


def test_missing_engine_fails_load_saying_make_build(tmp_path):
    from llmprofiles.serving.launcher import TritonServer

    repo = tmp_path / "repo"
    (repo / "llm" / "1").mkdir(parents=True)
    shutil.copy(REPO / "llm" / "1" / "model.py", repo / "llm" / "1" / "model.py")
    shutil.copy(REPO / "llm" / "config.pbtxt", repo / "llm" / "config.pbtxt")
    server = TritonServer(repo, free_port(), free_port(), free_port(), work=tmp_path / "w", ready_timeout_s=120)
    with pytest.raises(RuntimeError) as e:
        server.start()
    server.stop()
    assert "no engine manifest" in str(e.value) and "make build" in str(e.value)


def test_server_split_accounts_for_every_request(triton_server):
    from bench.llm_bench import server_split

    c = Client("grpc", triton_server)
    before = triton_server.metrics()
    for _ in range(3):
        c.infer(ids_of(1))
    s = None
    for _ in range(20):  # the server may count a request just after its response went out
        s = server_split(before, triton_server.metrics(), "llm")
        if s and s["requests"] == 3:
            break
        time.sleep(0.1)
    assert s["requests"] == 3, s
    assert s["request_ms"] >= s["compute_infer_ms"] >= s["handler_ms"] > 0, s
    assert server_split(before, triton_server.metrics(), "llm_single") is None  # it served nothing
