"""Run the real ``tritonserver`` shipped in the nvidia-pytriton wheel, without Docker.

The wheel carries the server binary, the Python backend and one backend stub per
Python version. The stub must match the interpreter that serves (it imports the
project's packages from it), so this module assembles a backend folder for the
running interpreter and the environment the stub needs.

Run the server in the foreground::

    python -m llmprofiles.serving.launcher --model-repository model_repository --http-port 8000
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def pytriton_root() -> Path:
    # Locate, don't import: importing pytriton pulls in its own client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nvidia-pytriton is not installed; run `make setup` (it ships tritonserver)")
    return Path(spec.submodule_search_locations[0])


def backend_dir(dest: Path) -> Path:
    """A writable backends folder with the Python stub for this interpreter."""
    root = pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(f"nvidia-pytriton has no Python backend stub for Python {version} at {stub}")
    if not (dest / "python" / "triton_python_backend_stub").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(root / "backends", dest)
        shutil.copy2(stub, dest / "python" / "triton_python_backend_stub")
    return dest


def overlay_python(dest: Path, first: list[Path]) -> Path:
    """A venv at ``dest`` whose Python imports from ``first`` before this interpreter's packages.

    For the backend stub, which ignores PYTHONPATH: when the serving Python has
    numpy 2, ``first=[a folder holding numpy<2]`` gives the stub numpy 1 and
    everything else (torch, this package) from here. Run the server with
    ``STUB_PYTHON=<the returned path>``.
    """
    dest = Path(dest).resolve()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(dest)], check=True)
    site = Path(subprocess.run([str(dest / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    here = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()]
    # .pth lines join sys.path in order, after the venv's own (empty) site-packages.
    (site / "overlay.pth").write_text("".join(f"{Path(p).resolve()}\n" for p in [*first, *here]))
    return dest / "bin" / "python"


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(pytriton_root().parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
    # The stub imports packages from the interpreter found first on PATH; it ignores PYTHONPATH (seen on the
    # H200 machine: sys.path held '', the stdlib and that interpreter's site-packages). STUB_PYTHON names
    # another interpreter, e.g. a venv whose numpy < 2 shadows the serving venv's (see bench/gpu_wheels.sh).
    stub_python = Path(os.environ.get("STUB_PYTHON") or sys.executable)
    env["PATH"] = f"{stub_python.parent}:{env.get('PATH', '')}"
    return env


def server_command(repos: list[Path], http_port: int, grpc_port: int, metrics_port: int, work: Path) -> list[str]:
    return [
        str(pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
        *(f"--model-repository={Path(r).resolve()}" for r in repos),
        f"--backend-directory={backend_dir(work / 'backends')}",
        "--model-control-mode=none",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        "--allow-metrics=true", "--allow-gpu-metrics=false",
        "--log-verbose=0",
    ]


def busy_ports(ports: dict[str, int]) -> list[str]:
    """The ports (by role) that 127.0.0.1 cannot bind now, e.g. held by a server left running."""
    busy = []
    for role, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{role} port {port}")
    return busy


PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], object] | None:
    """A ``preexec_fn``: the child gets SIGTERM when the thread that started it dies, even by SIGKILL (Linux).

    prctl is looked up here, in the parent: loading a library in the forked child could deadlock.
    """
    if not sys.platform.startswith("linux"):
        return None
    return functools.partial(ctypes.CDLL(None, use_errno=True).prctl, PR_SET_PDEATHSIG, signal.SIGTERM)


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format to ``{(name, frozenset of (label, value)): value}``; comments skipped."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        out[name, frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(value)
    return out


def metric_sum(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    """The sum of every series of ``name`` carrying ``labels`` (and any others); None when there is none."""
    want = set(labels.items())
    values = [v for (n, ls), v in metrics.items() if n == name and want <= ls]
    return sum(values) if values else None


class TritonServer:
    """A tritonserver child process: ``with TritonServer(...) as s:`` waits until it is ready.

    It refuses to start on a port that is already taken: another server there
    would answer the readiness probe and every request in this one's place. The
    child dies with the thread that starts it (start it from one that outlives
    it), so a killed benchmark leaves no server behind.
    """

    def __init__(self, repo: str | Path | list[Path] = "model_repository", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, work: str | Path = ".triton", log_path: str | Path | None = None,
                 ready_timeout_s: float = 300.0):
        self.repos = [Path(r) for r in repo] if isinstance(repo, list) else [Path(repo)]
        self.work = Path(work)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log_path = Path(log_path) if log_path else self.work / f"server-{http_port}.log"
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """The server's Prometheus metrics now (Triton's own and the models'), parsed by :func:`parse_metrics`."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())

    def start(self) -> TritonServer:
        busy = busy_ports({"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port})
        if busy:
            raise RuntimeError(f"cannot start tritonserver: {', '.join(busy)} on 127.0.0.1 already in use "
                               "(a server left running?); stop it or choose other ports")
        self.work.mkdir(parents=True, exist_ok=True)
        cmd = server_command(self.repos, self.http_port, self.grpc_port, self.metrics_port, self.work)
        t0 = time.perf_counter()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=server_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent())
        while time.perf_counter() - t0 < self.ready_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.is_ready():
                self.startup_s = time.perf_counter() - t0
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {self.ready_timeout_s:.0f} s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the server's process group (in-flight requests finish), SIGKILL after ``grace_s``."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            try:  # backend stubs left behind by a server that died (SIGKILL, abort) share its process group
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._log.close()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def add_server_args(p: argparse.ArgumentParser, work_dir_help: str) -> None:
    """The flags every way of starting the server takes: repository, ports, work folder."""
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port on 127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port on 127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port on 127.0.0.1")
    p.add_argument("--work-dir", type=Path, default=Path(".triton"), help=work_dir_help)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run tritonserver (from nvidia-pytriton) in the foreground.")
    add_server_args(p, work_dir_help="where the backend folder is assembled")
    a = p.parse_args(argv)
    busy = busy_ports({"HTTP": a.http_port, "gRPC": a.grpc_port, "metrics": a.metrics_port})
    if busy:  # tritonserver would load every model first, then exit (or run without metrics) with the reason in its log
        raise SystemExit(f"cannot start tritonserver: {', '.join(busy)} on 127.0.0.1 already in use; "
                         "stop what holds it or choose other ports")
    a.work_dir.mkdir(parents=True, exist_ok=True)
    cmd = server_command([a.model_repository], a.http_port, a.grpc_port, a.metrics_port, a.work_dir)
    os.execve(cmd[0], cmd, server_env())


if __name__ == "__main__":
    main()
