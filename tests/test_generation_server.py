"""The `generate` model through the real tritonserver (CPU, tiny model): tokens, streaming, errors, slots."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, ROOT, free_port, require_built

pytestmark = pytest.mark.server

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TYPES = {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32", np.uint64: "UINT64", np.bool_: "BOOL",
         np.object_: "BYTES"}


def inputs_of(**values) -> list:
    out = []
    for name, value in values.items():
        if isinstance(value, (bytes, str)):
            arr = np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_)
        elif isinstance(value, bool):
            arr = np.array([value], dtype=np.bool_)
        elif isinstance(value, list):
            arr = np.array(value, dtype=np.int64)
        elif isinstance(value, float):
            arr = np.array([value], dtype=np.float32)
        elif name == "seed":
            arr = np.array([value], dtype=np.uint64)
        else:
            arr = np.array([value], dtype=np.int32)
        i = grpcclient.InferInput(name, list(arr.shape), TYPES[arr.dtype.type])
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


class Stream:
    """One gRPC stream: send generate requests, collect their responses until the final flag."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, model: str = "generate", **values) -> None:
        self.client.async_stream_infer(model, inputs_of(**values), enable_empty_final_response=True)

    def collect(self, timeout: float = 60) -> list[dict]:
        out = []
        while True:
            result, error = self.responses.get(timeout=timeout)
            if error is not None:
                raise error
            r = {name: result.as_numpy(name) for name in ("text_output", "output_ids", "finish_reason",
                                                          "num_input_tokens", "num_output_tokens")}
            r["final"] = result.get_response().parameters["triton_final_response"].bool_param
            r["at"] = time.perf_counter()
            out.append(r)
            if r["final"]:
                return out

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def generate(url: str, **values) -> list[dict]:
    s = Stream(url)
    try:
        s.send(**values)
        return s.collect()
    finally:
        s.close()


def ids_of(responses: list[dict]) -> list[int]:
    return [int(t) for r in responses for t in r["output_ids"]]


def text_of(responses: list[dict]) -> str:
    return "".join(r["text_output"][0].decode() for r in responses)


def step_counts(server) -> dict[str, float]:
    metrics = server.metrics()
    return {dict(labels)["profile"]: v for (name, labels), v in metrics.items()
            if name == "llm_generate_steps_total" and dict(labels).get("model") == "generate"}


@pytest.fixture(scope="module")
def server(triton_server):
    require_built("generate")
    return triton_server


def llm_greedy(url: str, prompt: list[int], n: int) -> list[int]:
    """Full recompute through `llm`: argmax of the last-token logits over the growing sequence."""
    client = grpcclient.InferenceServerClient(url)
    seq = list(prompt)
    for _ in range(n):
        arr = np.array([seq], dtype=np.int64)
        i = grpcclient.InferInput("input_ids", list(arr.shape), "INT64")
        i.set_data_from_numpy(arr)
        seq.append(int(client.infer("llm", [i]).as_numpy("logits")[0].argmax()))
    return seq[len(prompt):]


PROMPTS = [[5], [11, 22, 33, 44, 55], list(range(100, 117)), list(range(300, 430))]  # 130 tokens: chunked prefill


def test_greedy_tokens_equal_llm_full_recompute_alone_and_concurrent(server):
    expected = [llm_greedy(server.grpc_url, p, 8) for p in PROMPTS]
    alone = [ids_of(generate(server.grpc_url, input_ids=p, max_tokens=8, min_tokens=8)) for p in PROMPTS]
    assert alone == expected
    results: dict[int, list[int]] = {}

    def one(i: int) -> None:
        results[i] = ids_of(generate(server.grpc_url, input_ids=PROMPTS[i], max_tokens=8, min_tokens=8))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert [results[i] for i in range(len(PROMPTS))] == expected


def test_streaming_sends_tokens_as_they_come_and_the_final_flag_last(server):
    streamed = generate(server.grpc_url, text_input="def main():", max_tokens=6, min_tokens=6, stream=True)
    assert [len(r["output_ids"]) for r in streamed] == [1] * 6
    assert [r["final"] for r in streamed] == [False] * 5 + [True]
    assert [r["finish_reason"][0] for r in streamed] == [b""] * 5 + [b"length"]
    assert streamed[-1]["at"] > streamed[0]["at"]
    whole = generate(server.grpc_url, text_input="def main():", max_tokens=6, min_tokens=6)
    assert len(whole) == 1 and whole[0]["final"]
    assert ids_of(whole) == ids_of(streamed)
    assert text_of(whole) == text_of(streamed) and len(text_of(whole)) > 0  # BYTES outputs arrive with their text


def test_token_counts_and_prompt_echo(server):
    r = generate(server.grpc_url, input_ids=[7, 8, 9], max_tokens=4, min_tokens=4, exclude_input_in_output=False,
                 return_num_input_tokens=True, return_num_output_tokens=True)
    assert ids_of(r)[:3] == [7, 8, 9] and len(ids_of(r)) == 7
    assert int(r[-1]["num_input_tokens"][0]) == 3 and int(r[-1]["num_output_tokens"][0]) == 4


