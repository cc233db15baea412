"""Keep tritonserver serving: restart it when it dies, or when a model's backend stub stops answering.

Triton 2.51 neither restarts a dead Python backend stub nor reports it: health
and model readiness stay 200 while every request to that model fails "Stub process
... is not healthy". Reloading the model through the repository API took 48 s on
the CPU machine (the unload waits out the stub timeout); restarting the server
takes about 20 s. So this loop restarts the whole server:

- when the server process exits (an abort on a malformed request, SIGKILL, OOM);
- when the health probe (one real request per model, :mod:`llmprofiles.serving.health`)
  gets a dead-stub answer, or no answer ``hung_probes`` times in a row.

Restarts wait a bounded exponential backoff (``backoff_initial_s`` doubling up to
``backoff_max_s``; reset after ``stable_s`` of healthy serving). Each restart is
logged with its cause, and the state, restart count and recent causes are
written to a JSON status file (``--status-file``, default
``.triton/supervisor.json``) that an operator can read::

    python -m llmprofiles.serving.supervisor --model-repository model_repository --http-port 8000
    cat .triton/supervisor.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from llmprofiles.serving.health import DEAD_STUB_MARKERS, ModelHealth, probe
from llmprofiles.serving.launcher import TritonServer, add_server_args, busy_ports

log = logging.getLogger("llmprofiles.supervisor")

# Lines of a dead server's log that say why it died (std::bad_alloc aborts, fatal errors).
_DEATH_HINTS = ("terminate called", "what():", "Aborted", "Segmentation", "bad_alloc", "error:")


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    """Delay before restart number ``failures`` (1-based) of a run of failures.

    >>> [backoff_s(n, 1.0, 30.0) for n in (1, 2, 3, 6, 7)]
    [1.0, 2.0, 4.0, 30.0, 30.0]
    """
    return min(initial_s * 2 ** max(failures - 1, 0), max_s)


def exit_cause(returncode: int, log_tail: str) -> str:
    """One line: how the server process ended and, when its log says, why."""
    if returncode < 0:
        try:
            how = f"server killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"server killed by signal {-returncode}"
    else:
        how = f"server exited with code {returncode}"
    hints = [line.strip() for line in log_tail.splitlines() if any(h in line for h in _DEATH_HINTS)]
    return f"{how} ({hints[-1][:160]})" if hints else how


def restart_cause(results: list[ModelHealth], hung_runs: dict[str, int], hung_probes: int) -> str | None:
    """The reason to restart now, from one probe round, or None. ``hung_runs`` counts no-answer rounds per model."""
    for r in results:
        if not r.ok and r.dead and any(m in r.reason for m in DEAD_STUB_MARKERS):
            return f"model {r.model}: {r.reason}"
    for r in results:
        hung_runs[r.model] = hung_runs.get(r.model, 0) + 1 if (not r.ok and r.dead) else 0
        if hung_runs[r.model] >= hung_probes:
            return f"model {r.model}: {r.reason} ({hung_runs[r.model]} probes in a row)"
    return None


class Supervisor:
    """Start a server from ``make_server()``, probe it, restart it on death; ``run()`` until ``stop()``."""

    def __init__(self, make_server: Callable[[], TritonServer], status_path: Path,
                 models: list[str] | None = None, probe_interval_s: float = 2.0, probe_timeout_s: float = 5.0,
                 hung_probes: int = 3, backoff_initial_s: float = 1.0, backoff_max_s: float = 30.0,
                 stable_s: float = 30.0, grace_s: float = 5.0):
        self.make_server = make_server
        self.status_path = Path(status_path)
        self.models = models
        self.probe_interval_s, self.probe_timeout_s, self.hung_probes = probe_interval_s, probe_timeout_s, hung_probes
        self.backoff_initial_s, self.backoff_max_s, self.stable_s = backoff_initial_s, backoff_max_s, stable_s
        self.grace_s = grace_s
        self.server: TritonServer | None = None
        self.restarts = 0
        self.failures_in_a_row = 0
        self.causes: list[dict] = []
        self.state = "starting"
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def write_status(self, **extra) -> None:
        status = {
            "state": self.state, "restarts": self.restarts,
            "last_cause": self.causes[-1]["cause"] if self.causes else None,
            "recent_causes": self.causes[-10:], "server_pid": self.server.pid if self.server else None,
            "supervisor_pid": os.getpid(), "updated_unix": round(time.time(), 3),
            "http_url": self.server.http_url if self.server else None, **extra,
        }
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1) + "\n")
        os.replace(tmp, self.status_path)  # readers never see half a file

    def _start(self) -> float:
        self.server = self.make_server()
        if self.server.log_path.is_file():  # keep the last server's log: it says why that one died
            os.replace(self.server.log_path, self.server.log_path.with_suffix(".prev.log"))
        self.state = "starting"
        self.write_status()
        self.server.start()
        self.write_status(last_startup_s=round(self.server.startup_s, 1))
        log.info("supervisor: tritonserver pid %d ready in %.1f s", self.server.pid, self.server.startup_s)
        return self.server.startup_s

    def _watch(self) -> str | None:
        """Probe until the server needs a restart (returns the cause) or stop() is called (returns None)."""
        hung_runs: dict[str, int] = {}
        healthy_since = None
        while not self._stop.wait(self.probe_interval_s):
            if self.server.proc.poll() is not None:
                return exit_cause(self.server.proc.returncode, self.server.log_tail(80))
            results = probe(self.server.http_url, self.models, self.probe_timeout_s)
            if self.server.proc.poll() is not None:  # it died during the probe: report the death, not the probe
                return exit_cause(self.server.proc.returncode, self.server.log_tail(80))
            cause = restart_cause(results, hung_runs, self.hung_probes)
            if cause:
                return cause
            failing = [r for r in results if not r.ok]
            state = "unhealthy" if failing else "serving"
            if state != self.state:
                log.info("supervisor: %s%s", state, "".join(f"; {r.model}: {r.reason}" for r in failing))
                self.state = state
                self.write_status()
            if failing:
                healthy_since = None
            elif healthy_since is None:
                healthy_since = time.monotonic()
            elif self.failures_in_a_row and time.monotonic() - healthy_since >= self.stable_s:
                self.failures_in_a_row = 0  # stable again: the next failure restarts after the initial backoff
        return None

    def run(self) -> int:
        """Serve until stop(); 0 on a clean stop, 1 when the first start fails (a broken build is no crash loop)."""
        try:
            self._start()
        except RuntimeError as e:
            log.error("supervisor: tritonserver did not start: %s", e)
            self.state = "failed"
            self.server.stop(self.grace_s)
            self.write_status()
            return 1
        while True:
            cause = self._watch()
            if cause is None:
                break
            self.restarts += 1
            self.failures_in_a_row += 1
            delay = backoff_s(self.failures_in_a_row, self.backoff_initial_s, self.backoff_max_s)
            self.causes.append({"unix": round(time.time(), 3), "cause": cause})
            self.state = "restarting"
            log.warning("supervisor: restart %d (cause: %s); next start in %.1f s", self.restarts, cause, delay)
            self.server.stop(self.grace_s)  # a server with a dead stub never stops cleanly: do not wait 30 s
            self.write_status()
            t0 = time.monotonic()
            while not self._stop.wait(delay):
                try:
                    self._start()
                    break
                except RuntimeError as e:
                    self.server.stop(self.grace_s)
                    self.failures_in_a_row += 1
                    delay = backoff_s(self.failures_in_a_row, self.backoff_initial_s, self.backoff_max_s)
                    log.warning("supervisor: start failed (%s); next start in %.1f s", str(e).splitlines()[0], delay)
            if self._stop.is_set():
                break
            log.info("supervisor: serving again %.1f s after restart %d", time.monotonic() - t0, self.restarts)
        self.state = "stopping"
        self.write_status()
        if self.server:
            self.server.stop()
        self.state = "stopped"
        self.write_status()
        return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run tritonserver in the foreground and restart it when it or a model dies.")
    add_server_args(p, work_dir_help="backend folder and the server's log")
    p.add_argument("--status-file", type=Path, default=None, help="JSON status (default: WORK_DIR/supervisor.json)")
    p.add_argument("--models", default="", help="comma-separated models to probe (default: the repository index)")
    p.add_argument("--probe-interval-s", type=float, default=2.0, help="seconds between health probes")
    p.add_argument("--probe-timeout-s", type=float, default=5.0, help="timeout of each probe request")
    p.add_argument("--backoff-max-s", type=float, default=30.0, help="longest wait before a restart")
    p.add_argument("--ready-timeout-s", type=float, default=300.0, help="how long one start may take to become ready")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    busy = busy_ports({"HTTP": a.http_port, "gRPC": a.grpc_port, "metrics": a.metrics_port})
    if busy:  # before any model loads: tritonserver itself would load them all, then exit
        raise SystemExit(f"cannot start tritonserver: {', '.join(busy)} on 127.0.0.1 already in use; "
                         "stop what holds it or choose other ports")
    sup = Supervisor(
        lambda: TritonServer(a.model_repository, a.http_port, a.grpc_port, a.metrics_port, work=a.work_dir,
                             log_path=a.work_dir / f"server-{a.http_port}.log", ready_timeout_s=a.ready_timeout_s),
        a.status_file or a.work_dir / "supervisor.json", [m for m in a.models.split(",") if m] or None,
        probe_interval_s=a.probe_interval_s, probe_timeout_s=a.probe_timeout_s, backoff_max_s=a.backoff_max_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.stop())
    log.info("supervisor: starting tritonserver on HTTP %d, gRPC %d, metrics %d; status in %s",
             a.http_port, a.grpc_port, a.metrics_port, sup.status_path)
    raise SystemExit(sup.run())


if __name__ == "__main__":
    main()
