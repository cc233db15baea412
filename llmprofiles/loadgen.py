"""Load generation and latency comparison against the Triton ``llm`` models.

Traffic is batch 1 in two phases: decode (seq 1) and prefill (seq ``prefill_seq``),
mixed by ``decode_fraction`` (1.0 is all decode, 0.0 all prefill). Every response's
``profile_index`` is checked against the profile the project's profile set says
should serve it, so a load run is also a smoke test. ``client/drive.py`` and
``client/compare.py`` are thin entry points over :func:`run_load` and
:func:`run_compare`.

Example::

    >>> result = run_load("127.0.0.1:8001", "grpc", "llm", decode_fraction=0.9,
    ...                   concurrency=4, requests=200)  # doctest: +SKIP
    >>> result["phases"]["decode"]["p50_ms"], result["ok"]  # doctest: +SKIP
    (2.1, True)
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from llmprofiles.profiles.selection import AUTO, PARAMETER, select_profile
from llmprofiles.profiles.sets import PROFILE_SETS

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class Phase:
    """One traffic shape: ``decode`` (seq 1) or ``prefill`` (seq > 1 usually), batch 1."""

    name: str
    seq: int

    @property
    def label(self) -> str:
        return f"{self.name} (seq={self.seq})"


# ---------------------------------------------------------------------------
# Pure helpers (unit-tested without a server)

def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> list[float | None]:
    """Linearly interpolated percentiles of ``values``; None for each when empty.

    >>> percentiles([1, 2, 3, 4, 5], (50, 100))
    [3.0, 5.0]
    """
    if len(values) == 0:
        return [None] * len(qs)
    return [float(x) for x in np.percentile(np.asarray(values, dtype=np.float64), qs)]


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50/p90/p99 and mean of latencies in ms, keyed as the JSON reports them.

    >>> latency_summary([1, 2, 3, 4, 5])
    {'count': 5, 'p50_ms': 3.0, 'p90_ms': 4.6, 'p99_ms': 4.96, 'mean_ms': 3.0}
    """
    p50, p90, p99 = percentiles(values_ms)
    mean = float(np.mean(values_ms)) if len(values_ms) else None
    return {"count": len(values_ms), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean}


def decode_count(n: int, decode_fraction: float) -> int:
    """How many of the first ``n`` requests are decode: ``n * decode_fraction`` rounded half up."""
    return math.floor(n * decode_fraction + 0.5)


def phase_of(i: int, decode_fraction: float) -> str:
    """Phase of request ``i``: spreads decode evenly, so every prefix of requests keeps the ratio."""
    return "decode" if decode_count(i + 1, decode_fraction) > decode_count(i, decode_fraction) else "prefill"


def default_profile_set(model: str) -> str:
    """The profile set a model was built from: ``single`` for the baseline ``llm_single``."""
    return "single" if model == "llm_single" else "multi"


def phase_shapes(profile_set: str, seq: int) -> dict[str, tuple[int, int]]:
    """Shapes of one batch-1 request: every input of the profile set is ``[1, seq]``."""
    return {name: (1, seq) for name in PROFILE_SETS[profile_set].input_names}


def expected_profile(profile_set: str, seq: int, profile: str | int = AUTO) -> int:
    """The profile index that must serve a ``[1, seq]`` request.

    ``auto`` is ordered first-fit over ``PROFILE_SETS[profile_set]``; a named or
    indexed profile must hold the shapes. Raises SelectionError (a ValueError)
    naming the shapes and profiles when no profile may serve them.

    >>> expected_profile("multi", 1), expected_profile("multi", 128), expected_profile("single", 1)
    (0, 1, 0)
    """
    return select_profile(PROFILE_SETS[profile_set], phase_shapes(profile_set, seq), profile)


def profile_label(profile_set: str, index: int) -> str:
    names = PROFILE_SETS[profile_set].names
    return f"{index} ({names[index]})" if 0 <= index < len(names) else f"{index} (unknown)"


