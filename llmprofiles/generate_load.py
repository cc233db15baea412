"""Streamed generation traffic against the ``generate`` model: TTFT, ITL, tokens/s, and who served the steps.

Each worker thread holds one connection (a tritonclient gRPC stream, or an HTTP
connection reading ``/generate_stream`` server-sent events) and sends one request
at a time, so ``concurrency`` is the number of requests in flight. Every stream
is checked against its request (tokens after the final response, a missing
finish reason, fewer or more tokens than asked), so a run is also a smoke test.
``client/generate.py`` is the entry point; the demo and tests call
:func:`run_generate` and :func:`open_session` directly.

Per request: TTFT is send -> first response carrying tokens; ITL is the gap
between successive token-carrying responses, split evenly over the tokens of a
response that carries several (one value per token); end-to-end is send -> final
response.

Example::

    >>> r = run_generate("127.0.0.1:8001", "grpc", concurrency=4, requests=64,
    ...                  prompt_len=(32, 128), max_tokens=64)  # doctest: +SKIP
    >>> r["ttft"]["p50_ms"], r["output_tokens_per_s"], r["ok"]  # doctest: +SKIP
    (41.2, 310.5, True)
"""

from __future__ import annotations

import http.client
import importlib
import itertools
import json
import logging
import queue
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmprofiles.loadgen import MAX_ERROR_SAMPLES, PROTOCOLS, ClosedLoop, fmt_ms, format_table, latency_summary
from llmprofiles.serving.launcher import parse_metrics

log = logging.getLogger(__name__)

MODEL = "generate"
FINISH_REASONS = ("length", "stop")
STEP_METRIC = "llm_generate_steps_total"
TOKEN_METRICS = {"prompt_tokens": "llm_generate_prompt_tokens_total",
                 "output_tokens": "llm_generate_output_tokens_total"}
# Triton tensor types of the inputs this client sends (gRPC); HTTP sends the same names as JSON.
INPUT_TYPES = {
    "input_ids": ("INT64", np.int64), "text_input": ("BYTES", np.object_), "max_tokens": ("INT32", np.int32),
    "min_tokens": ("INT32", np.int32), "stream": ("BOOL", np.bool_), "temperature": ("FP32", np.float32),
    "seed": ("UINT64", np.uint64), "return_num_input_tokens": ("BOOL", np.bool_),
    "return_num_output_tokens": ("BOOL", np.bool_),
}


class RequestFailed(RuntimeError):
    """The server answered a request with an error, or the connection failed or timed out."""


# ---------------------------------------------------------------------------
# Pure helpers (unit-tested without a server)

def parse_length_range(text: str) -> tuple[int, int]:
    """``"64"`` -> ``(64, 64)`` (fixed); ``"32:128"`` -> ``(32, 128)`` (uniform, both ends included).

    >>> parse_length_range("64"), parse_length_range("32:128")
    ((64, 64), (32, 128))
    """
    parts = text.split(":")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        lo, hi = int(parts[0]), int(parts[-1])
    except ValueError:
        raise ValueError(f"prompt length {text!r} must be an int (e.g. 64) or a range lo:hi (e.g. 32:128)") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"prompt length {text!r} must satisfy 1 <= lo <= hi, got lo={lo}, hi={hi}")
    return lo, hi


@dataclass(frozen=True)
class GenRequest:
    """One request as sent: a prompt (token ids or text) and the generation settings."""

    index: int
    input_ids: tuple[int, ...] | None
    text: str | None
    max_tokens: int
    min_tokens: int = 0
    temperature: float = 0.0
    seed: int | None = None

    def body(self) -> dict:
        """Input name -> value, the same for gRPC tensors and the HTTP generate extension's JSON."""
        body = {"input_ids": list(self.input_ids)} if self.input_ids is not None else {"text_input": self.text}
        body |= {"max_tokens": self.max_tokens, "stream": True, "return_num_input_tokens": True,
                 "return_num_output_tokens": True}
        if self.min_tokens:
            body["min_tokens"] = self.min_tokens
        if self.temperature > 0:
            body |= {"temperature": self.temperature, "seed": self.seed}
        return body


