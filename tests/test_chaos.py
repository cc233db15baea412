"""Issue 13 items 1-3 and supervision: what kills tritonserver 2.51 or a backend stub, and the service coming back.

The server runs under the supervisor exactly as ``make serve`` runs it. Each
test injects one fault, then asserts that readiness (``client/health.py`` run as
an exec probe) says not-ready during the outage, that the service answers again
(the time from the fault to the first good answer is printed in the summary),
that readiness says ready after, and that the restart is counted with its cause.
About 30 s per fault on 2 cores: one server start.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import RECOVERIES, ROOT, free_port, llm_only_repo, require_built

pytestmark = [pytest.mark.server, pytest.mark.chaos]


def health_probe(url: str) -> bool:
    """``client/health.py`` as Kubernetes would run it: the exit code is the answer."""
    return subprocess.run([sys.executable, str(ROOT / "client" / "health.py"), "--url", url, "--timeout-s", "5"],
                          capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    from llmprofiles.serving.faults import Supervised

    require_built("llm", "llm_single")
    tmp = tmp_path_factory.mktemp("chaos")
    with Supervised(llm_only_repo(tmp / "repo"), (free_port(), free_port(), free_port()), tmp / "work") as s:
        assert health_probe(s.http_url)
        yield s


@pytest.mark.parametrize("fault, cause", [
    ("kill-server", "server killed by SIGKILL"),  # the server process dies (OOM killer, kill -9)
    ("kill-stub", "Stub process 'llm_0_0' is not healthy"),  # item 3: health said ready forever
    ("poison-server", "std::bad_alloc"),  # item 1: a 90-byte HTTP body aborts tritonserver
    ("poison-stub", "Stub process 'llm_0_0' is not healthy"),  # item 2: one request killed the stub for good
])
def test_service_recovers_and_readiness_tells_the_truth(supervised, fault, cause):
    from llmprofiles.serving.faults import recover

    before = supervised.status()["restarts"]
    r = recover(supervised, fault, ready=health_probe)
    RECOVERIES.append((fault, r["recovery_s"]))
    assert r["ready_during_outage"] is False, r
    assert r["ready_after"] is True, r
    assert r["restarts"] == before + 1, r
    assert cause in r["cause"], r
    assert r["recovery_s"] < 150, r
