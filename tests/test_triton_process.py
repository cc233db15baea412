"""The tritonserver process itself: it must never serve in another server's place or outlive its starter.

A benchmark killed by its time limit once left its server running; the next
run's server could not bind, and the old one answered every request instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.server


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


def test_busy_port_is_refused_before_any_server_starts(tmp_path):
    from llmprofiles.serving.launcher import TritonServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(tmp_path / "repo", free_port(), port, free_port(), work=tmp_path / "w")
        with pytest.raises(RuntimeError) as e:
            server.start()
    assert f"gRPC port {port}" in str(e.value) and "already in use" in str(e.value)
    assert server.proc is None


STARTER = """
import sys, time
from llmprofiles.serving.launcher import TritonServer
s = TritonServer(sys.argv[1], *map(int, sys.argv[2:5]), work=sys.argv[5], ready_timeout_s=120).start()
print(s.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only")
def test_server_dies_with_the_process_that_started_it(tmp_path):
    repo = tmp_path / "empty_repo"  # no models: the server is ready in seconds
    repo.mkdir()
    ports = [str(free_port()) for _ in range(3)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(repo), *ports, str(tmp_path / "w")],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = int(starter.stdout.readline())
        assert alive(pid)
        starter.send_signal(signal.SIGKILL)  # no handler, no `finally`: only the kernel can clean up
        starter.wait()
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(pid), f"tritonserver {pid} outlived the process that started it"
    finally:
        starter.kill()
        if "pid" in locals() and alive(pid):
            os.killpg(pid, signal.SIGKILL)
