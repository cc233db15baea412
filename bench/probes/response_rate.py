"""How many decoupled responses per second a Python-backend model gets through tritonserver, and what lifts it.

A throwaway model (decoupled, Python backend, no engine) is written to a temp
model repository; the real tritonserver (``llmprofiles.serving.launcher``)
serves it. Each request asks for ``--tokens`` tokens; the model hands it to one
of T sender threads, which send the tokens ``k`` per response (text_output BYTES
and output_ids INT64, like the ``generate`` model), the final flag on the last.
A sender thread round-robins over its requests, one response each per turn, like
a decode step sending one token per row. Optionally a "scheduler" thread in the
stub burns Python CPU while requests are in flight, and the stub's
``sys.setswitchinterval`` is set per request.

The client holds C tritonclient gRPC streams over P processes (spawned; one
Python client's GIL caps what it receives), one request in flight on each, and
measures responses/s and tokens/s received, client-seen gap between responses
of a stream (ITL), stamp-to-arrival latency (the model stamps ``time.monotonic_ns``
into output_ids just before ``send``), and how long ``send`` blocked in the stub.
It also reads /proc for CPU used by the client, tritonserver (and its busiest
thread) and the stub. Prints an aligned table; the last stdout line is JSON.

    .venv/bin/python bench/probes/response_rate.py                     # the full matrix, ~3 min
    .venv/bin/python bench/probes/response_rate.py --duration-s 3 --only threads
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llmprofiles.serving.launcher import TritonServer

MODEL = "response_rate"

CONFIG = f"""
name: "{MODEL}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "tokens", data_type: TYPE_INT32, dims: [ 1 ] }},
  {{ name: "tokens_per_response", data_type: TYPE_INT32, dims: [ 1 ] }},
  {{ name: "send_threads", data_type: TYPE_INT32, dims: [ 1 ] }},
  {{ name: "switch_interval_us", data_type: TYPE_INT32, dims: [ 1 ] }},
  {{ name: "burn", data_type: TYPE_BOOL, dims: [ 1 ] }}
]
output [
  {{ name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] }},
  {{ name: "output_ids", data_type: TYPE_INT64, dims: [ -1 ] }},
  {{ name: "send_ns", data_type: TYPE_INT64, dims: [ -1 ] }}
]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""

# The model, written next to CONFIG at run time. Its sender pools are keyed by size, so one server
# serves every configuration; switch interval and burn are process-wide and set by each request.
MODEL_PY = r'''
import itertools
import queue
import sys
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class Job:
    def __init__(self, sender, tokens, k):
        self.sender, self.left, self.k = sender, tokens, k
        self.send_ns = []  # how long each send() blocked, returned with the final response

    def step(self):
        n = min(self.k, self.left)
        self.left -= n
        final = self.left == 0
        tensors = [pb_utils.Tensor("text_output", np.array([b" tok" * n], dtype=np.object_)),
                   pb_utils.Tensor("output_ids", np.full(n, time.monotonic_ns(), dtype=np.int64))]
        if final:
            tensors.append(pb_utils.Tensor("send_ns", np.array(self.send_ns or [0], dtype=np.int64)))
        t0 = time.perf_counter_ns()
        self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors),
                         flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)
        self.send_ns.append(time.perf_counter_ns() - t0)
        return final


class TritonPythonModel:
    def initialize(self, args):
        self.pools = {}  # size -> (queues, round-robin counter)
        self.lock = threading.Lock()
        self.active = 0
        self.burning = threading.Event()
        threading.Thread(target=self._burn, daemon=True).start()

    def _burn(self):  # the scheduler's stand-in: pure Python, wants the GIL all the time
        x = 0
        while True:
            self.burning.wait()
            while self.burning.is_set():
                for i in range(2000):
                    x += i

    def _pool(self, size):
        with self.lock:
            if size not in self.pools:
                qs = [queue.SimpleQueue() for _ in range(size)]
                for q in qs:
                    threading.Thread(target=self._send_loop, args=(q,), daemon=True).start()
                self.pools[size] = (qs, itertools.count())
            return self.pools[size]

    def _send_loop(self, q):
        jobs = []
        while True:
            if not jobs:
                jobs.append(q.get())
            while True:
                try:
                    jobs.append(q.get_nowait())
                except queue.Empty:
                    break
            done = [job for job in jobs if job.step()]
            if done:
                jobs = [job for job in jobs if job not in done]
                with self.lock:
                    self.active -= len(done)
                    if self.active == 0:
                        self.burning.clear()

    def execute(self, requests):
        for request in requests:
            def scalar(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
            tokens, k, threads = int(scalar("tokens")), int(scalar("tokens_per_response")), int(scalar("send_threads"))
            sys.setswitchinterval(int(scalar("switch_interval_us")) / 1e6)
            qs, turn = self._pool(threads)
            with self.lock:
                self.active += 1
                if bool(scalar("burn")):
                    self.burning.set()
            qs[next(turn) % len(qs)].put(Job(request.get_response_sender(), tokens, k))
        return None
'''