def make_request(i: int, *, max_tokens: int, prompt_len: tuple[int, int] = (64, 64), text: str | None = None,
                 vocab: int = 1000, ignore_eos: bool = True, temperature: float = 0.0, seed: int = 0,
                 stream: int = 0) -> GenRequest:
    """Request ``i``: reproducible from ``(seed, stream, i)`` whatever the thread order.

    The prompt is ``text`` when given, else random ids in ``[0, vocab)`` of a length
    drawn uniformly from ``prompt_len``. ``ignore_eos`` sends ``min_tokens =
    max_tokens``, so the end token cannot stop a request early. Timed requests use
    stream 0; warm-up requests use others so they never repeat a timed one.
    """
    rng = np.random.default_rng((seed, stream, i))
    ids = None
    if text is None:
        n = int(rng.integers(prompt_len[0], prompt_len[1] + 1))
        ids = tuple(int(x) for x in rng.integers(0, vocab, size=n))
    sampling_seed = int(rng.integers(0, 2**63)) if temperature > 0 else None
    return GenRequest(i, ids, text, max_tokens, max_tokens if ignore_eos else 0, temperature, sampling_seed)


@dataclass(frozen=True)
class Chunk:
    """One response as received: its arrival time (``time.perf_counter``), new ids and text, and end markers."""

    t: float
    ids: tuple[int, ...]
    text: str
    finish_reason: str = ""
    final: bool = False
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None


@dataclass
class Record:
    """One finished request: its timings, or why it failed (``error``) or broke its contract (``mismatch``)."""

    index: int
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    e2e_ms: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    finish_reason: str = ""
    error: str | None = None
    mismatch: str | None = None


def _stream_problem(request: GenRequest, chunks: Sequence[Chunk]) -> str | None:
    """What is wrong with a request's stream of responses, or None when it honours the request."""
    if not chunks:
        return "no response"
    finished_at = None
    count = 0
    for k, c in enumerate(chunks):
        if k and chunks[k - 1].final:
            return f"response {k} arrived after the final response"
        if c.ids and finished_at is not None:
            return f"response {k} carries tokens after finish_reason {chunks[finished_at].finish_reason!r}"
        if not c.final and not c.ids:
            return f"intermediate response {k} carries no tokens"
        count += len(c.ids)
        if c.num_output_tokens is not None and c.num_output_tokens != count:
            return f"response {k} reports num_output_tokens {c.num_output_tokens}, but {count} tokens arrived"
        if (request.input_ids is not None and c.num_input_tokens is not None
                and c.num_input_tokens != len(request.input_ids)):
            return f"num_input_tokens {c.num_input_tokens}, but the prompt has {len(request.input_ids)} ids"
        if c.finish_reason:
            finished_at = k
    if not chunks[-1].final:
        return "the stream ended without a final response"
    if finished_at is None:
        return "no finish_reason on the final response"
    reason = chunks[finished_at].finish_reason
    if reason not in FINISH_REASONS:
        return f"finish_reason {reason!r}; expected one of {list(FINISH_REASONS)}"
    if count == 0:
        return "no tokens generated"
    if count > request.max_tokens:
        return f"{count} tokens, more than max_tokens {request.max_tokens}"
    if count < request.min_tokens:
        return f"{count} tokens, fewer than min_tokens {request.min_tokens}"
    if reason == "length" and count != request.max_tokens:
        return f"finish_reason 'length' after {count} tokens; max_tokens is {request.max_tokens}"
    return None


def check_stream(request: GenRequest, sent_at: float, chunks: Sequence[Chunk]) -> Record:
    """Timings of one request's stream, with ``mismatch`` set when the stream breaks the request's contract."""
    record = Record(request.index, mismatch=_stream_problem(request, chunks))
    last = None
    for c in chunks:
        if not c.ids:
            continue
        if last is None:
            record.ttft_ms = (c.t - sent_at) * 1e3
        else:
            record.itl_ms += [(c.t - last) * 1e3 / len(c.ids)] * len(c.ids)
        last = c.t
        record.output_tokens += len(c.ids)
    if chunks:
        record.e2e_ms = (chunks[-1].t - sent_at) * 1e3
        record.finish_reason = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), "")
        record.prompt_tokens = next((c.num_input_tokens for c in chunks if c.num_input_tokens is not None),
                                    len(request.input_ids) if request.input_ids is not None else None)
    return record


