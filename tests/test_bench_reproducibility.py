"""The benchmark's issue-12 parts without a GPU: decode over fresh builds, first request after ready, perf_analyzer."""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import llm_bench
from bench.llm_bench import build_stats, main, parse_perf_csv, report, run_perf_analyzer
from test_bench_report import engine_state, triton_state, verdicts

PERF_CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
            "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
            "Avg latency,request/response,response wait\n"
            "16,383.2,20,300,9000,40,2500,30,10,41000,43000,44000,46500,41200,0,0\n")


def build(multi_ms: float, single_ms: float, content: str, tuning: list[float] | None = None) -> dict:
    b = {"date": "2026-12-01", "multi_content_hash": content, "single_content_hash": content + "s",
         "decode": {"multi": {"median_ms": multi_ms, "p99_ms": multi_ms, "n": 200},
                    "single": {"median_ms": single_ms, "p99_ms": single_ms, "n": 200}}}
    if tuning:
        b["decode_tuning"] = {"decode": {"runs": len(tuning), "attempts": [{"attempt": i, "ms": t} for i, t in enumerate(tuning)],
                                         "winner": tuning.index(min(tuning)), "winner_ms": min(tuning), "final_ms": min(tuning)}}
    return b


def test_perf_analyzer_csv_gives_ms_and_infer_per_s_by_column_name():
    assert parse_perf_csv(PERF_CSV) == {"concurrency": 16, "infer_per_s": 383.2, "p50_ms": 41.0, "p99_ms": 46.5}
    with pytest.raises(ValueError, match="no result row"):
        parse_perf_csv(PERF_CSV.splitlines()[0] + "\n")


def test_spread_and_the_figure_of_record_are_the_median_over_builds():
    st = build_stats({"1": build(1.40, 4.5, "a"), "2": build(1.88, 3.7, "b"), "3": build(1.45, 4.4, "c")})
    assert st["n"] == 3 and st["multi"]["median_ms"] == 1.45
    assert st["multi"]["spread"] == pytest.approx((1.88 - 1.40) / 1.45)
    assert st["ratio"] == pytest.approx(4.4 / 1.45)  # median of the builds' ratios (4.5/1.4, 3.7/1.88, 4.4/1.45)


def test_report_judges_decode_on_the_median_of_fresh_builds_and_their_spread():
    state = engine_state(decode_multi_ms=0.9, prefill_ratio=1.0)  # one engine run alone would meet both
    state["builds"] = {"1": build(1.40, 4.57, "a", [1.45, 1.40, 1.52]), "2": build(1.88, 3.72, "b")}
    md = report(state)[0]
    v = verdicts(md)
    assert v["decode on the engine alone <= 1.0 ms (median)"] == "MISSED"  # 1.64 ms, the median of 1.40 and 1.88
    assert v["decode, multi vs single (engine, median) >= 3x"] == "MISSED"  # median of 3.26x and 1.98x
    assert v["decode over fresh builds: spread (max-min)/median <= 10%"] == "MISSED"
    assert "1.640 ms (median of 2 fresh builds)" in md
    assert "## Decode over fresh builds" in md and "| 1 | 2026-12-01 | 1.400 | 4.570 | 3.26x |" in md
    assert "decode: 1.450, 1.400, 1.520 (kept 2; built engine 1.400)" in md
    assert "not fresh builds" not in md

    # What the served engine did at load: its replay, and whether it reused the build's launch configs.
    b1 = state["builds"]["1"]
    b1["decode_tuning"]["decode"]["final_configs"] = {"kept": 40, "same": 38, "changed": 2, "missing": 0}
    b1["decode_tuning"]["decode"]["final_compile"] = {"fxgraph_cache_hit": 1, "coordesc_tuning_bench": 0}
    b1["decode_at_load"] = {"multi": {"replay_ms": 1.3712, "compile": {"fxgraph_cache_hit": 1, "coordesc_tuning_bench": 0}}}
    state["builds"]["2"]["decode_at_load"] = {"multi": {"replay_ms": 1.6, "compile": {"coordesc_tuning_bench": 12}}}
    md = report(state)[0]
    assert ("built engine 1.400; launch configs kept 38/40; 0 coordinate-descent benchmarks in its compile); "
            "served engine replay 1.371, reused at load |") in md
    assert "served engine replay 1.600, re-tuned at load (12 benchmarks) |" in md

    state["builds"] = {"1": build(1.00, 3.2, "a"), "2": build(0.96, 3.0, "b")}
    v = verdicts(report(state)[0])
    assert v["decode over fresh builds: spread (max-min)/median <= 10%"] == "met"
    assert v["decode on the engine alone <= 1.0 ms (median)"] == "met"
    assert v["decode, multi vs single (engine, median) >= 3x"] == "met"


