"""Shared fixtures. Server tests start the real tritonserver on free ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
