"""The plain way in: `tritonserver --model-repository=...` run directly, as the README documents, no launcher.

Launcher helpers only locate the wheel's binary and assemble the backend folder
(the NGC container has both in place); the command line and the environment are
the README's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port, llm_only_repo, require_built

pytestmark = pytest.mark.server


def test_tritonserver_run_directly_serves_every_model(tmp_path):
    from llmprofiles.serving.launcher import backend_dir, pytriton_root

    require_built("llm", "llm_single")
    binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    backends = backend_dir(tmp_path / "backends")
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    # README "Run tritonserver directly": the stub needs the wheel's libraries and the serving Python first on PATH.
    env["LD_LIBRARY_PATH"] = f"{pytriton_root().parent / 'nvidia_pytriton.libs'}:{sysconfig.get_config_var('LIBDIR')}"
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    cmd = [str(binary), f"--model-repository={llm_only_repo(tmp_path / 'repo')}", f"--backend-directory={backends}",
           f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}"]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("tritonserver run directly never became ready:\n" + (tmp_path / "server.log").read_text()[-3000:])
        r = subprocess.run([sys.executable, str(ROOT / "client" / "health.py"), "--url", f"127.0.0.1:{http}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "llm, llm_single serve" in r.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
