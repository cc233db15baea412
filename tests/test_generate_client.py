"""The generation client: prompt lengths, stream checks, statistics, the JSON line, and a run against the real server.

Pure logic runs without Triton; the ``server`` tests start ``client/generate.py``
against the session's tritonserver: ``python -m pytest tests/test_generate_client.py -q``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, require_built
from llmprofiles.generate_load import (
    Chunk, GenRequest, Record, _chunk_from_event, check_stream, counters_delta, generate_counters, make_request,
    metrics_endpoint, parse_length_range, summarize,
)
from llmprofiles.serving.launcher import parse_metrics

# --- prompt lengths and requests --------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("64", (64, 64)), ("32:128", (32, 128)), ("1:1", (1, 1))])
def test_prompt_len_is_fixed_or_an_inclusive_range(text, expected):
    assert parse_length_range(text) == expected


@pytest.mark.parametrize("text", ["0", "5:3", "a", "1:2:3", "", "-4:8"])
def test_bad_prompt_len_raises_naming_the_value(text):
    with pytest.raises(ValueError, match="prompt length"):
        parse_length_range(text)


def test_prompt_lengths_cover_the_range_and_repeat_from_the_seed():
    lengths = {len(make_request(i, max_tokens=4, prompt_len=(3, 6), seed=7).input_ids) for i in range(200)}
    assert lengths == {3, 4, 5, 6}
    assert make_request(5, max_tokens=4, seed=7) == make_request(5, max_tokens=4, seed=7)
    assert make_request(5, max_tokens=4, seed=7) != make_request(5, max_tokens=4, seed=7, stream=1)
    assert all(0 <= t < 50 for t in make_request(0, max_tokens=4, prompt_len=(64, 64), vocab=50).input_ids)


def test_ignore_eos_asks_for_exactly_max_tokens():
    body = make_request(0, max_tokens=12).body()
    assert body["min_tokens"] == body["max_tokens"] == 12 and body["stream"] is True
    assert "min_tokens" not in make_request(0, max_tokens=12, ignore_eos=False).body()


def test_text_prompt_is_sent_as_text_input_and_sampling_gets_a_seed():
    body = make_request(0, max_tokens=4, text="hello", temperature=0.7).body()
    assert body["text_input"] == "hello" and "input_ids" not in body
    assert body["temperature"] == 0.7 and isinstance(body["seed"], int)
    assert "seed" not in make_request(0, max_tokens=4).body()  # greedy sends no seed


# --- stream checks and timings -----------------------------------------------------------

REQ = GenRequest(0, (1, 2, 3), None, max_tokens=3, min_tokens=3)


def chunk(t, ids, reason="", final=False, n_out=None):
    return Chunk(t, tuple(ids), "x" * len(ids), reason, final, 3, n_out)


def test_a_clean_stream_gives_ttft_itl_and_end_to_end():
    r = check_stream(REQ, 0.0, [chunk(0.010, [7]), chunk(0.030, [8], n_out=2), chunk(0.040, [9], "length", True, 3)])
    assert r.mismatch is None and r.output_tokens == 3 and r.finish_reason == "length" and r.prompt_tokens == 3
    assert r.ttft_ms == pytest.approx(10.0) and r.e2e_ms == pytest.approx(40.0)
    assert r.itl_ms == pytest.approx([20.0, 10.0])


def test_a_response_with_several_tokens_splits_its_gap_per_token():
    r = check_stream(REQ, 0.0, [chunk(0.010, [7]), chunk(0.050, [8, 9], "length", True)])
    assert r.itl_ms == pytest.approx([20.0, 20.0])


def test_an_empty_final_response_after_the_finish_reason_is_accepted():
    r = check_stream(REQ, 0.0, [chunk(0.01, [7]), chunk(0.02, [8, 9], "length"), chunk(0.03, [], "", True)])
    assert r.mismatch is None and r.e2e_ms == pytest.approx(30.0)


@pytest.mark.parametrize("chunks, problem", [
    ([], "no response"),
    ([chunk(0.1, [7, 8, 9], "length", True), chunk(0.2, [1])], "after the final response"),
    ([chunk(0.1, [7]), chunk(0.2, [8])], "without a final response"),
    ([chunk(0.1, []), chunk(0.2, [7, 8, 9], "length", True)], "carries no tokens"),
    ([chunk(0.1, [7, 8, 9], "", True)], "no finish_reason"),
    ([chunk(0.1, [7, 8, 9], "cancelled", True)], "'cancelled'"),
    ([chunk(0.1, [], "stop", True)], "no tokens generated"),
    ([chunk(0.1, [7, 8], "stop", True)], "fewer than min_tokens 3"),
    ([chunk(0.1, [7, 8, 9, 10], "length", True)], "more than max_tokens 3"),
    ([chunk(0.1, [7, 8], "length"), chunk(0.2, [9], "", True)], "tokens after finish_reason"),
    ([chunk(0.1, [7], n_out=2), chunk(0.2, [8, 9], "length", True)], "num_output_tokens 2"),
])
def test_a_stream_that_breaks_the_request_is_a_mismatch(chunks, problem):
    assert problem in check_stream(REQ, 0.0, chunks).mismatch


def test_length_before_max_tokens_is_a_mismatch_without_ignore_eos_too():
    req = GenRequest(0, (1, 2, 3), None, max_tokens=4)
    short = check_stream(req, 0.0, [chunk(0.1, [7, 8], "length", True)])
    assert "finish_reason 'length' after 2 tokens" in short.mismatch
    assert check_stream(req, 0.0, [chunk(0.1, [7, 8], "stop", True)]).mismatch is None


def test_sse_events_take_scalars_and_lists():
    one = _chunk_from_event(1.0, {"output_ids": 5, "text_output": "a", "finish_reason": "", "num_output_tokens": 1})
    two = _chunk_from_event(2.0, {"output_ids": [6, 7], "text_output": "bc", "finish_reason": "length"})
    assert (one.ids, one.final, one.num_output_tokens) == ((5,), False, 1)
    assert (two.ids, two.text, two.final) == ((6, 7), "bc", True)


# --- aggregation and the JSON line ------------------------------------------------------------


def test_summary_aggregates_clean_requests_and_counts_the_rest():
    good = [Record(i, ttft_ms=10.0 * (i + 1), itl_ms=[2.0, 4.0], e2e_ms=100.0, output_tokens=3, prompt_tokens=8,
                   finish_reason="length") for i in range(4)]
    bad = [Record(4, error="refused"), Record(5, error="refused"), Record(6, ttft_ms=1.0, output_tokens=9,
                                                                          mismatch="too many")]
    s = summarize(good + bad, wall_s=2.0)
    assert (s["count"], s["completed"], s["errors"], s["mismatches"], s["ok"]) == (7, 4, 2, 1, False)
    assert s["ttft"]["p50_ms"] == pytest.approx(25.0) and s["ttft"]["count"] == 4
    assert s["itl"]["count"] == 8 and s["itl"]["p50_ms"] == pytest.approx(3.0)
    assert s["output_tokens"] == 12 and s["output_tokens_per_s"] == pytest.approx(6.0)
    assert s["requests_per_s"] == pytest.approx(2.0) and s["prompt_tokens"] == 32
    assert s["error_samples"] == ["refused (2 requests, first: request 4)"]
    assert s["finish_reasons"] == {"length": 4}
    assert summarize(good, 2.0)["ok"] and not summarize([], 1.0)["ok"]


def test_summary_is_one_json_line():
    s = summarize([Record(0, ttft_ms=1.0, e2e_ms=2.0, output_tokens=1, finish_reason="length")], 0.5)
    line = json.dumps(s)
    assert "\n" not in line and json.loads(line)["ttft"]["p99_ms"] == 1.0


def test_step_counters_are_read_by_profile_and_differenced():
    text = "\n".join([
        "# TYPE llm_generate_steps_total counter",
        'llm_generate_steps_total{model="generate",profile="decode_b4"} 10',
        'llm_generate_steps_total{model="generate",profile="prefill_16"} 3',
        'llm_generate_steps_total{model="other",profile="decode_b4"} 99',
        'llm_generate_output_tokens_total{model="generate"} 40',
    ])
    after = generate_counters(parse_metrics(text))
    assert after == {"steps": {"decode_b4": 10.0, "prefill_16": 3.0}, "tokens": {"output_tokens": 40.0}}
    before = {"steps": {"decode_b4": 4.0, "prefill_16": 3.0}, "tokens": {"output_tokens": 10.0}}
    assert counters_delta(before, after) == {"steps": {"decode_b4": 6}, "tokens": {"output_tokens": 30}}


def test_metrics_url_accepts_host_port_or_a_full_url():
    assert metrics_endpoint("127.0.0.1:8002") == "http://127.0.0.1:8002/metrics"
    assert metrics_endpoint("http://h:9/metrics") == "http://h:9/metrics"


# --- against the real server ------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_streams_from_the_server_and_reports_decode_and_prefill_steps(triton_server, protocol):
    require_built("generate")
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    p = subprocess.run([sys.executable, str(ROOT / "client" / "generate.py"), "--protocol", protocol, "--url", url,
                        "--concurrency", "2", "--requests", "6", "--prompt-len", "8:40", "--max-tokens", "6",
                        "--metrics-url", f"127.0.0.1:{triton_server.metrics_port}", "--timeout-s", "60"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["ok"] and (r["count"], r["completed"], r["errors"], r["mismatches"]) == (6, 6, 0, 0)
    assert r["output_tokens"] == 36 and r["finish_reasons"] == {"length": 6}  # ignore-eos: exactly max_tokens
    assert r["ttft"]["count"] == 6 and r["itl"]["count"] == 6 * 5
    assert 0 < r["ttft"]["p50_ms"] <= r["ttft"]["p99_ms"] <= r["e2e"]["p99_ms"]
    assert 0 < r["itl"]["p50_ms"] <= r["itl"]["p90_ms"] <= r["itl"]["p99_ms"]
    assert r["output_tokens_per_s"] > 0 and r["requests_per_s"] > 0
    steps = r["server"]["steps"]
    assert any(p.startswith("decode_b") for p in steps) and any(p.startswith("prefill_") for p in steps), steps
    assert r["server"]["tokens"]["output_tokens"] == 36
    assert "ttft" in p.stdout and "Engine steps by profile" in p.stdout


@pytest.mark.server
def test_client_exits_non_zero_when_the_server_refuses(triton_server):
    require_built("generate")
    p = subprocess.run([sys.executable, str(ROOT / "client" / "generate.py"), "--url", triton_server.grpc_url,
                        "--warmup", "0", "--requests", "2", "--prompt-len", "600", "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=120)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert p.returncode != 0 and not r["ok"] and r["errors"] == 2
    assert "600" in r["error_samples"][0]
