"""The client scripts as users run them, against the real tritonserver from the fixture."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.server


def run_script(name: str, *args: str) -> tuple[int, dict, str]:
    p = subprocess.run([sys.executable, str(ROOT / "client" / name), *args], capture_output=True, text=True, timeout=300)
    last = p.stdout.strip().splitlines()[-1]
    return p.returncode, json.loads(last), p.stdout


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_drive_mix_reports_each_regime_on_its_profile(triton_server, protocol):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    rc, result, out = run_script("drive.py", "--regime", "mix", "--decode-fraction", "0.8", "--protocol", protocol,
                                 "--url", url, "--concurrency", "2", "--requests", "20")
    assert rc == 0, out
    assert result["ok"] and result["total"]["count"] == 20
    assert result["phases"]["decode"]["served"] == {"0": 16}
    assert result["phases"]["prefill"]["served"] == {"1": 4}
    assert all(result["phases"][p]["p99_ms"] > 0 for p in ("decode", "prefill"))


def test_drive_exits_non_zero_on_profile_mismatch(triton_server):
    # Expecting the single-profile set's answers from the multi-profile model must fail.
    rc, result, out = run_script("drive.py", "--regime", "prefill", "--url", triton_server.grpc_url,
                                 "--model", "llm", "--profile-set", "single", "--requests", "5")
    assert rc != 0 and not result["ok"], out
    assert result["phases"]["prefill"]["mismatches"] == 5


def test_compare_prints_the_seed_table_from_one_run(triton_server):
    rc, result, out = run_script("compare.py", "--url", triton_server.grpc_url, "--requests", "10",
                                 "--prefill-seqs", "64")
    assert rc == 0, out
    assert "single-profile" in out and "multi-profile" in out and "speedup" in out
    assert [(r["regime"], r["seq"]) for r in result["rows"]] == [("decode", 1), ("prefill", 64)]
