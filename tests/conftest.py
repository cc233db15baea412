"""Shared fixtures. Server tests start the real tritonserver on free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels (the generate engine's decode attention) run in Triton's interpreter, where
# Triton is installed. Set before anything imports triton: triton.jit reads it as a kernel is defined, and the
# interpreter reads it at launch. Inductor turns its autotune cache off while it is set (tests of that cache
# unset it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
# Recovery times measured by the chaos tests (fault, seconds from the fault to the first good answer).
RECOVERIES: list[tuple[str, float]] = []


def pytest_terminal_summary(terminalreporter):
    for fault, seconds in RECOVERIES:
        terminalreporter.write_line(f"recovery: {fault}: {seconds:.1f} s from the fault to the first good answer")


def llm_only_repo(dest: Path) -> Path:
    """A repository of symlinks to the built llm models only: another model half-written in model_repository/ cannot stop it."""
    dest.mkdir(parents=True, exist_ok=True)
    for m in ("llm", "llm_single"):
        (dest / m).symlink_to(REPO / m)
    return dest


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the OS can hand the same free port to two
    calls in a row (CI once gave one server the same HTTP and gRPC port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def require_built(*models: str) -> None:
    missing = [m for m in models if not (REPO / m / "1" / "manifest.json").is_file()]
    if missing:
        pytest.fail(f"no engine built for {missing}; run `make build` first (make test does)")


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    """The real tritonserver over model_repository/, for the whole session."""
    from llmprofiles.serving.launcher import TritonServer

    require_built("llm", "llm_single")
    work = tmp_path_factory.mktemp("triton")
    with TritonServer(REPO, free_port(), free_port(), free_port(), work=work) as server:
        yield server
