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
        # The metrics endpoint may open a moment after the HTTP one reports ready (a CI run was refused once).
        text = None
        while text is None and time.time() < deadline + 30:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert text is not None, f"no metrics on port {metrics} after the server was ready"
        assert "llm_profile_requests_total" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_overlay_python_imports_the_given_folder_first_and_this_pythons_packages_after(tmp_path):
    from llmprofiles.serving.launcher import overlay_python

    first = tmp_path / "first"
    (first / "numpy").mkdir(parents=True)  # a stand-in numpy that shadows the real one
    (first / "numpy" / "__init__.py").write_text("__version__ = '1.0-overlay'\n")
    python = overlay_python(tmp_path / "venv", [first])
    out = subprocess.run([str(python), "-c", "import numpy, tokenizers; print(numpy.__version__, tokenizers.__name__)"],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    assert out == ["1.0-overlay", "tokenizers"]