def _samples(failures: Sequence[tuple[int, str]]) -> list[str]:
    """``(request index, message)`` pairs as one line per distinct message, most frequent first."""
    counts = Counter(m for _, m in failures)
    first = {}
    for i, m in failures:
        first.setdefault(m, i)
    return [f"{m} ({n} request{'s' if n > 1 else ''}, first: request {first[m]})"
            for m, n in counts.most_common(MAX_ERROR_SAMPLES)]


def summarize(records: Sequence[Record], wall_s: float) -> dict:
    """Aggregate figures of a run: counts, TTFT/ITL/end-to-end percentiles, tokens/s and requests/s over ``wall_s``.

    Timings come from the requests that completed cleanly; a request with an
    error or a mismatch counts against ``ok`` and appears in the samples.
    """
    good = [r for r in records if r.error is None and r.mismatch is None]
    errors = [(r.index, r.error) for r in records if r.error is not None]
    mismatches = [(r.index, r.mismatch) for r in records if r.error is None and r.mismatch is not None]
    tokens = sum(r.output_tokens for r in good)
    rate = (lambda n: n / wall_s) if wall_s > 0 else (lambda n: None)
    out = {
        "count": len(records), "completed": len(good), "errors": len(errors), "mismatches": len(mismatches),
        "ttft": latency_summary([r.ttft_ms for r in good]),
        "itl": latency_summary([x for r in good for x in r.itl_ms]),
        "e2e": latency_summary([r.e2e_ms for r in good]),
        "output_tokens": tokens, "prompt_tokens": sum(r.prompt_tokens or 0 for r in good),
        "finish_reasons": dict(sorted(Counter(r.finish_reason for r in good).items())),
        "wall_s": wall_s, "output_tokens_per_s": rate(tokens), "requests_per_s": rate(len(good)),
    }
    if errors:
        out["error_samples"] = _samples(errors)
    if mismatches:
        out["mismatch_samples"] = _samples(mismatches)
    out["ok"] = len(records) > 0 and not errors and not mismatches
    return out


def metrics_endpoint(url: str) -> str:
    """``host:port`` (or a full URL) -> the Prometheus endpoint ``http://host:port/metrics``."""
    if "://" not in url:
        url = f"http://{url}"
    scheme, _, rest = url.partition("://")
    return url if "/" in rest else f"{url}/metrics"


def generate_counters(metrics: dict, model: str = MODEL) -> dict[str, dict[str, float]]:
    """The model's step counts by profile and its token counters, from :func:`parse_metrics` output."""
    steps = {dict(labels)["profile"]: v for (name, labels), v in metrics.items()
             if name == STEP_METRIC and dict(labels).get("model") == model and "profile" in dict(labels)}
    tokens = {key: v for key, name in TOKEN_METRICS.items() for (n, labels), v in metrics.items()
              if n == name and dict(labels).get("model") == model}
    return {"steps": steps, "tokens": tokens}