@dataclass(frozen=True)
class Trial:
    group: str
    concurrency: int
    send_threads: int
    tokens_per_response: int = 1
    burn: bool = False
    switch_interval_us: int = 5000
    client_procs: int = 2


def trials() -> list[Trial]:
    out = [Trial("threads", c, t) for t in (1, 4) for c in (1, 8, 64)]
    out += [Trial("gil", 64, t, burn=True, switch_interval_us=si) for t in (1, 4) for si in (5000, 500)]
    out += [Trial("gil", 8, 4, burn=True, switch_interval_us=si) for si in (5000, 500)]
    out += [Trial("client", 64, 4, client_procs=n) for n in (1, 2, 4)]
    out += [Trial("coalesce", 64, 4, tokens_per_response=k) for k in (1, 4, 8)]
    out += [Trial("coalesce", 64, 4, tokens_per_response=k, burn=True) for k in (1, 4, 8)]
    return out


def cpu_ticks(pid: int | str, task: str | None = None) -> int:
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class CpuMeter:
    """CPU seconds of tritonserver (and each of its threads), of its stub children, and of this process."""

    def __init__(self, server_pid: int):
        self.pid = server_pid
        self.hz = os.sysconf("SC_CLK_TCK")
        self.clients: list[int] = []  # the client processes of the running trial

    def _stubs(self) -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                        pids.append(int(d.name))
                except (OSError, ValueError):
                    pass
        return pids

    def snapshot(self) -> dict:
        threads = {}
        for t in os.listdir(f"/proc/{self.pid}/task"):
            try:
                name = Path(f"/proc/{self.pid}/task/{t}/comm").read_text().strip()
                threads[f"{name}:{t}"] = cpu_ticks(self.pid, t)
            except OSError:
                pass
        return {"server": cpu_ticks(self.pid), "stub": sum(cpu_ticks(p) for p in self._stubs()),
                "client": sum(cpu_ticks(p) for p in self.clients), "threads": threads, "t": time.perf_counter()}

    def delta(self, a: dict, b: dict) -> dict:
        wall = b["t"] - a["t"]
        util = {k: (b[k] - a[k]) / self.hz / wall for k in ("server", "stub", "client")}
        top = max(b["threads"], key=lambda k: b["threads"][k] - a["threads"].get(k, 0))
        util["server_top_thread"] = (b["threads"][top] - a["threads"].get(top, 0)) / self.hz / wall
        util["server_top_thread_name"] = top.split(":")[0]
        return util


class Stream:
    """One tritonclient gRPC stream, one request in flight."""

    def __init__(self, url: str):
        import tritonclient.grpc as grpcclient
        self.grpc = grpcclient
        self.responses: queue.SimpleQueue = queue.SimpleQueue()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=lambda result, error: self.responses.put((time.monotonic_ns(), result, error)))

    def request(self, trial: Trial, tokens: int) -> dict:
        values = {"tokens": (np.int32, tokens), "tokens_per_response": (np.int32, trial.tokens_per_response),
                  "send_threads": (np.int32, trial.send_threads),
                  "switch_interval_us": (np.int32, trial.switch_interval_us), "burn": (np.bool_, trial.burn)}
        inputs = []
        for name, (dtype, value) in values.items():
            array = np.array([value], dtype=dtype)
            inputs.append(self.grpc.InferInput(name, [1], "BOOL" if dtype is np.bool_ else "INT32"))
            inputs[-1].set_data_from_numpy(array)
        self.client.async_stream_infer(MODEL, inputs)
        got, arrivals, latency_ns, send_ns = 0, [], [], None
        while got < tokens:
            t, result, error = self.responses.get(timeout=60)
            if error is not None:
                raise RuntimeError(f"stream error: {error}")
            ids = result.as_numpy("output_ids")
            got += len(ids)
            arrivals.append(t)
            latency_ns.append(t - int(ids[0]))
            if got >= tokens:
                send_ns = result.as_numpy("send_ns")
        return {"tokens": got, "arrivals": arrivals, "latency_ns": latency_ns, "send_ns": list(send_ns)}

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def drive(url: str, trial: Trial, tokens: int, streams: int, ready, stop, out) -> None:
    """One client process: ``streams`` streams, each a thread with one request in flight, until ``stop``."""
    clients = [Stream(url) for _ in range(streams)]
    results: list[list[dict]] = [[] for _ in clients]
    start = threading.Barrier(streams + 1)

    def loop(i: int) -> None:
        clients[i].request(trial, tokens)  # warm-up: the pool exists, the switch interval is set
        start.wait()
        while not stop.is_set():
            results[i].append(clients[i].request(trial, tokens))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    start.wait()
    ready.wait()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    out.put([r for per_stream in results for r in per_stream])


