"""How tritonserver is launched: loopback only, no model control, ports from flags."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from llmprofiles.serving.launcher import server_command

from conftest import ROOT, free_port, require_built


def test_server_command_binds_loopback_with_model_control_none(tmp_path):
    cmd = server_command([ROOT / "model_repository"], 18000, 18001, 18002, tmp_path)
    assert cmd[0].endswith("tritonserver")
    for flag in ("--model-control-mode=none", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                 "--metrics-address=127.0.0.1", "--http-port=18000", "--grpc-port=18001", "--metrics-port=18002"):
        assert flag in cmd
    assert (tmp_path / "backends" / "python" / "triton_python_backend_stub").is_file()


@pytest.mark.server
def test_foreground_server_serves_on_the_given_ports(tmp_path):
    require_built("llm", "llm_single")
    http, grpc, metrics = free_port(), free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmprofiles.serving.launcher", "--http-port", str(http), "--grpc-port", str(grpc),
                             "--metrics-port", str(metrics), "--work-dir", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/llm/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("server started by `python -m llmprofiles.serving.launcher` never became ready")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert "llm_profile_requests_total" in r.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