def _profile_order(name: str) -> list:
    """Natural order: ``decode_b2`` before ``decode_b16``, decode before prefill (their declared order)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def counters_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    """``after - before`` per counter; step profiles that did not move are left out.

    >>> counters_delta({"steps": {"decode_b2": 1}, "tokens": {}},
    ...                {"steps": {"decode_b2": 5, "decode_b16": 2, "prefill_64": 0}, "tokens": {}})
    {'steps': {'decode_b2': 4, 'decode_b16': 2}, 'tokens': {}}
    """
    steps = {p: v - before["steps"].get(p, 0.0) for p, v in after["steps"].items()}
    tokens = {k: v - before["tokens"].get(k, 0.0) for k, v in after["tokens"].items()}
    return {"steps": {p: int(steps[p]) for p in sorted(steps, key=_profile_order) if steps[p]},
            "tokens": {k: int(n) for k, n in tokens.items()}}


def read_counters(metrics_url: str, model: str = MODEL, timeout_s: float = 10.0) -> dict:
    with urllib.request.urlopen(metrics_endpoint(metrics_url), timeout=timeout_s) as r:
        return generate_counters(parse_metrics(r.read().decode()), model)


# ---------------------------------------------------------------------------
# Talking to Triton: one session per thread, one request in flight at a time

def _host_port(url: str, default_port: int) -> tuple[str, int]:
    url = url.split("://", 1)[-1].rstrip("/")
    host, _, port = url.rpartition(":")
    return (host, int(port)) if host else (url, default_port)


class GrpcSession:
    """A tritonclient gRPC stream: one per client, so one per thread."""

    def __init__(self, url: str, model: str = MODEL, timeout_s: float = 60.0):
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.grpc = importlib.import_module("tritonclient.grpc")  # only when used: pure helpers need no tritonclient
        self.ids = itertools.count()
        self.strays = 0  # responses of an earlier request that came after its final one
        self._open()

    def _open(self) -> None:
        self.responses: queue.Queue = queue.Queue()
        self.client = self.grpc.InferenceServerClient(self.url)
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error) -> None:  # tritonclient's stream thread: stamp the arrival time here
        self.responses.put((time.perf_counter(), result, error))

    def _inputs(self, body: dict) -> list:
        inputs = []
        for name, value in body.items():
            dtype, np_type = INPUT_TYPES[name]
            if name == "text_input":
                value = value.encode()
            array = np.array(value if name == "input_ids" else [value], dtype=np_type)
            inputs.append(self.grpc.InferInput(name, list(array.shape), dtype))
            inputs[-1].set_data_from_numpy(array)
        return inputs

    def stream(self, body: dict) -> Iterator[Chunk]:
        """Send one request; yield its responses as they arrive, up to the final one."""
        request_id = f"r{next(self.ids)}"
        try:
            self.client.async_stream_infer(self.model, self._inputs(body), request_id=request_id,
                                           enable_empty_final_response=True)
        except Exception as e:  # tritonclient raises its own exception types for a broken stream
            detail = self._callback_error() or e  # the stream reports why it broke through the callback
            self.reset()
            raise RequestFailed(f"could not send: {detail}") from e
        while True:
            try:
                t, result, error = self.responses.get(timeout=self.timeout_s)
            except queue.Empty:
                self.reset()
                raise RequestFailed(f"no response within {self.timeout_s:g} s") from None
            if error is not None:
                raise RequestFailed(str(error))
            response = result.get_response()
            if response.id != request_id:
                self.strays += 1
                continue
            chunk = self._chunk(t, result, response)
            yield chunk
            if chunk.final:
                return

    def _callback_error(self) -> str | None:
        try:
            while True:
                _, _, error = self.responses.get_nowait()
                if error is not None:
                    return str(error)
        except queue.Empty:
            return None

    @staticmethod
    def _chunk(t: float, result, response) -> Chunk:
        def one(name):
            a = result.as_numpy(name)
            return None if a is None or a.size == 0 else a.reshape(-1)[0]

        ids = result.as_numpy("output_ids")
        text, reason = one("text_output"), one("finish_reason")
        n_in, n_out = one("num_input_tokens"), one("num_output_tokens")
        final = response.parameters.get("triton_final_response")
        return Chunk(t, tuple(int(x) for x in ids.reshape(-1)) if ids is not None else (),
                     text.decode("utf-8", "replace") if text is not None else "",
                     reason.decode() if reason is not None else "", bool(final and final.bool_param),
                     None if n_in is None else int(n_in), None if n_out is None else int(n_out))

    def reset(self) -> None:
        """A fresh stream, after a timeout or a broken one: late responses must not reach the next request."""
        self._shut()
        self._open()

    def _shut(self) -> None:
        try:
            self.client.stop_stream(cancel_requests=True)
        finally:
            self.client.close()

    def close(self) -> None:
        # Nothing is in flight now: anything queued came after a final response. Counted before the stop,
        # whose cancellation arrives as one more callback.
        self.strays += self.responses.qsize()
        self._shut()


class HttpSession:
    """One keep-alive HTTP connection reading ``/v2/models/<model>/generate_stream`` server-sent events."""

    def __init__(self, url: str, model: str = MODEL, timeout_s: float = 60.0):
        host, port = _host_port(url, 8000)
        self.path = f"/v2/models/{model}/generate_stream"
        self.timeout_s = timeout_s
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout_s)  # timeout: per socket read
        self.strays = 0  # responses after the final one are the caller's to see (HTTP keeps them in order)

    def stream(self, body: dict) -> Iterator[Chunk]:
        """Send one request; yield every event until the server ends the stream."""
        complete = False
        try:
            self.conn.request("POST", self.path, json.dumps(body),
                              {"Content-Type": "application/json", "Accept": "text/event-stream"})
            response = self.conn.getresponse()
            if response.status != 200:
                complete = True
                raise RequestFailed(f"HTTP {response.status}: {_error_text(response.read())}")
            while line := response.readline():
                t = time.perf_counter()
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    response.read()
                    complete = True
                    raise RequestFailed(str(event["error"]))
                yield _chunk_from_event(t, event)
            complete = True
        except TimeoutError:
            raise RequestFailed(f"no response within {self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise RequestFailed(f"{type(e).__name__}: {e}") from e
        finally:
            if not complete:  # unread bytes would corrupt the next request on this connection
                self.conn.close()

    def close(self) -> None:
        self.conn.close()


def _error_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    payload = text[5:] if text.startswith("data:") else text
    try:
        return str(json.loads(payload).get("error", text))
    except (ValueError, AttributeError):
        return text


def _chunk_from_event(t: float, event: dict) -> Chunk:
    """An SSE event of the generate extension; a one-element tensor comes as a scalar, longer ones as lists."""
    ids = event.get("output_ids", [])
    ids = tuple(ids) if isinstance(ids, list) else (ids,)
    reason = event.get("finish_reason", "")
    reason = reason[0] if isinstance(reason, list) else reason
    text = event.get("text_output", "")
    text = "".join(text) if isinstance(text, list) else text
    # HTTP has no final flag: the response that carries the finish reason is the last one.
    return Chunk(t, tuple(int(x) for x in ids), text, reason, bool(reason),
                 event.get("num_input_tokens"), event.get("num_output_tokens"))


def open_session(protocol: str, url: str, model: str = MODEL, timeout_s: float = 60.0) -> GrpcSession | HttpSession:
    """A session for one thread; ``timeout_s`` bounds every wait for a response."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not supported; choose one of {list(PROTOCOLS)}")
    return (GrpcSession if protocol == "grpc" else HttpSession)(url, model, timeout_s)


