"""Request checks and scheduler glue for the ``generate`` Triton model, kept free of Triton.

model.py hands this module each request's inputs as numpy arrays; everything that
decides whether and how a request is served lives here and is tested without a
server. Input names are the ones TensorRT-LLM, vLLM and genai-perf clients send.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmprofiles.generation.sampler import SamplingParams
from llmprofiles.generation.scheduler import TIME_PARTS, GenerateRequest, Observer, Output
from llmprofiles.serving.llm import BadRequest
from llmprofiles.serving.pump import ResponsePump

TTFT_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
ITL_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
MAX_TEXT_BYTES_PER_POSITION = 64  # a prompt's bytes, checked before tokenizing: no real text needs more
SHOWN = 64  # characters of a bad value shown back in an error

log = logging.getLogger(__name__)


def shown(value: object) -> str:
    """``repr(value)`` cut to a sane length, so an error never echoes a huge input back."""
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


# name -> (kind, default); sampling_parameters may carry the same keys.
SCALARS: dict[str, tuple[str, Any]] = {
    "max_tokens": ("int", 16), "min_tokens": ("int", 0), "stream": ("bool", False),
    "exclude_input_in_output": ("bool", True), "temperature": ("float", 0.0), "top_k": ("int", 0),
    "top_p": ("float", 1.0), "seed": ("int", None), "end_id": ("int", None),
    "return_num_input_tokens": ("bool", False), "return_num_output_tokens": ("bool", False),
}
# vLLM names for the same settings.
ALIASES = {"max_new_tokens": "max_tokens", "random_seed": "seed"}


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_context: int

    @property
    def max_text_bytes(self) -> int:
        return MAX_TEXT_BYTES_PER_POSITION * self.max_context


def _scalar(name: str, array: np.ndarray) -> Any:
    if array.size != 1:
        raise BadRequest(f"{name} must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _coerce(name: str, kind: str, value: Any) -> Any:
    """A JSON or tensor value as ``kind``; numbers may come as strings (vLLM clients send them so)."""
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    try:
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
        elif kind == "int":
            if isinstance(value, str):
                value = value.strip()
                if not value.lstrip("-").isdecimal() or not value.isascii():
                    raise ValueError
                return int(value)
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
                return int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if math.isfinite(out):
                return out
    except (TypeError, ValueError):
        pass
    raise BadRequest(f"{name} {shown(value)} is not a valid {kind}")


def parse_sampling_parameters(raw: Any) -> dict[str, Any]:
    """The vLLM-style JSON object of settings; unknown keys are refused, not ignored."""
    text = bytes(raw).decode("utf-8", "replace") if isinstance(raw, (bytes, np.bytes_)) else str(raw)
    try:
        obj = json.loads(text) if text.strip() else {}
    except ValueError:
        raise BadRequest(f"sampling_parameters {shown(text)} is not valid JSON; send a JSON object") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"sampling_parameters {shown(text)} must be a JSON object, e.g. {{\"temperature\": 0.7}}")
    out = {}
    for key, value in obj.items():
        name = ALIASES.get(key, key)
        if name not in SCALARS:
            raise BadRequest(f"sampling_parameters key {shown(key)} is not supported; supported: {sorted(SCALARS)}")
        if value is None:
            continue
        out[name] = _coerce(f"sampling_parameters[{key!r}]", SCALARS[name][0], value)
    return out


PROMPT_INPUTS = ("text_input", "input_ids", "sampling_parameters")
INPUT_NAMES = (*PROMPT_INPUTS, *SCALARS)


def check_shapes(shapes: Mapping[str, list[int]], limits: Limits) -> None:
    """Refuse by declared shape alone, before any input is read or converted."""
    for name, shape in shapes.items():
        count = math.prod(shape)
        if name == "input_ids":
            if count >= limits.max_context:
                raise BadRequest(f"input_ids has shape {shown(list(shape))}: {count} tokens; allowed at most "
                                 f"{limits.max_context - 1} (the context is {limits.max_context})")
        elif count != 1:
            raise BadRequest(f"{name} must hold exactly one value, got shape {shown(list(shape))}")


def parse_request(inputs: Mapping[str, np.ndarray], tokenizer, limits: Limits) -> tuple[GenerateRequest, dict]:
    """A checked GenerateRequest from a request's inputs, and the flags for its responses.

    Tensor inputs win over the same key in ``sampling_parameters``.
    """
    settings = {name: default for name, (_, default) in SCALARS.items()}
    if "sampling_parameters" in inputs:
        settings |= parse_sampling_parameters(_scalar("sampling_parameters", inputs["sampling_parameters"]))
    for name, (kind, _) in SCALARS.items():
        if name in inputs:
            settings[name] = _coerce(name, kind, _scalar(name, inputs[name]))
    prompt_ids, prompt_text = _prompt(inputs, tokenizer, limits)
    max_tokens, min_tokens = settings["max_tokens"], settings["min_tokens"]
    room = limits.max_context - len(prompt_ids)
    if max_tokens < 1:
        raise BadRequest(f"max_tokens {max_tokens} must be >= 1")
    if max_tokens > room:
        raise BadRequest(f"prompt of {len(prompt_ids)} tokens plus max_tokens {max_tokens} exceeds the context of "
                         f"{limits.max_context} positions; allowed max_tokens for this prompt: [1, {room}]")
    if not 0 <= min_tokens <= max_tokens:
        raise BadRequest(f"min_tokens {min_tokens} must be in [0, max_tokens = {max_tokens}]")
    t, k, p = settings["temperature"], settings["top_k"], settings["top_p"]
    if t < 0:
        raise BadRequest(f"temperature {t} must be >= 0 (0 = greedy)")
    if k < 0:
        raise BadRequest(f"top_k {k} must be >= 0 (0 = no limit)")
    if not 0 < p <= 1:
        raise BadRequest(f"top_p {p} must be in (0, 1]")
    seed = settings["seed"]
    if seed is not None and not 0 <= seed < 2**64:
        raise BadRequest(f"seed {seed} must be in [0, 2**64 - 1]")
    end_id = settings["end_id"]
    if end_id is not None and not 0 <= end_id < limits.vocab_size:
        raise BadRequest(f"end_id {end_id} is out of range; allowed [0, {limits.vocab_size - 1}]")
    request = GenerateRequest(
        prompt_ids=prompt_ids, max_tokens=max_tokens, min_tokens=min_tokens,
        sampling=SamplingParams(temperature=t, top_k=k, top_p=p, seed=seed), end_id=end_id,
        stream=settings["stream"], exclude_input=settings["exclude_input_in_output"], prompt_text=prompt_text,
    )
    flags = {"num_input_tokens": settings["return_num_input_tokens"],
             "num_output_tokens": settings["return_num_output_tokens"]}
    return request, flags


def _prompt(inputs: Mapping[str, np.ndarray], tokenizer, limits: Limits) -> tuple[list[int], str | None]:
    has_text, has_ids = "text_input" in inputs, "input_ids" in inputs
    if has_text == has_ids:
        raise BadRequest("send exactly one of text_input (BYTES [1]) or input_ids (INT64 [n]), got "
                         + ("both" if has_text else "neither"))
    ctx = limits.max_context
    if has_text:
        raw = _scalar("text_input", inputs["text_input"])
        data = raw if isinstance(raw, (bytes, np.bytes_)) else str(raw).encode()
        if len(data) == 0:
            raise BadRequest("text_input is empty; send a prompt of at least one character")
        if len(data) > limits.max_text_bytes:
            raise BadRequest(f"text_input of {len(data)} bytes is too long; allowed at most {limits.max_text_bytes} "
                             f"bytes (the context is {ctx} tokens)")
        text = bytes(data).decode("utf-8", "replace")
        ids = tokenizer.encode(text)
        if len(ids) >= ctx:
            raise BadRequest(f"text_input is {len(ids)} tokens; allowed at most {ctx - 1} (the context is {ctx})")
        return ids, text
    array = inputs["input_ids"]
    if array.ndim != 1 and not (array.ndim == 2 and array.shape[0] == 1):
        raise BadRequest(f"input_ids must be 1-D [n] (or [1, n]), got shape {list(array.shape)}")
    if array.size == 0:
        raise BadRequest("input_ids is empty; send at least one token id")
    if array.size >= ctx:
        raise BadRequest(f"input_ids has {array.size} tokens; allowed at most {ctx - 1} (the context is {ctx})")
    ids = [int(x) for x in array.reshape(-1)]
    bad = next((x for x in ids if not 0 <= x < limits.vocab_size), None)
    if bad is not None:
        raise BadRequest(f"token id {bad} in input_ids is out of range; allowed [0, {limits.vocab_size - 1}]")
    return ids, None


def response_arrays(out: Output, flags: dict) -> dict[str, np.ndarray]:
    """The output tensors of one response, as numpy arrays (BYTES as object arrays)."""
    arrays = {
        "text_output": np.array([out.text.encode("utf-8")], dtype=np.object_),
        "output_ids": np.array(out.ids, dtype=np.int64),
        "finish_reason": np.array([out.finish_reason.encode()], dtype=np.object_),
    }
    if flags.get("num_input_tokens"):
        arrays["num_input_tokens"] = np.array([out.num_input_tokens], dtype=np.uint32)
    if flags.get("num_output_tokens"):
        arrays["num_output_tokens"] = np.array([out.num_output_tokens], dtype=np.uint32)
    return arrays


class MetricsObserver(Observer):
    """The scheduler's hooks as Triton metrics, labelled by model (``pb_utils`` is passed in).

    Each update of a Triton metric is a round trip to the server, so the scheduler
    thread only records: counters summed, gauges' last values, histogram samples.
    :meth:`flush` sends what was recorded. The model flushes counters and
    histograms before each final response (so a client that reads the metrics
    after its last response sees its request counted), and a timer thread sends
    everything every ``flush_s``. Gauges, and the scheduler's time and response counters, go from the
    timer only (no round trip before a final response). A gauge's
    ``set`` keeps the GIL for its whole round trip (python_backend ``metric.cc``:
    ``SendSetValueRequest`` has no ``gil_scoped_release``, unlike increment and
    observe), stopping the scheduler thread's Python meanwhile.
    """

    def __init__(self, pb_utils, model: str, profile_names: tuple[str, ...], flush_s: float = 0.1):
        F = pb_utils.MetricFamily
        fam = {
            "active": F("llm_generate_active_sequences", "Sequences holding a KV slot", F.GAUGE),
            "queue": F("llm_generate_queue_size", "Requests waiting for a KV slot", F.GAUGE),
            "prompt": F("llm_generate_prompt_tokens_total", "Prompt tokens prefilled", F.COUNTER),
            "output": F("llm_generate_output_tokens_total", "Output tokens generated", F.COUNTER),
            "ttft": F("llm_generate_time_to_first_token_ms", "Time to first token (ms), queue included", F.HISTOGRAM),
            "itl": F("llm_generate_inter_token_latency_ms", "Time between two tokens of a sequence (ms), one sample per decode step", F.HISTOGRAM),
            "steps": F("llm_generate_steps_total", "Engine steps, by optimization profile", F.COUNTER),
            "time": F("llm_generate_scheduler_seconds_total",
                      "The scheduler thread's time, by part: iteration (all of it); a decode launch's inputs, step "
                      "(the engine call) and sample; wait (for a step's tokens); emit (sending responses); prefill",
                      F.COUNTER),
            "responses": F("llm_generate_responses_total",
                           "Responses emitted by the scheduler thread (finals are sent from their own)", F.COUNTER),
        }
        self.families = fam  # families must outlive their metrics
        labels = {"model": model}
        self.active, self.queue = fam["active"].Metric(labels=labels), fam["queue"].Metric(labels=labels)
        self.prompt, self.output = fam["prompt"].Metric(labels=labels), fam["output"].Metric(labels=labels)
        self.ttft = fam["ttft"].Metric(labels=labels, buckets=list(TTFT_BUCKETS_MS))
        self.itl = fam["itl"].Metric(labels=labels, buckets=list(ITL_BUCKETS_MS))
        self.steps = [fam["steps"].Metric(labels={"model": model, "profile": n}) for n in profile_names]
        self.time = {part: fam["time"].Metric(labels={"model": model, "part": part}) for part in TIME_PARTS}
        self.responses = fam["responses"].Metric(labels=labels)
        self._time = dict.fromkeys(TIME_PARTS, 0.0)  # sent by the timer only: no round trip on a final response
        self._responses = 0
        self._lock, self._flushing = threading.Lock(), threading.Lock()
        self._counts: dict[int, list] = {}  # id(metric) -> [metric, sum]
        self._gauges: dict[int, tuple] = {}  # id(metric) -> (metric, last value)
        self._samples: list[tuple] = []  # (histogram, value)
        self._sent_gauges: dict[int, float] = {}
        self._stopped = threading.Event()
        self._timer = threading.Thread(target=self._tick, args=(flush_s,), name="generate-metrics", daemon=True)
        self._timer.start()

    def _count(self, metric, n: float) -> None:
        self._counts.setdefault(id(metric), [metric, 0])[1] += n

    def step(self, profile_index: int, tokens: int) -> None:
        with self._lock:
            self._count(self.steps[profile_index], 1)

    def first_token(self, ttft_ms: float, prompt_tokens: int) -> None:
        with self._lock:
            self._samples.append((self.ttft, ttft_ms))
            self._count(self.prompt, prompt_tokens)
            self._count(self.output, 1)

    def tokens(self, itl_ms: list[float]) -> None:
        # The sequences of a decode step share it: one inter-token latency per step (their median).
        with self._lock:
            self._samples.append((self.itl, sorted(itl_ms)[len(itl_ms) // 2]))
            self._count(self.output, len(itl_ms))

    def scheduler_time(self, seconds: dict[str, float], responses: int) -> None:
        with self._lock:
            for part, t in seconds.items():
                self._time[part] += t
            self._responses += responses

    def gauges(self, active: int, queued: int) -> None:
        with self._lock:
            self._gauges[id(self.active)] = (self.active, active)
            self._gauges[id(self.queue)] = (self.queue, queued)

    def flush(self, wait: bool = True, gauges: bool = True) -> None:
        """Send what was recorded. ``wait=False`` returns at once when another thread is flushing;
        ``gauges=False`` leaves the gauges for a later flush (see the class doc)."""
        if not self._flushing.acquire(blocking=wait):
            return
        try:
            with self._lock:
                counts, samples = self._counts, self._samples
                self._counts, self._samples = {}, []
                times, responses = {}, 0
                if gauges:
                    times, self._time = self._time, dict.fromkeys(TIME_PARTS, 0.0)
                    responses, self._responses = self._responses, 0
                gauges, self._gauges = (self._gauges, {}) if gauges else ({}, self._gauges)
            for part, t in times.items():
                if t:
                    self.time[part].increment(t)
            if responses:
                self.responses.increment(responses)
            for metric, n in counts.values():
                metric.increment(n)
            for metric, value in samples:
                metric.observe(value)
            for key, (metric, value) in gauges.items():
                if self._sent_gauges.get(key) != value:  # only on change
                    metric.set(value)
                    self._sent_gauges[key] = value
        finally:
            self._flushing.release()

    def _tick(self, flush_s: float) -> None:
        while not self._stopped.wait(flush_s):
            try:
                self.flush()
            except Exception:  # a failed update must not end the timer; the next flush retries nothing lost
                log.exception("flushing generate metrics failed")

    def close(self) -> None:
        self._stopped.set()
        self._timer.join(5)
        self.flush()


class Finals(ResponsePump):
    """Final responses, sent from one thread of their own once the metrics they count have been sent.

    Before a final response the model sends what the scheduler recorded (a client that reads the metrics
    after its last response sees its request counted). That is a round trip to the server per metric
    changed, about seven per final at 64 streams, plus the final's own send, and they held the
    scheduler thread while the other streams waited for their next step. Here the scheduler only queues
    the final (:meth:`put`); a :class:`~llmprofiles.serving.pump.ResponsePump` thread flushes, then sends
    it. A request's earlier responses were sent before its final was queued, so they still arrive first.
    """

    def __init__(self, observer: MetricsObserver, send: Callable[[Output], None]):
        def flushed(out: Output) -> None:
            try:
                observer.flush(gauges=False)
            except Exception:  # the metrics are late, the response must still go
                log.exception("flushing generate metrics before a final response failed")
            send(out)

        super().__init__(flushed, threads=1)


def stop_in_turn(stages: list[tuple[str, Callable[[], None] | None]], budget_s: float = 25.0,
                 say: Callable[[str], None] = lambda line: None) -> str:
    """Run a model's ``finalize`` stages in order, each timed, within ``budget_s``; a line for the server's log.

    Triton gives a model 30 s to unload when the server stops. On the H200 the generate model sometimes took longer
    (bench/NOTES.md, sessions 16 and 17), and nothing said where. The stages run in a thread of their own
    (``generate-finalize``); ``say`` is told each one as it starts, so a stage that never returns is named even if
    nothing else gets out. Past ``budget_s`` this returns without them, and the server can unload: the threads that
    hang are daemons and end with the process. The line gives each stage's seconds (or its error: the next stage
    still runs; or that it was still running), and every ``generate-*`` thread still alive with the innermost frames
    it is in.
    """
    seconds: dict[str, float | str] = {}
    current: list[str] = []

    def run() -> None:
        for name, stop in stages:
            if stop is None:
                continue
            current[:] = [name]
            say(f"finalize: {name}")
            t0 = time.perf_counter()
            try:
                stop()
                seconds[name] = round(time.perf_counter() - t0, 2)
            except Exception as e:  # noqa: BLE001 - a stage that fails must not keep the others from running
                seconds[name] = f"failed after {time.perf_counter() - t0:.2f} s: {type(e).__name__}: {e}"
        current.clear()

    worker = threading.Thread(target=run, name="generate-finalize", daemon=True)
    worker.start()
    worker.join(budget_s)
    if worker.is_alive() and current:
        seconds[current[0]] = f"still running after {budget_s:g} s: gave up"
    frames = sys._current_frames()
    alive = []
    for t in threading.enumerate():
        if t.name.startswith("generate-") and t.is_alive() and t.ident in frames:
            where = traceback.extract_stack(frames[t.ident])[-3:]
            alive.append(f"{t.name} in " + " < ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                                                       for f in reversed(where)))
    return f"finalize s by stage {seconds}" + (f"; threads still alive: {'; '.join(alive)}" if alive else "")