def served_label(profile_set: str, served: dict[str, int]) -> str:
    """``{"0": 180}`` -> ``0 (decode) x180``; several profiles are comma-separated."""
    return ", ".join(f"{profile_label(profile_set, int(i))} x{n}" for i, n in sorted(served.items())) or "-"


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table: first column left-aligned, the others right-aligned, a rule under the header."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def request_arrays(seed: int, i: int, seq: int, vocab: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids for request ``i``, reproducible from ``(seed, stream, i)`` whatever the thread order.

    Timed requests use stream 0; warm-up calls use others so they never repeat a timed request.
    """
    input_ids = np.random.default_rng((seed, stream, i)).integers(0, vocab, size=(1, seq), dtype=np.int64)
    position_ids = np.arange(seq, dtype=np.int64)[None, :]
    return input_ids, position_ids


def request_parameters(profile: str | int) -> dict | None:
    """Triton request parameters: none for ``auto`` (the server's default), else the choice."""
    if profile == AUTO:
        return None
    return {PARAMETER: int(profile) if isinstance(profile, str) and profile.isdigit() else profile}


# ---------------------------------------------------------------------------
# Talking to Triton

@dataclass(frozen=True)
class Reply:
    latency_ms: float
    profile_index: int
    logits_shape: tuple[int, ...]


class Caller:
    """One tritonclient (gRPC or HTTP) for one thread: tritonclient clients are not thread-safe."""

    def __init__(self, protocol: str, url: str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not supported; choose one of {list(PROTOCOLS)}")
        # Imported here so the pure helpers above need no tritonclient (or gevent, for HTTP).
        self.tc = importlib.import_module(f"tritonclient.{protocol}")
        self.client = self.tc.InferenceServerClient(url)
        self.outputs = [self.tc.InferRequestedOutput("logits"), self.tc.InferRequestedOutput("profile_index")]

    def __call__(self, model: str, input_ids: np.ndarray, position_ids: np.ndarray,
                 parameters: dict | None = None) -> Reply:
        inputs = []
        for name, array in (("input_ids", input_ids), ("position_ids", position_ids)):
            inputs.append(self.tc.InferInput(name, list(array.shape), "INT64"))
            inputs[-1].set_data_from_numpy(array)
        t0 = time.perf_counter()
        result = self.client.infer(model, inputs, outputs=self.outputs, parameters=parameters)
        latency_ms = (time.perf_counter() - t0) * 1e3
        return Reply(latency_ms, int(result.as_numpy("profile_index")[0]), tuple(result.as_numpy("logits").shape))

    def close(self) -> None:
        self.client.close()


def request_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that fail one request (the server refused it or the connection broke)."""
    from tritonclient.utils import InferenceServerException

    return InferenceServerException, OSError


def probe_vocab(protocol: str, url: str, model: str) -> int:
    """The vocab size, read from the logits shape of one seq=1 request."""
    caller = Caller(protocol, url)
    try:
        reply = caller(model, *request_arrays(0, 0, 1, vocab=1))
    finally:
        caller.close()
    return reply.logits_shape[-1]


class Stats:
    """Outcomes of one phase on one model; ``check`` counts a reply as ok, mismatch or error."""

    def __init__(self, phase: Phase, expected: int, vocab: int):
        self.phase, self.expected, self.vocab = phase, expected, vocab
        self.latencies_ms: list[float] = []
        self.served: Counter[int] = Counter()
        self.errors = self.mismatches = 0
        self.error_samples: list[str] = []

    def error(self, message: str) -> None:
        self.errors += 1
        self._sample(message)

    def _sample(self, message: str) -> None:
        if len(self.error_samples) < MAX_ERROR_SAMPLES and message not in self.error_samples:
            self.error_samples.append(message)

    def check(self, reply: Reply) -> None:
        if reply.logits_shape != (1, self.vocab):
            self.error(f"logits shape {list(reply.logits_shape)}, expected [1, {self.vocab}]")
            return
        self.latencies_ms.append(reply.latency_ms)
        self.served[reply.profile_index] += 1
        self.mismatches += reply.profile_index != self.expected

    def merge(self, other: Stats) -> None:
        self.latencies_ms += other.latencies_ms
        self.served += other.served
        self.errors += other.errors
        self.mismatches += other.mismatches
        for message in other.error_samples:
            self._sample(message)

    def summary(self, wall_s: float | None = None) -> dict:
        p50, p90, p99 = percentiles(self.latencies_ms)
        out = {
            "seq": self.phase.seq, "count": len(self.latencies_ms) + self.errors, "errors": self.errors,
            "mismatches": self.mismatches, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "expected_profile": self.expected, "served": {str(i): n for i, n in sorted(self.served.items())},
        }
        if wall_s is not None:
            out["throughput_rps"] = len(self.latencies_ms) / wall_s if wall_s > 0 else None
        if self.error_samples:
            out["error_samples"] = self.error_samples
        return out


# ---------------------------------------------------------------------------
# Load: concurrent clients, one phase mix

class ClosedLoop:
    """``concurrency`` threads that each send one request at a time, drawing request indices from one counter.

    :meth:`run` calls ``worker(w)`` in thread ``w``. A worker opens its connection,
    warms up, calls :meth:`wait_start` (the clock starts once every thread is
    ready; ``on_start`` runs once, just before), then sends request ``i`` for each
    ``i`` in :meth:`indices` until ``requests`` (in total) are taken or
    ``duration_s`` is over; requests in flight at the deadline still count.

    >>> loop = ClosedLoop(2, requests=5)
    >>> sorted(i for part in loop.run(lambda w: (loop.wait_start(), list(loop.indices()))[1]) for i in part)
    [0, 1, 2, 3, 4]
    """

    def __init__(self, concurrency: int, requests: int | None = None, duration_s: float | None = None,
                 on_start=None):
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency} must be >= 1")
        if duration_s is None and (requests is None or requests < 1):
            raise ValueError(f"give requests >= 1 or a duration_s; got requests={requests}")
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"duration_s {duration_s} must be > 0")
        self.concurrency, self.duration_s, self.on_start = concurrency, duration_s, on_start
        self.requests = requests if duration_s is None else None
        self.t0: float | None = None
        self.last_done: float | None = None  # when the last timed request ended
        self.deadline = math.inf
        self._lock, self._next = threading.Lock(), itertools.count()
        self._start = threading.Barrier(concurrency, action=self._start_clock)

    def _start_clock(self) -> None:
        if self.on_start is not None:
            self.on_start()
        self.t0 = time.perf_counter()
        if self.duration_s is not None:
            self.deadline = self.t0 + self.duration_s

    def wait_start(self) -> None:
        self._start.wait()

    def indices(self):
        """The indices this thread sends, one at a time; each is timed as done when the next is asked for."""
        while time.perf_counter() < self.deadline:
            with self._lock:
                i = next(self._next)
            if self.requests is not None and i >= self.requests:
                return
            yield i
            with self._lock:
                self.last_done = max(self.last_done or 0.0, time.perf_counter())

    def run(self, worker) -> list:
        """Every worker's return value, in thread order; a worker's exception is raised here."""
        def guarded(w: int):
            try:
                return worker(w)
            except BaseException:
                self._start.abort()  # threads still waiting to start fail fast instead of hanging
                raise

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(guarded, w) for w in range(self.concurrency)]
        failures = [e for f in futures if (e := f.exception()) is not None]
        if failures:  # report the thread that failed, not the ones it released with BrokenBarrierError
            raise next((e for e in failures if not isinstance(e, threading.BrokenBarrierError)), failures[0])
        return [f.result() for f in futures]


def run_load(url: str, protocol: str, model: str, *, decode_fraction: float = 1.0, prefill_seq: int = 128,
             concurrency: int = 1, requests: int | None = 200, duration_s: float | None = None,
             profile_set: str | None = None, profile: str | int = AUTO, warmup: int = 2, seed: int = 0,
             vocab: int | None = None) -> dict:
    """Drive ``model`` with ``concurrency`` threads; one result dict, per phase and in total.

    ``decode_fraction`` mixes the phases (1.0 decode only, 0.0 prefill only).
    ``requests`` (in total, over all threads) bounds the run unless ``duration_s``
    is given; requests in flight at the deadline still count. Each thread sends
    ``warmup`` untimed calls per phase before the clock starts. ``vocab``
    defaults to the logits width the server returns. Raises SelectionError
    before sending anything when ``profile`` cannot serve a phase's shapes.
    """
    if not 0.0 <= decode_fraction <= 1.0:
        raise ValueError(f"decode_fraction {decode_fraction} is outside [0, 1]")
    loop = ClosedLoop(concurrency, requests, duration_s)
    profile_set = profile_set or default_profile_set(model)
    phases = {p.name: p for p in (Phase("decode", 1), Phase("prefill", prefill_seq))}
    if decode_fraction == 1.0:
        del phases["prefill"]
    if decode_fraction == 0.0:
        del phases["decode"]
    expected = {name: expected_profile(profile_set, p.seq, profile) for name, p in phases.items()}
    vocab = vocab or probe_vocab(protocol, url, model)
    parameters = request_parameters(profile)

    requests = loop.requests
    errors = request_errors()

    def worker(w: int) -> dict[str, Stats]:
        stats = {name: Stats(p, expected[name], vocab) for name, p in phases.items()}
        caller = Caller(protocol, url)
        try:
            for j in range(warmup):  # untimed; also opens this thread's connection
                for p in phases.values():
                    caller(model, *request_arrays(seed, j, p.seq, vocab, stream=1 + w), parameters)
            loop.wait_start()
            for i in loop.indices():
                phase = phases[phase_of(i, decode_fraction)]
                arrays = request_arrays(seed, i, phase.seq, vocab)
                try:
                    stats[phase.name].check(caller(model, *arrays, parameters))
                except errors as e:
                    stats[phase.name].error(str(e))
        finally:
            caller.close()
        return stats

    log.info("load: %s %s model %s, %d threads, phases %s", protocol, url, model, concurrency, list(phases))
    per_worker = loop.run(worker)
    wall_s = time.perf_counter() - loop.t0

    merged = {name: Stats(p, expected[name], vocab) for name, p in phases.items()}
    for stats in per_worker:
        for name, s in stats.items():
            merged[name].merge(s)
    summaries = {name: s.summary(wall_s) for name, s in merged.items()}
    all_latencies = [x for s in merged.values() for x in s.latencies_ms]
    p50, p90, p99 = percentiles(all_latencies)
    total = {
        "count": sum(s["count"] for s in summaries.values()), "errors": sum(s["errors"] for s in summaries.values()),
        "mismatches": sum(s["mismatches"] for s in summaries.values()),
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "throughput_rps": len(all_latencies) / wall_s,
    }
    return {
        "url": url, "protocol": protocol, "model": model, "profile_set": profile_set, "profile": profile,
        "decode_fraction": decode_fraction, "concurrency": concurrency, "requests": requests,
        "duration_s": duration_s, "warmup": warmup, "seed": seed, "vocab": vocab, "wall_s": wall_s,
        "phases": summaries, "total": total,
        "ok": total["count"] > 0 and total["errors"] == 0 and total["mismatches"] == 0,
    }


def load_table(result: dict) -> str:
    rows = []
    for name, s in result["phases"].items():
        rows.append([f"{name} (seq={s['seq']})", s["count"], s["errors"], s["mismatches"], fmt_ms(s["p50_ms"]),
                     fmt_ms(s["p90_ms"]), fmt_ms(s["p99_ms"]), f"{s['throughput_rps']:.1f}",
                     profile_label(result["profile_set"], s["expected_profile"]),
                     served_label(result["profile_set"], s["served"])])
    t = result["total"]
    rows.append(["all", t["count"], t["errors"], t["mismatches"], fmt_ms(t["p50_ms"]), fmt_ms(t["p90_ms"]),
                 fmt_ms(t["p99_ms"]), f"{t['throughput_rps']:.1f}", "", ""])
    header = ["regime", "count", "errors", "mismatches", "p50_ms", "p90_ms", "p99_ms", "req/s", "expected", "served"]
    return format_table(header, rows)


# ---------------------------------------------------------------------------
# Compare: the same calls on two models, alternated

def run_compare(url: str, protocol: str, models: dict[str, tuple[str, str]], phases: Sequence[Phase], *,
                requests: int = 200, warmup: int = 10, seed: int = 0, vocab: int | None = None) -> dict:
    """Median and p99 per-call latency of each phase on each model, one caller, batch 1.

    ``models`` maps a label to ``(model, profile_set)``; the first is the baseline
    of ``speedup`` (baseline median / model median, above 1 is faster), e.g.
    ``{"single": ("llm_single", "single"), "multi": ("llm", "multi")}``. Within a
    phase, call ``i`` goes to every model with the same token ids, and the model
    order alternates from call to call, so drift and noise hit every model alike.
    """
    if requests < 1:
        raise ValueError(f"requests {requests} must be >= 1")
    expected = {(label, p): expected_profile(ps, p.seq) for label, (_, ps) in models.items() for p in phases}
    first_model = next(iter(models.values()))[0]
    vocab = vocab or probe_vocab(protocol, url, first_model)
    labels = list(models)
    errors = request_errors()
    caller = Caller(protocol, url)
    rows = []
    try:
        for phase in phases:
            log.info("compare: %s on %s", phase.label, [m for m, _ in models.values()])
            stats = {label: Stats(phase, expected[label, phase], vocab) for label in labels}
            for j in range(warmup):
                for model, _ in models.values():
                    caller(model, *request_arrays(seed, j, phase.seq, vocab, stream=1))
            for i in range(requests):
                arrays = request_arrays(seed, i, phase.seq, vocab)
                for label in labels if i % 2 == 0 else labels[::-1]:
                    try:
                        stats[label].check(caller(models[label][0], *arrays))
                    except errors as e:
                        stats[label].error(str(e))
            cells = {label: {"model": models[label][0], "profile_set": models[label][1]} | stats[label].summary()
                     for label in labels}
            base = cells[labels[0]]["p50_ms"]
            ratios = {label: base / cells[label]["p50_ms"] if base and cells[label]["p50_ms"] else None
                      for label in labels[1:]}
            rows.append({"regime": phase.name, "seq": phase.seq, "label": phase.label, "cells": cells,
                         "speedup": ratios})
    finally:
        caller.close()
    bad = sum(c["errors"] + c["mismatches"] for r in rows for c in r["cells"].values())
    return {"url": url, "protocol": protocol, "requests": requests, "warmup": warmup, "seed": seed, "vocab": vocab,
            "models": {label: m for label, (m, _) in models.items()}, "rows": rows, "ok": bad == 0}


def compare_tables(result: dict) -> str:
    """The latency table (medians, laid out as in the multi-profile docs) and which profile served each cell."""
    labels, models = list(result["models"]), result["models"]
    latency = [[r["label"], *(fmt_ms(r["cells"][k]["p50_ms"]) for k in labels),
                *("-" if (s := r["speedup"][k]) is None else f"{s:.2f}x" for k in labels[1:])]
               for r in result["rows"]]
    speedups = ["speedup"] if len(labels) == 2 else [f"speedup {k}" for k in labels[1:]]
    served = [[r["label"], *(served_label(r["cells"][k]["profile_set"], r["cells"][k]["served"]) for k in labels)]
              for r in result["rows"]]
    return "\n".join([
        f"Per-call latency (ms), batch=1, median of {result['requests']} calls ({result['protocol']})",
        format_table(["regime", *(f"{k}-profile" for k in labels), *speedups], latency),
        "",
        "Profile served: index (name) x calls",
        format_table(["regime", *(models[k] for k in labels)], served),
    ])