def test_same_seed_same_tokens(server):
    run = lambda seed: ids_of(generate(server.grpc_url, input_ids=[5, 6, 7], max_tokens=12, min_tokens=12,  # noqa: E731
                                       temperature=1.0, seed=seed))
    assert run(42) == run(42)
    assert run(42) != run(43)
    params = json.dumps({"temperature": "1.0", "seed": "42", "max_tokens": 12, "min_tokens": 12})
    assert ids_of(generate(server.grpc_url, input_ids=[5, 6, 7], sampling_parameters=params)) == run(42)


def test_token_counters_and_latency_histograms_move(server):
    def read():
        m = server.metrics()
        get = lambda name: sum(v for (n, labels), v in m.items() if n == name and dict(labels).get("model") == "generate")  # noqa: E731
        return {k: get(k) for k in ("llm_generate_prompt_tokens_total", "llm_generate_output_tokens_total",
                                    "llm_generate_time_to_first_token_ms_count",
                                    "llm_generate_inter_token_latency_ms_count")}

    before = read()
    generate(server.grpc_url, input_ids=[4, 5, 6, 7], max_tokens=5, min_tokens=5)
    after = read()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["llm_generate_prompt_tokens_total"] == 4 and delta["llm_generate_output_tokens_total"] == 5
    assert delta["llm_generate_time_to_first_token_ms_count"] == 1
    assert delta["llm_generate_inter_token_latency_ms_count"] == 4  # one per decode step


def test_each_step_is_served_by_its_first_fit_profile(server):
    before = step_counts(server)
    generate(server.grpc_url, input_ids=list(range(10, 30)), max_tokens=4, min_tokens=4)  # 20 prompt tokens
    after = step_counts(server)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert delta == {"prefill_32": 1, "decode_b1": 3}


