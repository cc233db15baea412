"""Continuous batching over the generate engine's slots.

One scheduler thread owns the engine, the slots and every response. Each
iteration of :meth:`Scheduler.run_once`:

1. drops cancelled requests, freeing their slots at once;
2. admits waiting requests into free slots;
3. prefills one chunk of one admitted prompt (the largest prefill bucket at
   most), so long prompts never stall the running batch for long; after a
   prompt's last chunk its first token is sampled on the device, and the
   sequence joins the running batch at once. Where the engine has batched
   prefill profiles (``prefill_batches``), that step takes the admitted whole
   prompts of the first one's length bucket with it;
4. launches one decode step for every running sequence (in groups of the
   largest decode bucket) and samples on the device, then takes the tokens of
   the steps launched one iteration earlier (and of this iteration's prefill)
   and emits them (a response's text is made as it is sent). With
   ``decode_steps`` > 1 it launches that many steps back to back (a prompt chunk
   between two of them), each fed the one before's tokens on the device, so the
   host's work per iteration is paid once for that many steps.

On a GPU, decode is overlapped: a step's input tokens are the previous step's
sampled tokens, still on the device, so the host work of step N (reading its
tokens back, detokenizing, sending) runs while step N+1 computes. A sequence
that ended at step N (its end token is only seen then) was launched into step
N+1 too; that token is dropped, and its slot freed. Steps are ordered on the
device, so whoever takes the slot next writes it after. A first token is taken
the same way: the host never waits for a prefill, and the decode step launched
after it reads the token on the device (before, through Triton at 64 streams on
the H200, the prefills' waits were 1.40 of 7.08 ms per decode step, and 0.46 ms
after; bench/NOTES.md, session 11).

With a send budget (``send_budget_s``), a step sends streamed tokens for at most
that long, the streams served least recently first; the others keep their tokens
for a later response, so under load a response carries several tokens and the
steps go on. A first token and a final response always leave at once.

A request joins the decode batch as soon as its prefill ends and leaves it when
it finishes; nobody waits for anybody else to finish. When every slot is busy,
requests wait in a bounded queue; past the bound :meth:`submit` refuses at once.
Everything a request sees goes through ``emit`` on the scheduler thread.

Asking whether a request was cancelled can cost a round trip to the server
(Triton's ``is_cancelled``): 64 of them took longer than a decode step on the
H200. Once :meth:`Scheduler.start` runs the loop, a watcher thread asks every
``cancel_check_s`` and marks the request; the steps only read the mark.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmprofiles.generation.detokenizer import IncrementalDetokenizer
from llmprofiles.generation.sampler import SamplingParams, device_ints, generator_for, sample_tensor

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Every slot is busy and the waiting queue is at its bound."""


@dataclass
class GenerateRequest:
    """One validated request. ``sink`` is the serving layer's handle (Triton's response sender)."""

    prompt_ids: list[int]
    max_tokens: int = 16
    min_tokens: int = 0
    sampling: SamplingParams = SamplingParams()
    end_id: int | None = None
    stream: bool = False
    exclude_input: bool = True
    prompt_text: str | None = None
    sink: Any = None
    is_cancelled: Callable[[], bool] = lambda: False
    # Set by the scheduler: ``cancelled`` once is_cancelled() said so; ``done`` once its final output is
    # emitted (after that, is_cancelled() is never called: the server may have freed what it asks about).
    cancelled: bool = False
    done: bool = False


@dataclass
class Output:
    """What one response carries: new ids and their text; on the last, the finish reason."""

    request: GenerateRequest
    ids: list[int]
    text: str
    final: bool
    finish_reason: str = ""
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None
    error_kind: str = "internal"  # "invalid" (the request's fault), "unavailable" (busy), "internal"


@dataclass
class Sequence:
    request: GenerateRequest
    slot: int
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    submitted: float
    prefilled: int = 0
    generated: list[int] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)  # not yet sent (stream=false sends at the end)
    output_tokens: int = 0  # generated tokens that are part of the output (an end token is not)
    prompt_sent: bool = False
    last_token_at: float = 0.0
    last_sent_at: float = 0.0  # when its last response left (the send budget serves the longest-waiting first)
    in_flight: int = 0  # tokens sampled on the device and not yet taken (launched steps)

    @property
    def length(self) -> int:
        return len(self.request.prompt_ids) + len(self.generated)


