"""Fault injection against a supervised server: kill it or a backend stub, send poison requests, time recovery.

Used by ``client/chaos.py`` (``make chaos``) and the chaos tests. The server runs
under :mod:`llmprofiles.serving.supervisor` in a child process, exactly as
``make serve`` runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llmprofiles.serving.health import ProbeError, _probe_generate, _probe_llm, probe, verdict

# Issue 13: bodies that tritonserver 2.51 itself cannot survive (it aborts, or the stub dies), before the model runs.
ABORTS_SERVER = b'{"inputs":[{"name":"input_ids","shape":[1,1099511627776],"datatype":"INT64","data":[1]}]}'
KILLS_STUB = b'{"inputs":[{"name":"input_ids","shape":[4611686018427387904,4],"datatype":"INT64","data":[1]}]}'


def stub_pids(server_pid: int) -> dict[str, int]:
    """The server's Python backend stubs by model name (from ``<repo>/<model>/<version>/model.py`` in their command)."""
    out = {}
    for task in Path(f"/proc/{server_pid}/task").glob("*"):
        for child in (task / "children").read_text().split() if (task / "children").is_file() else []:
            try:
                args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(args) > 1 and args[0].endswith(b"triton_python_backend_stub"):
                out[Path(args[1].decode()).parents[1].name] = int(child)
    return out


def post_raw(url: str, path: str, body: bytes, timeout_s: float = 30.0) -> str:
    """POST ``body`` as-is; the status and the start of the answer, or how the connection failed."""
    req = urllib.request.Request(f"http://{url}{path}", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return f"{r.status} {r.read(200).decode(errors='replace')}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read(200).decode(errors='replace')}"
    except OSError as e:
        return f"connection failed: {e}"


def _answers(probe_one, url: str, model: str, timeout_s: float) -> bool:
    try:
        probe_one(url, model, timeout_s)
        return True
    except ProbeError:
        return False


def infer_ok(url: str, model: str = "llm", timeout_s: float = 5.0) -> bool:
    """One seq-1 request; True when it came back with logits."""
    return _answers(_probe_llm, url, model, timeout_s)


def generate_ok(url: str, model: str = "generate", timeout_s: float = 5.0) -> bool:
    """One 1-token generation (the health probe's request); True when it came back with its token."""
    return _answers(_probe_generate, url, model, timeout_s)


class Supervised:
    """``python -m llmprofiles.serving.supervisor`` as a child process; ``with Supervised(...) as s:`` waits for serving."""

    def __init__(self, repo: Path, ports: tuple[int, int, int], work: Path, ready_timeout_s: float = 180.0,
                 extra_args: tuple[str, ...] = ("--probe-interval-s", "1", "--backoff-max-s", "4")):
        self.repo, self.work = Path(repo), Path(work)
        self.http_port, self.grpc_port, self.metrics_port = ports
        self.status_path = self.work / "supervisor.json"
        self.log_path = self.work / "supervisor.log"
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_serving(self, timeout_s: float | None = None, restarts: int | None = None) -> dict:
        """The status once the supervisor says ``serving`` (after at least ``restarts`` restarts)."""
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        while time.monotonic() < deadline:
            st = self.status()
            if st.get("state") == "serving" and (restarts is None or st.get("restarts", 0) >= restarts):
                return st
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"not serving after {timeout_s or self.ready_timeout_s:.0f} s; status {self.status()}\n"
                           f"{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def start(self) -> Supervised:
        self.work.mkdir(parents=True, exist_ok=True)
        self.status_path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "llmprofiles.serving.supervisor", "--model-repository", str(self.repo),
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--work-dir", str(self.work), *self.extra_args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_serving()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        pid = self.status().get("server_pid")
        if pid:  # never leave a server behind, even when the supervisor was killed
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc:
            self._log.close()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The supervisor stopped (SIGSTOP) inside the block: a fault stays in place while it is looked at."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> Supervised:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_server(s: Supervised) -> str:
    os.kill(s.status()["server_pid"], signal.SIGKILL)
    return "kill -9 tritonserver"


def kill_stub(s: Supervised, model: str = "llm") -> str:
    os.kill(stub_pids(s.status()["server_pid"])[model], signal.SIGKILL)
    return f"kill -9 the {model} backend stub"


def poison_server(s: Supervised) -> str:
    post_raw(s.http_url, "/v2/models/llm/infer", ABORTS_SERVER, timeout_s=10)
    return "HTTP body declaring shape [1, 1099511627776]"


def poison_stub(s: Supervised) -> str:
    post_raw(s.http_url, "/v2/models/llm/infer", KILLS_STUB, timeout_s=10)
    return "HTTP body declaring shape [4611686018427387904, 4]"


FAULTS = {"kill-server": kill_server, "kill-stub": kill_stub, "poison-server": poison_server, "poison-stub": poison_stub}


def ready_in_process(url: str) -> bool:
    return not verdict(probe(url, None, 5.0), "ready")


def recover(s: Supervised, fault: str, ready: Callable[[str], bool] = ready_in_process, timeout_s: float = 180.0,
            poll_s: float = 0.2) -> dict:
    """Inject ``fault``; time kill -> first good answer, and ask ``ready(url)`` once during the outage and once after."""
    before = s.status().get("restarts", 0)
    t0 = time.monotonic()
    what = FAULTS[fault](s)
    ready_during = ready(s.http_url)
    failed = 0
    while not infer_ok(s.http_url, timeout_s=5.0):
        failed += 1
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"{what}: no good answer {timeout_s:.0f} s later; status {s.status()}\n{s.log_tail()}")
        time.sleep(poll_s)
    recovery_s = time.monotonic() - t0
    st = s.wait_serving(timeout_s=60, restarts=before + 1)
    return {"fault": fault, "what": what, "recovery_s": round(recovery_s, 2), "failed_polls": failed,
            "restarts": st["restarts"], "cause": st.get("last_cause"), "ready_during_outage": ready_during,
            "ready_after": ready(s.http_url)}