def http_post(server, path: str, body: dict, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/generate/{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_generate_and_generate_stream(server):
    status, body = http_post(server, "generate", {"text_input": "hello", "max_tokens": 5, "min_tokens": 5})
    assert status == 200
    one = json.loads(body)
    assert one["finish_reason"] == "length" and len(one["output_ids"]) == 5 and one["text_output"]
    status, body = http_post(server, "generate_stream", {"text_input": "hello", "max_tokens": 5, "min_tokens": 5,
                                                          "stream": True})
    assert status == 200
    events = [json.loads(line[len(b"data: "):]) for line in body.splitlines() if line.startswith(b"data: ")]
    assert len(events) == 5 and events[-1]["finish_reason"] == "length"
    assert "".join(e["text_output"] for e in events) == one["text_output"]


@pytest.mark.parametrize("body, match", [
    ({}, "exactly one of text_input"),
    ({"text_input": ""}, "text_input is empty"),
    ({"text_input": "a", "input_ids": [5]}, "got both"),
    ({"input_ids": [32000]}, "token id 32000"),
    ({"text_input": "a", "max_tokens": 0}, "max_tokens 0 must be >= 1"),
    ({"text_input": "a", "max_tokens": 100000}, "exceeds the context of 512"),
    ({"text_input": "a", "temperature": -1.0}, "temperature -1.0 must be >= 0"),
    ({"text_input": "a", "top_p": 0.0}, r"top_p 0.0 must be in \(0, 1\]"),
    ({"text_input": "a", "sampling_parameters": "{oops"}, "not valid JSON"),
])
def test_bad_requests_are_refused_and_the_server_keeps_serving(server, body, match):
    import re

    status, text = http_post(server, "generate", body)
    assert status == 400 and re.search(match, json.loads(text)["error"]), text
    assert ids_of(generate(server.grpc_url, input_ids=[5], max_tokens=2, min_tokens=2))


def test_bad_request_over_a_grpc_stream_ends_that_request_only(server):
    # A stream carries the error text, not a status code (HTTP above checks that it is 400 INVALID_ARG).
    s = Stream(server.grpc_url)
    try:
        s.send(input_ids=[5], top_p=2.0)
        with pytest.raises(InferenceServerException, match=r"top_p 2.0 must be in \(0, 1\]"):
            s.collect()
        s.send(input_ids=[5], max_tokens=2, min_tokens=2)  # the same stream goes on
        assert len(ids_of(s.collect())) == 2
    finally:
        s.close()


# --- a small build: 2 slots, a queue of 1 -------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The tiny model built with 2 slots, prefill steps of up to 2 prompts and a queue bound of 1, served on its own."""
    from llmprofiles.serving.launcher import TritonServer

    repo = tmp_path_factory.mktemp("small_repo")
    model = repo / "generate"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").symlink_to(REPO / "generate" / "1" / "model.py")
    subprocess.run([sys.executable, str(ROOT / "build" / "build_generate.py"), "--model", "tiny", "--out", str(model),
                    "--slots", "2", "--max-context", "256", "--decode-buckets", "1,2", "--prefill-buckets", "16,32",
                    "--prefill-batches", "1,2", "--max-queue", "1"], check=True, cwd=ROOT)
    with TritonServer(repo, free_port(), free_port(), free_port(), work=tmp_path_factory.mktemp("small")) as s:
        yield s


def gauge(server, name: str) -> float:
    return next(v for (n, labels), v in server.metrics().items() if n == name)


def wait_for(predicate, timeout: float = 10.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_cancel_mid_stream_frees_the_slot_and_the_server_stays_healthy(small):
    s = Stream(small.grpc_url)
    s.send(input_ids=[5, 6], max_tokens=250, min_tokens=250, stream=True)
    s.responses.get(timeout=30)
    s.responses.get(timeout=30)
    wait_for(lambda: gauge(small, "llm_generate_active_sequences") == 1)
    s.close(cancel=True)
    wait_for(lambda: gauge(small, "llm_generate_active_sequences") == 0)
    assert small.is_ready()
    assert len(ids_of(generate(small.grpc_url, input_ids=[5], max_tokens=3, min_tokens=3))) == 3


def test_http_stream_disconnect_frees_the_slot(small):
    import http.client

    conn = http.client.HTTPConnection(small.http_url, timeout=30)
    conn.request("POST", "/v2/models/generate/generate_stream",
                 body=json.dumps({"input_ids": [5, 6], "max_tokens": 250, "min_tokens": 250, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    wait_for(lambda: gauge(small, "llm_generate_active_sequences") == 1)
    conn.sock.close()
    conn.close()
    wait_for(lambda: gauge(small, "llm_generate_active_sequences") == 0, timeout=20)


def test_queue_bound_refuses_at_once_when_slots_and_queue_are_full(small):
    streams = [Stream(small.grpc_url) for _ in range(4)]
    try:
        for s in streams[:3]:  # two take the slots, one waits
            s.send(input_ids=[5, 6], max_tokens=200, min_tokens=200, stream=True)
        wait_for(lambda: gauge(small, "llm_generate_queue_size") == 1)
        t0 = time.perf_counter()
        streams[3].send(input_ids=[5], max_tokens=4)
        with pytest.raises(InferenceServerException, match=r"all 2 sequence slots are in use .*the bound is 1"):
            streams[3].collect(timeout=10)
        assert time.perf_counter() - t0 < 5
    finally:
        for s in streams:
            s.close(cancel=True)
    wait_for(lambda: gauge(small, "llm_generate_active_sequences") == 0 and gauge(small, "llm_generate_queue_size") == 0)
    assert len(ids_of(generate(small.grpc_url, input_ids=[5], max_tokens=2, min_tokens=2))) == 2


def test_small_build_declares_its_overridden_profiles(small):
    manifest = json.loads(Path(small.repos[0] / "generate" / "1" / "manifest.json").read_text())
    assert manifest["profiles"]["names"] == ["decode_b1", "decode_b2", "prefill_16", "prefill_32", "prefill_b2_16",
                                             "prefill_b2_32"]
    assert manifest["generation"]["slots"] == 2 and manifest["generation"]["prefill_batches"] == [1, 2]
    # Where start-up goes, per step profile, in the server's log (the H200's start-up has grown with each compile).
    log = small.log_path.read_text(errors="replace")
    line = next(x for x in log.splitlines() if "warm-up s per step profile" in x)
    assert "engine loaded in" in line and all(f"'{n}': " in line for n in manifest["profiles"]["names"])


def test_a_stream_interval_sends_the_first_token_alone_then_groups_of_tokens(tmp_path):
    """stream_interval 3 in config.pbtxt: fewer responses per stream, the same tokens and text."""
    from llmprofiles.serving.launcher import TritonServer

    model = tmp_path / "repo" / "generate"
    model.mkdir(parents=True)
    (model / "1").symlink_to((REPO / "generate" / "1").resolve(), target_is_directory=True)
    config = (REPO / "generate" / "config.pbtxt").read_text()
    assert '"stream_interval", value: { string_value: "1" }' in config
    (model / "config.pbtxt").write_text(config.replace('"stream_interval", value: { string_value: "1" }',
                                                       '"stream_interval", value: { string_value: "3" }'))
    with TritonServer(model.parent, free_port(), free_port(), free_port(), work=tmp_path / "work") as s:
        streamed = generate(s.grpc_url, text_input="def main():", max_tokens=8, min_tokens=8, stream=True)
        whole = generate(s.grpc_url, text_input="def main():", max_tokens=8, min_tokens=8)
    assert [len(r["output_ids"]) for r in streamed] == [1, 3, 3, 1]
    assert [r["final"] for r in streamed] == [False, False, False, True]
    assert ids_of(streamed) == ids_of(whole) and text_of(streamed) == text_of(whole)