def send(session: GrpcSession | HttpSession, request: GenRequest,
         on_chunk: Callable[[Chunk], object] | None = None) -> Record:
    """One request to the end of its stream, checked; a failure is recorded, not raised.

    ``on_chunk`` sees each response as it arrives (the demo prints the text).
    """
    chunks: list[Chunk] = []
    sent_at = time.perf_counter()
    try:
        for chunk in session.stream(request.body()):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    except RequestFailed as e:
        record = check_stream(request, sent_at, chunks)
        record.error = str(e)
        return record
    return check_stream(request, sent_at, chunks)


# ---------------------------------------------------------------------------
# Load: concurrent sessions

def run_generate(url: str, protocol: str = "grpc", *, model: str = MODEL, concurrency: int = 1,
                 requests: int | None = 32, duration_s: float | None = None, prompt_len: tuple[int, int] = (64, 64),
                 text: str | None = None, max_tokens: int = 64, ignore_eos: bool = True, temperature: float = 0.0,
                 seed: int = 0, vocab: int = 1000, warmup: int = 1, metrics_url: str | None = None,
                 timeout_s: float = 60.0) -> dict:
    """Drive ``model`` with ``concurrency`` streaming sessions; one result dict (see :func:`summarize`).

    ``requests`` (in total) bounds the run unless ``duration_s`` is given;
    requests in flight at the deadline still count. Each thread first sends
    ``warmup`` untimed requests. With ``metrics_url``, the server's step counters
    are read when the clock starts and after the last response, and ``steps``
    gives their change by profile (other traffic on the server counts too).
    Raises RequestFailed when a warm-up request fails (nothing was timed).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens {max_tokens} must be >= 1")
    if text is not None and not text:
        raise ValueError("text is empty; give a prompt of at least one character or use prompt_len")
    if vocab < 1:
        raise ValueError(f"vocab {vocab} must be >= 1")
    settings = dict(max_tokens=max_tokens, prompt_len=prompt_len, text=text, vocab=vocab, ignore_eos=ignore_eos,
                    temperature=temperature, seed=seed)
    counters = {}

    def read_before() -> None:  # when every thread has warmed up, just before the clock starts
        counters["before"] = read_counters(metrics_url, model) if metrics_url else None

    loop = ClosedLoop(concurrency, requests, duration_s, on_start=read_before)

    def worker(w: int) -> tuple[list[Record], int]:
        records: list[Record] = []
        session = open_session(protocol, url, model, timeout_s)
        try:
            for j in range(warmup):
                r = send(session, make_request(j, stream=1 + w, **settings))
                if r.error is not None or r.mismatch is not None:
                    raise RequestFailed(f"warm-up request failed: {r.error or r.mismatch}")
            loop.wait_start()
            for i in loop.indices():
                records.append(send(session, make_request(i, **settings)))
        finally:
            session.close()
        return records, session.strays

    log.info("generate: %s %s model %s, %d threads", protocol, url, model, concurrency)
    per_worker = loop.run(worker)
    wall_s = (loop.last_done or loop.t0) - loop.t0
    records = sorted((r for part, _ in per_worker for r in part), key=lambda r: r.index)
    strays = sum(n for _, n in per_worker)
    result = summarize(records, wall_s)
    if strays:
        result["mismatches"] += strays
        result.setdefault("mismatch_samples", []).append(f"{strays} responses arrived after their request's final one")
        result["ok"] = False
    if metrics_url:
        result["server"] = counters_delta(counters["before"], read_counters(metrics_url, model))
    return {
        "url": url, "protocol": protocol, "model": model, "concurrency": concurrency, "requests": loop.requests,
        "duration_s": duration_s, "prompt_len": None if text is not None else list(prompt_len), "text": text,
        "max_tokens": max_tokens, "ignore_eos": ignore_eos, "temperature": temperature, "seed": seed,
        "vocab": vocab, "warmup": warmup, **result,
    }


def generate_table(result: dict) -> str:
    """The latency table (ms), a throughput line, and the step profiles that served the run when read."""
    rows = [[name, result[key]["count"], *(fmt_ms(result[key][f"{q}_ms"]) for q in ("p50", "p90", "p99", "mean"))]
            for name, key in (("ttft", "ttft"), ("itl (per token)", "itl"), ("end-to-end", "e2e"))]
    lines = [format_table(["latency_ms", "samples", "p50", "p90", "p99", "mean"], rows)]
    tps, rps = result["output_tokens_per_s"], result["requests_per_s"]
    lines.append(
        f"\n{result['completed']}/{result['count']} requests completed, {result['errors']} errors, "
        f"{result['mismatches']} mismatches; {result['output_tokens']} output tokens in {result['wall_s']:.2f} s: "
        f"{'-' if tps is None else f'{tps:.1f}'} tokens/s, {'-' if rps is None else f'{rps:.2f}'} requests/s")
    if "server" in result:
        steps = result["server"]["steps"]
        total = sum(steps.values())
        rows = [[p, n, f"{100 * n / total:.1f}%"] for p, n in steps.items()]
        lines.append("\nEngine steps by profile (server counters, delta over the run)")
        lines.append(format_table(["profile", "steps", "share"], rows or [["-", 0, "-"]]))
        tokens = result["server"]["tokens"]
        if tokens:
            lines.append("server counted " + ", ".join(f"{k} {v}" for k, v in tokens.items()))
    for key in ("error_samples", "mismatch_samples"):
        for message in result.get(key, []):
            lines.append(f"{key.split('_')[0]}: {message}")
    return "\n".join(lines)