@dataclass
class Flight:
    """A launched decode step: its rows, their sampled tokens on the device, and a host copy on the way."""

    group: list[Sequence]
    tokens: torch.Tensor
    host: torch.Tensor | None = None  # pinned copy of ``tokens`` (GPU); None on CPU
    ready: Any = None  # CUDA event after the copy
    first: bool = False  # the first token of its rows (sampled after their prompt's last chunk)

    @classmethod
    def launch(cls, group: list[Sequence], tokens: torch.Tensor, first: bool = False) -> Flight:
        if tokens.device.type != "cuda":
            return cls(group, tokens, first=first)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(group, tokens, host, ready, first)

    def values(self) -> list[int]:
        if self.ready is None:
            return self.tokens.tolist()
        self.ready.synchronize()
        return self.host.tolist()


class Observer:
    """Hooks for metrics; every call comes from the scheduler thread. The defaults do nothing."""

    def step(self, profile_index: int, tokens: int) -> None: ...
    def first_token(self, ttft_ms: float, prompt_tokens: int) -> None: ...
    def tokens(self, itl_ms: list[float]) -> None: ...
    def gauges(self, active: int, queued: int) -> None: ...
    def scheduler_time(self, seconds: dict[str, float], responses: int) -> None: ...


# Where the scheduler thread's time goes (Observer.scheduler_time, seconds per iteration that did work):
# "iteration" is the whole of run_once; the rest are parts of it, and what they leave is the host's own work
# (admitting, detokenizing, end checks, scheduling). A decode launch is three parts: its input tokens
# (inputs), the engine call that enqueues the step (step), and sampling enqueued with the copy of its
# tokens to the host (sample). "wait" is for a launched step's tokens; "prefill" enqueues prompt chunks
# and their first token's sampling; "emit" hands responses to the serving layer (the Triton model sends streamed
# ones there and then, and queues finals for their own thread).
TIME_PARTS = ("iteration", "inputs", "step", "sample", "wait", "emit", "prefill")