def test_one_build_is_no_spread_and_a_relabelled_build_is_flagged():
    state = engine_state(1.5, 1.0)
    state["builds"] = {"1": build(1.4, 4.5, "a")}
    md = report(state)[0]
    assert verdicts(md)["decode over fresh builds: spread (max-min)/median <= 10%"] == "not measured (one multi and one single build)"
    state["builds"]["2"] = build(1.41, 4.5, "a")  # the same build measured twice
    assert "**Runs 1, 2 measured the same multi build (content hash): not fresh builds of it;" in report(state)[0]


def test_a_multi_build_measured_beside_two_fresh_single_builds_counts_once():
    """Session 20: llm_single rebuilt from scratch, llm kept; each run measured both side by side."""
    shared = {"1": build(0.972, 5.880, "a"), "2": build(0.932, 3.652, "a")}
    shared["2"]["single_content_hash"] = "other"
    st = build_stats(shared)
    assert st["multi"]["n"] == 1 and st["multi"]["median_ms"] == pytest.approx(0.952)
    assert st["single"]["n"] == 2 and st["single"]["spread"] == pytest.approx((5.880 - 3.652) / 4.766)
    assert st["ratio"] == pytest.approx((5.880 / 0.972 + 3.652 / 0.932) / 2)
    state = engine_state(1.5, 1.0)
    state["builds"] = shared
    md = report(state)[0]
    v = verdicts(md)
    assert "0.952 ms (median of 1 fresh build)" in md
    assert v["decode on the engine alone <= 1.0 ms (median)"] == "met"
    assert v["decode over fresh builds: spread (max-min)/median <= 10%"] == "MISSED"  # the single builds' 46.7%
    assert "multi: one build; single 46.7% over 2 builds (5.880, 3.652 ms)" in md
    shared["2"]["decode"]["single"]["median_ms"] = 5.7
    assert verdicts(report(state)[0])["decode over fresh builds: spread (max-min)/median <= 10%"] == "not measured (one multi build)"


def first_request_state(first: dict) -> dict:
    state = triton_state(4 << 30, 4 << 30)
    state["triton"]["latency"]["prefill@128"] = {**{k: {"median_ms": 12.0, "p99_ms": 13.0, "mean_ms": 12.5, "n": 100}
                                                    for k in ("single", "multi")},
                                                 "noop": {"median_ms": 2.0, "p99_ms": 2.2, "n": 100}}
    state["triton"]["first_request"] = first
    return state


def test_first_request_after_ready_is_judged_against_twice_the_steady_state():
    md = report(first_request_state({"decode@1": {"multi": {"ms": 7.9}, "single": {"ms": 30.0}},
                                     "prefill@128": {"multi": {"ms": 23.0}, "single": {"ms": 24.5}}}))[0]
    assert "| decode seq=1 | multi | 7.900 | 4.000 | 1.98x | met |" in md
    assert "| prefill seq=128 | single | 24.500 | 12.000 | 2.04x | MISSED |" in md
    row = "first request after ready <= 2x steady state (every regime, both models)"
    assert verdicts(md)[row] == "MISSED"
    assert "worst prefill seq=128 on single: 2.04x (24.5 vs 12.0 ms)" in md

    ok = first_request_state({"decode@1": {"multi": {"ms": 5.0}, "single": {"ms": 20.0}},
                              "prefill@128": {"multi": {"ms": 20.0}, "single": {"ms": 13.0}}})
    assert verdicts(report(ok)[0])[row] == "met"

    failed = first_request_state({"decode@1": {"multi": {"error": "InferenceServerException: timed out"},
                                               "single": {"ms": 20.0}}})
    md = report(failed)[0]
    assert "| decode seq=1 | multi | failed: InferenceServerException: timed out | 4.000 | - | MISSED |" in md
    assert verdicts(md)[row] == "MISSED"


def perf_args(tmp_path: Path, binary: Path | None) -> SimpleNamespace:
    return SimpleNamespace(perf_analyzer=binary, perf_interval_ms=100)


