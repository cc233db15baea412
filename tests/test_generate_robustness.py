"""Issue 13's protections for the `generate` model: honest health, prompt size over the wire, a stub crash mid-stream.

The server tests share one supervised tritonserver over `generate` alone (about
10-20 s to start on 2 cores) and restart it once, in the last test, which kills
the `generate` backend stub during a streaming request. The queue bound and the
request checks are in test_generation_server.py and test_generation.py.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import RECOVERIES, REPO, ROOT, free_port, require_built

CONTEXT = 512  # the default build's max_context (tiny model)
MAX_TEXT_BYTES = 64 * CONTEXT


def health(url: str, *args: str) -> tuple[int, dict]:
    """``client/health.py --json`` as Kubernetes would run it: the exit code and the JSON line."""
    r = subprocess.run([sys.executable, str(ROOT / "client" / "health.py"), "--url", url, "--timeout-s", "5", "--json",
                        *args], capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


# --- the probe's logic for a decoupled generate model, against a stand-in server (no Triton) ---------------------


class _StandIn(BaseHTTPRequestHandler):
    mode = "ok"  # ok | busy | hung | dead

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the probe timed out and left
            pass

    def do_GET(self) -> None:
        self._send(200, {"input": [{"name": "input_ids"}, {"name": "max_tokens"}],
                         "output": [{"name": "output_ids"}], "model_transaction_policy": {"decoupled": True}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/v2/repository/index":
            return self._send(200, [{"name": "generate", "version": "1", "state": "READY"}])
        mode = type(self).mode
        if mode == "dead":
            return self._send(400, {"error": "Stub process 'generate_0_0' is not healthy."})
        if body.get("max_tokens") == 0 and mode == "busy":  # refused in execute(), never queued
            return self._send(400, {"error": "max_tokens 0 must be >= 1"})
        if mode in ("busy", "hung"):
            time.sleep(1.0)  # queued behind busy slots, or a hung scheduler
        self._send(200, {"output_ids": 7, "text_output": "x", "finish_reason": "length"})  # one element: a scalar


@pytest.fixture()
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
    _StandIn.mode = "ok"


@pytest.mark.parametrize("mode, ok, dead, reason", [
    ("ok", True, False, ""),
    ("busy", False, False, "busy: no answer within 0.3 s"),  # slots full: not ready, but no restart
    ("hung", False, True, "no answer within 0.3 s"),
    ("dead", False, True, "Stub process 'generate_0_0' is not healthy"),
])
def test_generate_probe_tells_busy_from_hung_and_dead(stand_in, mode, ok, dead, reason):
    from llmprofiles.serving.health import probe, verdict
    from llmprofiles.serving.supervisor import restart_cause

    _StandIn.mode = mode
    url = f"127.0.0.1:{stand_in.server_address[1]}"
    hung_runs: dict[str, int] = {}
    for _ in range(3):  # the supervisor restarts after 3 rounds without an answer
        [r] = probe(url, None, timeout_s=0.3)
        assert (r.model, r.ok, r.dead) == ("generate", ok, dead), r
        assert reason in r.reason, r
        cause = restart_cause([r], hung_runs, hung_probes=3)
    assert bool(verdict([r], "live")) == dead
    assert (cause is not None) == dead, cause


# --- the real server -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    """`generate` alone, under the supervisor exactly as `make serve` runs it."""
    from llmprofiles.serving.faults import Supervised

    require_built("generate")
    tmp = tmp_path_factory.mktemp("generate_chaos")
    (tmp / "repo").mkdir()
    (tmp / "repo" / "generate").symlink_to(REPO / "generate")
    with Supervised(tmp / "repo", (free_port(), free_port(), free_port()), tmp / "work") as s:
        yield s


def grpc_url(s) -> str:
    return f"127.0.0.1:{s.grpc_port}"


def post(s, path: str, body: bytes | dict, timeout: float = 60) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{s.http_url}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def still_serving(s, restarts: int = 0) -> None:
    from llmprofiles.serving.faults import generate_ok

    assert generate_ok(s.http_url), s.log_tail()
    assert s.status()["restarts"] == restarts, s.status()


@pytest.mark.server
def test_health_probe_is_ready_on_the_real_generate_model(supervised):
    from llmprofiles.serving.health import GENERATE_PROBE

    code, report = health(supervised.http_url)
    assert code == 0 and report["ok"], report
    assert set(report["models"]) == {"generate"} and report["models"]["generate"]["ok"], report
    assert health(supervised.http_url, "--mode", "live", "--models", "generate")[0] == 0
    status, text = post(supervised, "/v2/models/generate/generate", GENERATE_PROBE)  # the probe's request, as sent
    answer = json.loads(text)
    assert status == 200 and isinstance(answer["output_ids"], int) and answer["finish_reason"] == "length", text


@pytest.mark.server
@pytest.mark.parametrize("tokens", [CONTEXT, 100_000])
def test_prompt_past_the_context_is_refused_by_its_declared_shape(supervised, tokens):
    """The model's check_shapes refuses on the tensor's metadata, before reading it: HTTP 400, and the same text on a gRPC stream."""
    from test_generation_server import Stream, ids_of  # noqa: F401

    expected = f"input_ids has shape [{tokens}]: {tokens} tokens; allowed at most {CONTEXT - 1} (the context is {CONTEXT})"
    t0 = time.perf_counter()
    status, text = post(supervised, "/v2/models/generate/generate", {"input_ids": [1] * tokens, "max_tokens": 1})
    assert status == 400 and json.loads(text)["error"] == expected, text[:300]
    stream = Stream(grpc_url(supervised))
    try:
        stream.send(input_ids=[1] * tokens)
        with pytest.raises(Exception, match=re.escape(expected)):
            stream.collect(timeout=30)
    finally:
        stream.close()
    assert time.perf_counter() - t0 < 30
    still_serving(supervised)


@pytest.mark.server
def test_lying_declared_shapes_are_refused_before_the_model(supervised):
    """Pins tritonserver 2.51: a huge declared shape with 8 bytes of data is a byte-size mismatch over gRPC,
    and HTTP /infer refuses a decoupled model outright (the body that aborts the server for `llm`, issue 13 item 1)."""
    import tritonclient.grpc as grpcclient

    from llmprofiles.serving.faults import ABORTS_SERVER

    client = grpcclient.InferenceServerClient(grpc_url(supervised))
    errors: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: errors.put(error))
    try:
        for shape in ([1099511627776], [100_000]):
            i = grpcclient.InferInput("input_ids", shape, "INT64")
            i._raw_content = np.array([1], dtype=np.int64).tobytes()  # what the shape claims is not sent
            client.async_stream_infer("generate", [i])
            error = errors.get(timeout=30)
            assert error is not None and "input byte size mismatch for input 'input_ids'" in str(error), error
            assert f"Expected {shape[0] * 8}, got 8" in str(error), error
    finally:
        client.stop_stream()
        client.close()
    status, text = post(supervised, "/v2/models/generate/infer", ABORTS_SERVER, timeout=30)
    assert status == 501 and "decoupled" in text, text
    still_serving(supervised)


@pytest.mark.server
@pytest.mark.parametrize("size", [MAX_TEXT_BYTES + 1, 4_000_000])
def test_huge_text_input_is_refused_by_its_byte_count(supervised, size):
    """Refused before tokenizing, with a short message that names the size and the limit, not the text."""
    from test_generation_server import Stream

    expected = (f"text_input of {size} bytes is too long; allowed at most {MAX_TEXT_BYTES} bytes "
                f"(the context is {CONTEXT} tokens)")
    status, text = post(supervised, "/v2/models/generate/generate", {"text_input": "a" * size, "max_tokens": 1})
    assert status == 400 and json.loads(text)["error"] == expected, text[:300]
    assert len(text) < 300
    stream = Stream(grpc_url(supervised))
    try:
        stream.send(text_input="é" * (size // 2 + 1))  # counted in bytes, not characters
        with pytest.raises(Exception, match="bytes is too long; allowed at most"):
            stream.collect(timeout=30)
    finally:
        stream.close()
    still_serving(supervised)


@pytest.mark.server
@pytest.mark.chaos
def test_stub_killed_mid_stream_errors_the_client_and_the_service_recovers(supervised):
    """kill -9 of the `generate` backend stub while a long streaming request runs.

    The supervisor is paused (SIGSTOP) just long enough to run the exec probe against the dead stub, so the
    probe's answer is the dead stub and not the restart; the recovery time runs from the kill and includes
    that pause (printed apart).
    """
    from test_generation_server import Stream, ids_of

    from llmprofiles.serving.faults import generate_ok, kill_stub

    before = supervised.status()["restarts"]
    stream = Stream(grpc_url(supervised))
    try:
        stream.send(input_ids=[5], max_tokens=CONTEXT - 1, min_tokens=CONTEXT - 1, stream=True)
        first = stream.responses.get(timeout=60)
        assert first[1] is None, first[1]
        with supervised.paused():
            t_kill = time.monotonic()
            kill_stub(supervised, "generate")
            code, during = health(supervised.http_url)
            live_code, _ = health(supervised.http_url, "--mode", "live")
            paused_s = time.monotonic() - t_kill
        assert code == 1 and not during["ok"], during
        reason = during["models"]["generate"]["reason"]
        assert "Stub process 'generate_0_0' is not healthy" in reason, during
        assert live_code == 1  # a dead stub is what a restart fixes

        finals, error = 0, None  # the stream ends with an error, not a hang and not a clean finish
        while error is None:
            remaining = 60 - (time.monotonic() - t_kill)
            assert remaining > 0, f"no error on the stream 60 s after the kill; {supervised.status()}"
            try:
                result, error = stream.responses.get(timeout=remaining)
            except queue.Empty:
                continue
            if error is None:
                finals += result.get_response().parameters["triton_final_response"].bool_param
        error_s = time.monotonic() - t_kill
        assert finals == 0, "the stream finished before the kill: make it longer"
        ready_while_restarting = health(supervised.http_url)[0] == 0
    finally:
        stream.close()

    while not generate_ok(supervised.http_url):
        assert time.monotonic() - t_kill < 150, f"no good answer 150 s after the kill\n{supervised.log_tail()}"
        time.sleep(0.2)
    recovery_s = time.monotonic() - t_kill
    st = supervised.wait_serving(timeout_s=60, restarts=before + 1)
    RECOVERIES.append(("kill -9 the generate stub mid-stream", recovery_s))
    print(f"\ngenerate stub killed mid-stream: client error after {error_s:.1f} s, first good answer after "
          f"{recovery_s:.1f} s (supervisor paused {paused_s:.1f} s for the probe); cause: {st['last_cause']}")

    assert not ready_while_restarting
    assert health(supervised.http_url)[0] == 0
    assert st["restarts"] == before + 1 and "model generate" in st["last_cause"], st
    assert "Stub process 'generate_0_0' is not healthy" in st["last_cause"], st
    s2 = Stream(grpc_url(supervised))
    try:
        s2.send(input_ids=[5, 6], max_tokens=4, min_tokens=4, stream=True)
        assert len(ids_of(s2.collect(timeout=60))) == 4
    finally:
        s2.close()