class Scheduler:
    """Owns slots and sequences; call :meth:`run_once` in a loop (:meth:`start` runs that loop in a thread)."""

    def __init__(self, engine, tokenizer, emit: Callable[[Output], None], max_queue: int = 64,
                 observer: Observer | None = None, cancel_check_s: float = 0.0, overlap: bool | None = None,
                 send_budget_s: float = 0.0, decode_steps: int = 1, graph_greedy: bool = True):
        self.engine, self.tokenizer, self._emit = engine, tokenizer, emit
        # A decode step whose rows all choose greedily takes their tokens from the engine's step
        # (GenerationEngine.decode_greedy: on CUDA inside the captured graph), not from sample_tensor over its logits.
        self.graph_greedy = graph_greedy
        # Decode steps launched per iteration (see _decode): the host's per-iteration work is paid once for that
        # many steps (its work per token of each row, taking and ending, is not).
        if decode_steps < 1:
            raise ValueError(f"decode_steps {decode_steps} must be >= 1")
        self.decode_steps = decode_steps
        self._spent = dict.fromkeys(TIME_PARTS, 0.0)  # this iteration's seconds, by part (TIME_PARTS)
        self._responses = 0  # emitted in this iteration
        # The most a step spends emitting streamed tokens (0: no limit). Each emit through Triton is a blocking
        # round trip (~0.2 ms on the H200 host), so 64 streams cost ~13 ms of sends per 2.6 ms step. Past the
        # budget, the streams served least recently keep their tokens for a later response: under load each
        # response carries several tokens, and the steps go on. A first token and a final always leave.
        self.send_budget_s = send_budget_s
        self._due: list[Sequence] = []  # streams with tokens to send at the end of this step (with a budget)
        # Overlap needs a device that computes while the host works (a GPU). On a CPU a launched step has
        # already run, so holding its tokens back a step only delays them (measured: TTFT 31 -> 87 ms at 8
        # streams on the CPU machine): there a step's tokens are taken right after it.
        self.overlap = engine.device.type == "cuda" if overlap is None else overlap
        self.max_queue = max_queue
        self.observer = observer or Observer()
        self.eos_id = engine.shape.eos_token_id
        self._lock = threading.Condition()
        self._waiting: deque[tuple[GenerateRequest, float]] = deque()
        self._rejects: deque[Output] = deque()
        self._prefilling: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._flights: list[Flight] = []  # decode steps launched and not yet taken
        self._live: dict[int, GenerateRequest] = {}  # id -> admitted request, for the cancel watcher
        self._stop = False
        self._thread: threading.Thread | None = None
        # Asking whether a request was cancelled can cost a message to the server per request, so each is
        # asked at most every cancel_check_s (0 = every step), by the watcher thread once start() ran.
        self.cancel_check_s = cancel_check_s
        self._last_cancel_check = 0.0
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()
        self._asking = threading.Lock()  # held around each is_cancelled() and while a request is marked done

    # --- called from any thread --------------------------------------------------

    def submit(self, request: GenerateRequest) -> None:
        """Queue a request; raise QueueFull when it would wait beyond the bound."""
        with self._lock:
            waiting_beyond_slots = len(self._waiting) - self.engine.pool.free
            if waiting_beyond_slots >= self.max_queue:
                raise QueueFull(
                    f"server busy: all {self.engine.spec.slots} sequence slots are in use and "
                    f"{max(waiting_beyond_slots, 0)} requests are queued (the bound is {self.max_queue}); retry later")
            self._waiting.append((request, time.perf_counter()))
            self._lock.notify()

    def reject(self, request: GenerateRequest, message: str, kind: str = "invalid") -> None:
        """Send ``message`` as this request's error, from the scheduler thread."""
        with self._lock:
            self._rejects.append(Output(request, [], "", final=True, error=message, error_kind=kind))
            self._lock.notify()

    @property
    def active(self) -> int:
        return len(self._prefilling) + len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="generate-scheduler", daemon=True)
        self._watcher = threading.Thread(target=self._watch, name="generate-cancel-watch", daemon=True)
        self._thread.start()
        self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still in flight end with finish reason ``cancelled``."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._stopped.set()
        if self._thread:
            self._thread.join(timeout)
        if self._watcher:
            self._watcher.join(timeout)
        self._flights = []
        for seq in [*self._prefilling, *self._running]:
            self._finish(seq, "cancelled")
        while self._waiting:
            request, _ = self._waiting.popleft()
            self._retire(request)
            self.emit(Output(request, [], "", final=True, finish_reason="cancelled",
                             num_input_tokens=len(request.prompt_ids)))

    # --- the cancel watcher -----------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.wait(max(self.cancel_check_s, 1e-3)):
            try:
                self._ask_cancelled()
            except Exception:  # a failed question must not end the watching
                log.exception("asking for cancellations failed")

    def _ask_cancelled(self) -> None:
        """Mark every waiting or admitted request whose client cancelled it."""
        with self._lock:
            requests = [r for r, _ in self._waiting] + list(self._live.values())
        for r in requests:
            with self._asking:
                if not (r.done or r.cancelled) and r.is_cancelled():
                    r.cancelled = True

    def _retire(self, request: GenerateRequest) -> None:
        """Before a request's final output: never ask about it again."""
        with self._asking:
            request.done = True

    # --- the scheduler thread -------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._stop or self._waiting or self._rejects or self.active):
                    self._lock.wait()
                if self._stop:
                    return
            try:
                self.run_once()
            except Exception as e:  # an engine fault ends the requests in flight, not the server
                log.exception("generate step failed")
                self._flights, self._due = [], []
                for seq in [*self._prefilling, *self._running]:
                    self._drop(seq)
                    self._retire(seq.request)
                    self.emit(Output(seq.request, [], "", final=True, error=f"internal engine error: {e}"))

    def emit(self, out: Output) -> None:
        t0 = time.perf_counter()
        self._emit(out)
        self._spent["emit"] += time.perf_counter() - t0
        self._responses += 1

    def run_once(self) -> bool:
        """One iteration; True when it did any work."""
        t0 = time.perf_counter()
        did = self._iterate()
        if did:
            spent, self._spent = self._spent, dict.fromkeys(TIME_PARTS, 0.0)
            spent["iteration"] = time.perf_counter() - t0
            self.observer.scheduler_time(spent, self._responses)
            self._responses = 0
        return did

    def _iterate(self) -> bool:
        with self._lock:
            rejects, self._rejects = list(self._rejects), deque()
        for out in rejects:
            self.emit(out)
        did = bool(rejects) | self._drop_cancelled() | self._admit()
        # One prefill chunk per iteration, then decode. Prefilling every prompt that arrived together before
        # the next decode step (a budget of max_chunk tokens per iteration) kept them in lockstep: they
        # finished together, their clients came back together, and the last of each group waited for the
        # others' prefills every time (CPU machine, 8 streams: TTFT p50 50-79 vs 32-42 ms; bench/NOTES.md,
        # session 7). One per iteration staggers them, and a decode step never waits for more than one chunk.
        if self._prefilling:
            t0, emitted = time.perf_counter(), self._spent["emit"]
            self._prefill_next(self._flights)
            self._spent["prefill"] += time.perf_counter() - t0 - (self._spent["emit"] - emitted)
            did = True
        if self._running or self._flights:
            self._decode()
            did = True
        self.observer.gauges(self.active, self.queued)
        return did

    def _drop_cancelled(self) -> bool:
        if self._watcher is None:  # run_once driven directly, with no watcher: ask here, as often as it would
            now = time.perf_counter()
            if now - self._last_cancel_check >= self.cancel_check_s:
                self._last_cancel_check = now
                self._ask_cancelled()
        with self._lock:
            cancelled = [r for r, _ in self._waiting if r.cancelled]
            if cancelled:
                self._waiting = deque((r, t) for r, t in self._waiting if not r.cancelled)
        for request in cancelled:
            self._retire(request)
            self.emit(Output(request, [], "", final=True, finish_reason="cancelled",
                             num_input_tokens=len(request.prompt_ids)))
        live = [seq for seq in [*self._prefilling, *self._running] if seq.request.cancelled]
        for seq in live:
            self._finish(seq, "cancelled")
        return bool(cancelled or live)

    def _admit(self) -> bool:
        admitted = False
        with self._lock:
            while self._waiting and self.engine.pool.free:
                request, submitted = self._waiting.popleft()
                seq = Sequence(request, self.engine.pool.alloc(), IncrementalDetokenizer(self.tokenizer, request.prompt_ids),
                               generator_for(request.sampling, self.engine.device), submitted)
                self._prefilling.append(seq)
                self._live[id(request)] = request
                admitted = True
        return admitted

    def _prefill_next(self, flights: list[Flight]) -> None:
        """One prefill step: the next chunk of the first admitted prompt, or, where the engine has batched prefill
        profiles, that prompt whole with the next admitted whole prompts of its length bucket (see _batchable)."""
        group = self._batchable()
        if len(group) == 1:
            self._prefill_chunk(group[0], flights)
            return
        logits, index = self.engine.prefill_many([s.slot for s in group], [s.request.prompt_ids for s in group])
        self.observer.step(index, sum(len(s.request.prompt_ids) for s in group))
        for s in group:
            s.prefilled = len(s.request.prompt_ids)
        started = {id(s) for s in group}
        self._prefilling = deque(s for s in self._prefilling if id(s) not in started)
        self._start(group, logits, flights)

    def _batchable(self) -> list[Sequence]:
        """The first admitted prompt, and after it (up to the largest prefill batch) the admitted prompts that are
        whole in one step of its length bucket, in order. Prompts of one bucket pad to the same step, so a batch
        costs little more than one of them (H200, fresh prefill of 128 tokens: 2.05 ms for one, 2.70 for two,
        3.45 for four; bench/probes/prefill_batch.py, session 14). Nothing waits for a batch to fill. Prompts
        prefilled together also finish together, so a closed loop's prompts come back together (on the H200 at 64
        streams most steps took four). On a CPU, where a batch costs its prompts' sum, that lockstep cost time (see
        _iterate): batched prefill profiles are on by default on CUDA only (generation/build.py, PREFILL_BATCHES)."""
        first = self._prefilling[0]
        spec = self.engine.spec
        limit = spec.max_prefill_batch
        if limit == 1 or first.prefilled or len(first.request.prompt_ids) > spec.max_chunk:
            return [first]
        bucket = next(n for n in spec.prefill_buckets if n >= len(first.request.prompt_ids))
        low = next((n for n in reversed(spec.prefill_buckets) if n < bucket), 0)
        group = [first]
        for seq in list(self._prefilling)[1:]:
            if len(group) == limit:
                break
            if not seq.prefilled and low < len(seq.request.prompt_ids) <= bucket:
                group.append(seq)
        return group

    def _prefill_chunk(self, seq: Sequence, flights: list[Flight]) -> None:
        """Prefill the next chunk of ``seq``'s prompt; after its last chunk, sample its first token (_start)."""
        prompt = seq.request.prompt_ids
        chunk = prompt[seq.prefilled:seq.prefilled + self.engine.spec.max_chunk]
        logits, index = self.engine.prefill(seq.slot, chunk, seq.prefilled)
        self.observer.step(index, len(chunk))
        seq.prefilled += len(chunk)
        if seq.prefilled < len(prompt):
            return
        self._prefilling.popleft()
        self._start([seq], logits, flights)

    def _start(self, group: list[Sequence], logits: torch.Tensor, flights: list[Flight]) -> None:
        """Prompts fully prefilled (``logits`` of their last tokens): sample their first tokens (on a GPU, as a
        flight appended to ``flights``, taken with them; else taken now) and join the running batch."""
        self._running.extend(group)
        banned = [self._ban(s) if s.request.min_tokens > 0 else None for s in group]
        sampled = sample_tensor(logits, [s.request.sampling for s in group], [s.generator for s in group], banned)
        if not self.overlap:  # the prefill has run already: its tokens go out now, not after a decode step
            self._take(group, sampled.tolist(), first=True)
            return
        # On a GPU first tokens are taken with the decode steps' tokens: the host does not wait for the prefill,
        # and this iteration's decode step, launched next, takes the tokens from the device as its inputs.
        for s in group:
            s.in_flight += 1
        flights.append(Flight.launch(group, sampled, first=True))

    def _decode(self) -> None:
        """Launch the next ``decode_steps`` steps of every sequence that may go on, then take the tokens of the
        steps launched before (the previous iteration's, on a GPU; these, on a CPU).

        Each step after the first reads the one before's sampled tokens on the device. A row stops launching at
        its max_tokens; an end token is only seen when its step is taken, and the row's later steps are dropped.
        Between two steps of an iteration, the next prompt chunk is prefilled, so new prompts are admitted as
        fast as sequences finish.
        """
        batch = self.engine.spec.max_batch
        spent, clock = self._spent, time.perf_counter
        launched: list[Flight] = []
        firsts: list[Flight] = []
        for sub in range(self.decode_steps):
            if sub and self._prefilling:  # its first token is taken with this iteration's steps, not waited for now
                t0, emitted = clock(), spent["emit"]
                self._prefill_next(launched)
                spent["prefill"] += clock() - t0 - (spent["emit"] - emitted)
            going = [s for s in self._running if len(s.generated) + s.in_flight < s.request.max_tokens]
            for start in range(0, len(going), batch):
                launched.append(self._launch(going[start:start + batch], self._flights + launched))
            if not sub and self.overlap and self.decode_steps > 1:
                # First tokens go out once the GPU has the iteration's first step, not after its last one: a
                # prompt's TTFT does not grow with decode_steps.
                firsts = [f for f in self._flights if f.first]
                for flight in firsts:
                    self._land(flight)
        previous, self._flights = (self._flights, launched) if self.overlap else (self._flights + launched, [])
        for flight in previous:
            if not any(flight is f for f in firsts):
                self._land(flight)
        self._send_due()

    def _land(self, flight: Flight) -> None:
        """Take a launched step's tokens: the host waits for them, then does its part for the rows still running."""
        t0 = time.perf_counter()
        values = flight.values()
        self._spent["wait"] += time.perf_counter() - t0
        for s in flight.group:
            s.in_flight -= 1
        running = {id(s) for s in self._running}
        live = [(s, t) for s, t in zip(flight.group, values) if id(s) in running]  # ended ones: dropped
        if live:
            self._take([s for s, _ in live], [t for _, t in live], first=flight.first)

    def _launch(self, group: list[Sequence], flights: list[Flight]) -> Flight:
        """Enqueue one decode step of ``group`` and its sampling; its tokens stay on the device (``flights``:
        the steps in flight, where the rows' input tokens are)."""
        spent, clock = self._spent, time.perf_counter
        t0 = clock()
        tokens = self._inputs_of(group, flights)
        t1 = clock()
        slots, positions = [s.slot for s in group], [s.length - 1 + s.in_flight for s in group]
        banned = [self._ban(s) if len(s.generated) + s.in_flight < s.request.min_tokens else None for s in group]
        if self.graph_greedy and all(s.request.sampling.greedy for s in group):
            sampled, index = self.engine.decode_greedy(slots, tokens, positions, banned)
            t2 = clock()
        else:
            logits, index = self.engine.decode(slots, tokens, positions)
            t2 = clock()
            sampled = sample_tensor(logits, [s.request.sampling for s in group], [s.generator for s in group],
                                    banned)
        self.observer.step(index, len(group))
        for s in group:
            s.in_flight += 1
        flight = Flight.launch(group, sampled)
        spent["inputs"] += t1 - t0
        spent["step"] += t2 - t1
        spent["sample"] += clock() - t2
        return flight

    def _inputs_of(self, group: list[Sequence], flights: list[Flight]) -> list[int] | torch.Tensor:
        """Each row's last token: taken on the host, or on the device in the last of ``flights`` that holds it."""
        if not any(s.in_flight for s in group):
            return [s.generated[-1] for s in group]
        if flights and [id(s) for s in flights[-1].group] == [id(s) for s in group]:
            return flights[-1].tokens  # the same rows in the same order as the last step: the steady state
        # One gather from the flights' tokens (and the host's, appended): indices and values reach the device
        # through device_ints, so nothing here waits for the steps in flight.
        where, offset = {}, 0
        for flight in flights:
            for r, s in enumerate(flight.group):
                where[id(s)] = offset + r  # a later flight wins: it holds the row's newer token
            offset += len(flight.group)
        index, on_host = [], []
        for s in group:
            if s.in_flight:
                index.append(where[id(s)])
            else:
                index.append(offset + len(on_host))
                on_host.append(s.generated[-1])
        device = self.engine.device
        pool = [f.tokens for f in flights] + ([device_ints(on_host, device)] if on_host else [])
        return torch.cat(pool)[device_ints(index, device)]

    def _take(self, group: list[Sequence], tokens: list[int], first: bool) -> None:
        """The host's part of a step: end checks, responses, metrics."""
        now = time.perf_counter()
        if first:
            for s in group:
                self.observer.first_token((now - s.submitted) * 1e3, len(s.request.prompt_ids))
        else:
            self.observer.tokens([(now - s.last_token_at) * 1e3 for s in group])
        stops = [token == self._end_id(seq) and len(seq.generated) + 1 > seq.request.min_tokens
                 for seq, token in zip(group, tokens)]
        for seq, token, stop in zip(group, tokens, stops):
            if not stop:  # the end token itself is not part of the output; the text is made when it is sent
                seq.output_tokens += 1
                seq.pending_ids.append(token)
                seq.detok.feed(token)
            seq.last_token_at = now
            seq.generated.append(token)
            if stop:
                self._finish(seq, "stop")
            elif len(seq.generated) >= seq.request.max_tokens:
                self._finish(seq, "length")
            elif seq.request.stream:
                if first or self.send_budget_s <= 0:
                    self._send(seq, final=False)
                else:
                    self._due.append(seq)  # sent at the end of the step, within the budget

    def _send_due(self) -> None:
        """A step's streamed tokens out, longest-waiting stream first, until the send budget is spent."""
        # A stream is due once per step it took tokens from, and may have ended since: sent once, and never
        # after its final.
        unique = {id(s): s for s in self._due if not s.request.done}
        due, self._due = sorted(unique.values(), key=lambda s: s.last_sent_at), []
        spent = 0.0
        for seq in due:
            if spent >= self.send_budget_s:
                break  # the rest keep their tokens: they are first in line at the next step
            t0 = time.perf_counter()
            self._send(seq, final=False)
            spent += time.perf_counter() - t0

    def _end_id(self, seq: Sequence) -> int:
        return self.eos_id if seq.request.end_id is None else seq.request.end_id

    def _ban(self, seq: Sequence) -> int | None:
        """The token ``seq`` may not choose while under its min_tokens: its end id (none when that is negative: no
        end token, as the tests and probes ask for; the serving layer allows only ids of the vocabulary)."""
        end = self._end_id(seq)
        return end if end >= 0 else None

    def _send(self, seq: Sequence, final: bool, reason: str = "") -> None:
        r = seq.request
        # The response's tokens are detokenized now, together: under a send budget a stream takes several steps'
        # tokens per response, and detokenizing every row's token at every step was the host's largest part.
        ids, seq.pending_ids = seq.pending_ids, []
        text = seq.detok.text(final)
        if not r.exclude_input and not seq.prompt_sent:  # the first response carries the prompt
            ids = r.prompt_ids + ids
            text = (r.prompt_text if r.prompt_text is not None else self.tokenizer.decode(r.prompt_ids)) + text
            seq.prompt_sent = True
        seq.last_sent_at = time.perf_counter()
        self.emit(Output(r, ids, text, final=final, finish_reason=reason, num_input_tokens=len(r.prompt_ids),
                         num_output_tokens=seq.output_tokens))

    def _drop(self, seq: Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
        if seq in self._prefilling:
            self._prefilling.remove(seq)
        with self._lock:
            self._live.pop(id(seq.request), None)
        self.engine.pool.release(seq.slot)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._drop(seq)
        self._retire(seq.request)
        self._send(seq, final=True, reason=reason)