def test_perf_analyzer_not_found_is_a_row_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    perf = run_perf_analyzer(perf_args(tmp_path, None), "127.0.0.1:1")
    assert perf["not_run"].startswith("perf_analyzer not found")
    state = triton_state(4 << 30, 4 << 30)
    state["triton"]["perf_analyzer"] = perf
    assert "| all | - | - | not run: perf_analyzer not found" in report(state)[0]


def fake_perf_analyzer(tmp_path: Path, exit_code: int) -> Path:
    """A stand-in binary: writes PERF_CSV (with the concurrency asked) to the -f path, then exits with exit_code."""
    script = tmp_path / "perf_analyzer"
    script.write_text(f"""#!{sys.executable}
import sys
argv = sys.argv
csv = {PERF_CSV!r}.replace("\\n16,", "\\n" + argv[argv.index("--concurrency-range") + 1] + ",")
open(argv[argv.index("-f") + 1], "w").write(csv)
print("stderr of a failed run", file=sys.stderr)
sys.exit({exit_code})
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_perf_analyzer_runs_every_case_and_sits_beside_the_own_client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    perf = run_perf_analyzer(perf_args(tmp_path, fake_perf_analyzer(tmp_path, 0)), "127.0.0.1:8001")
    cases = [(r["model"], r["regime"], r["concurrency"]) for r in perf["runs"]]
    assert cases == [("single", "decode@1", 1), ("multi", "decode@1", 1), ("single", "decode@1", 16),
                     ("multi", "decode@1", 16), ("single", "prefill@128", 1), ("multi", "prefill@128", 1)]
    assert all(r["p50_ms"] == 41.0 and "error" not in r for r in perf["runs"])
    assert "-m llm -i grpc -u 127.0.0.1:8001 --shape input_ids:1,128 --shape position_ids:1,128" in perf["runs"][-1]["command"]
    perf["own_client_c16"] = {"multi": {"p50_ms": 40.0, "p99_ms": 45.0, "infer_per_s": 390.0}}
    state = triton_state(4 << 30, 4 << 30)
    state["triton"]["latency"]["decode@1"]["multi"]["mean_ms"] = 4.0
    state["triton"]["perf_analyzer"] = perf
    md = report(state)[0]
    assert "| llm | decode seq=1 | 1 | 41.000 | 46.500 | 383.2 | 4.000 | 4.400 | 250.0 |" in md
    assert "| llm | decode seq=1 | 16 | 41.000 | 46.500 | 383.2 | 40.000 | 45.000 | 390.0 |" in md
    assert "| llm_single | decode seq=1 | 16 | 41.000 | 46.500 | 383.2 | - | - | - |" in md


def test_a_failing_perf_analyzer_is_reported_per_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    perf = run_perf_analyzer(perf_args(tmp_path, fake_perf_analyzer(tmp_path, 99)), "127.0.0.1:8001")
    assert len(perf["runs"]) == 6
    assert all(r["error"].startswith("RuntimeError: exit 99: stderr of a failed run") for r in perf["runs"])
    state = triton_state(4 << 30, 4 << 30)
    state["triton"]["perf_analyzer"] = perf
    assert "| llm | prefill seq=128 | 1 | failed: RuntimeError: exit 99" in report(state)[0]


def test_decode_only_needs_a_build_label(capsys):
    with pytest.raises(SystemExit):
        main(["--phase", "engine", "--decode-only"])
    assert "--decode-only records a build's decode: give --build-label too" in capsys.readouterr().err


def test_the_triton_phase_serves_only_the_measured_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("llm", "llm_single", "generate"):
        (tmp_path / "model_repository" / model / "1").mkdir(parents=True)
    root = llm_bench.llm_repo()
    assert sorted(p.name for p in root.iterdir()) == ["llm", "llm_single"]
    assert (root / "llm").resolve() == (tmp_path / "model_repository" / "llm").resolve()
    assert llm_bench.llm_repo() == root  # a second run replaces the links


def test_memory_of_the_server_tree_leaves_compile_workers_out_and_reads_its_own_gpu(monkeypatch):
    import os
    import subprocess as sp
    import sys

    from bench import llm_bench

    child = sp.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me = os.getpid()
        with_child = llm_bench.proc_tree_rss_bytes(me, skip=None)
        without = llm_bench.proc_tree_rss_bytes(me, skip=lambda pid: pid == child.pid)
        assert with_child > without > 0
    finally:
        child.kill()
        child.wait()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert llm_bench.visible_gpu() == ["-i", "1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert llm_bench.visible_gpu() == []