def run_trial(url: str, trial: Trial, tokens: int, duration_s: float, meter: CpuMeter) -> dict:
    # Client processes, not threads: one Python client's GIL caps what it can receive (see the client group).
    mp = multiprocessing.get_context("spawn")
    procs_n = min(trial.client_procs, trial.concurrency)
    ready, stop, out = mp.Barrier(procs_n + 1), mp.Event(), mp.Queue()
    per = [trial.concurrency // procs_n + (i < trial.concurrency % procs_n) for i in range(procs_n)]
    procs = [mp.Process(target=drive, args=(url, trial, tokens, n, ready, stop, out)) for n in per]
    for pr in procs:
        pr.start()
    meter.clients = [pr.pid for pr in procs]
    ready.wait()
    t0, cpu0 = time.monotonic_ns(), meter.snapshot()
    time.sleep(duration_s)
    cpu1 = meter.snapshot()
    t1 = time.monotonic_ns()
    stop.set()
    results = [r for _ in procs for r in out.get()]
    for pr in procs:
        pr.join()
    # Count what arrived in [t0, t1]: a steady-state rate, free of the ramp up and down.
    responses = 0
    gaps, latency, send = [], [], []
    for r in results:
        arrivals = np.array(r["arrivals"])
        inside = (arrivals >= t0) & (arrivals <= t1)
        if not inside.any():
            continue
        responses += int(inside.sum())
        gaps += list(np.diff(arrivals) / 1e6)
        latency += [x / 1e6 for x in r["latency_ns"]]
        send += [x / 1e3 for x in r["send_ns"]]
    wall = (t1 - t0) / 1e9
    return {**asdict(trial), "responses_per_s": responses / wall,
            "tokens_per_s": responses * trial.tokens_per_response / wall,
            "itl_p50_ms": pct(gaps, 50), "itl_p99_ms": pct(gaps, 99),
            "latency_p50_ms": pct(latency, 50), "latency_p99_ms": pct(latency, 99),
            "send_p50_us": pct(send, 50), "send_p99_us": pct(send, 99), "cpu": meter.delta(cpu0, cpu1)}


def table(rows: list[dict]) -> str:
    head = (f"{'group':9} {'C':>3} {'P':>2} {'T':>2} {'k':>2} {'burn':>4} {'si ms':>5} {'resp/s':>7} {'tok/s':>7} "
            f"{'ITL p50':>7} {'p99':>6} {'lat p50':>7} {'p99':>6} {'send p50 us':>11} {'p99':>6} "
            f"{'cpu srv':>7} {'top thr':>7} {'stub':>5} {'client':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        c = r["cpu"]
        lines.append(
            f"{r['group']:9} {r['concurrency']:>3} {r['client_procs']:>2} {r['send_threads']:>2} {r['tokens_per_response']:>2} "
            f"{'yes' if r['burn'] else 'no':>4} {r['switch_interval_us'] / 1e3:>5.1f} {r['responses_per_s']:>7.0f} "
            f"{r['tokens_per_s']:>7.0f} {r['itl_p50_ms']:>7.2f} {r['itl_p99_ms']:>6.1f} {r['latency_p50_ms']:>7.2f} "
            f"{r['latency_p99_ms']:>6.1f} {r['send_p50_us']:>11.0f} {r['send_p99_us']:>6.0f} {c['server']:>7.2f} "
            f"{c['server_top_thread']:>7.2f} {c['stub']:>5.2f} {c['client']:>6.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--duration-s", type=float, default=5.0, help="timed seconds per trial")
    p.add_argument("--only", choices=("threads", "gil", "client", "coalesce"), default=None, help="run one group of trials")
    p.add_argument("--port", type=int, default=19300, help="HTTP port; gRPC and metrics take the next two")
    a = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="response_rate-"))
    (root / "repo" / MODEL / "1").mkdir(parents=True)
    (root / "repo" / MODEL / "config.pbtxt").write_text(CONFIG)
    (root / "repo" / MODEL / "1" / "model.py").write_text(MODEL_PY)
    todo = [t for t in trials() if a.only in (None, t.group)]
    rows = []
    with TritonServer(root / "repo", a.port, a.port + 1, a.port + 2, work=root / "work") as server:
        meter = CpuMeter(server.pid)
        print(f"response_rate: tritonserver pid {server.pid} up in {server.startup_s:.1f} s, {os.cpu_count()} CPUs, "
              f"{a.tokens} tokens/request, {a.duration_s:g} s per trial, log {server.log_path}", flush=True)
        for i, trial in enumerate(todo):
            rows.append(run_trial(server.grpc_url, trial, a.tokens, a.duration_s, meter))
            r = rows[-1]
            print(f"  [{i + 1}/{len(todo)}] {trial}: {r['responses_per_s']:.0f} responses/s", flush=True)
    print(table(rows))
    print("cpu columns: cores busy during the timed window (server = tritonserver process, top thr = its busiest "
          "thread, stub = the Python backend stub, client = the client processes, P of them)")
    print(json.dumps({"cpus": os.cpu_count(), "tokens": a.tokens, "duration_s": a.duration_s, "rows": rows}))


if __name__ == "__main__":
    main()
