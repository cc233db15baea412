"""The GPU benchmark's report: targets judged from measured numbers (pure logic, no GPU)."""

from __future__ import annotations

import argparse

from bench.decode_variants import summarize_kernels
from bench.llm_bench import call_order, record_command, report, server_split
from llmprofiles.serving.launcher import parse_metrics


def cell(single_ms: float, multi_ms: float) -> dict:
    return {"single": {"median_ms": single_ms, "p99_ms": single_ms * 1.1, "n": 100},
            "multi": {"median_ms": multi_ms, "p99_ms": multi_ms * 1.1, "n": 100}}


def engine_state(decode_multi_ms: float, prefill_ratio: float, n_correct: int = 200) -> dict:
    return {
        "env": {"gpu": "NVIDIA H200", "date": "2026-11-29", "driver": "580", "torch": "2.11", "cuda": "13.0",
                "transformers": "5.17", "python": "3.12",
                "manifest": {"model": "gemma-3-1b", "dtype": "float16", "runtime": "torch-compile"}},
        "make": {"all": "make bench PY=python3"},
        "commands": {"all": "python -m bench.llm_bench"},
        "engine": {
            "latency": {"decode@1": cell(13.0, decode_multi_ms), "prefill@128": cell(9.0, 9.0 / prefill_ratio)},
            "memory": {"single": {"resident_bytes": 2 << 30, "peak_bytes": 2 << 30},
                       "multi": {"resident_bytes": 2 << 30, "peak_bytes": (2 << 30) + (1 << 20)}},
            "correctness": {"multi": {r: {"top1_agreement": 1.0, "max_abs_diff": 0.01, "n": n_correct}
                                      for r in ("decode", "prefill")}},
            "weights_shared": {"profiles": 2, "weight_bytes": 1 << 30},
        },
    }


def verdicts(md: str) -> dict[str, str]:
    rows = md.split("## Targets")[1].splitlines()
    return {r.split(" | ")[0].lstrip("| "): r.rstrip(" |").rsplit(" | ", 1)[1] for r in rows if r.startswith("| ") and "verdict" not in r}


def test_targets_met_and_missed_follow_the_numbers():
    v = verdicts(report(engine_state(decode_multi_ms=0.9, prefill_ratio=1.0))[0])
    assert v["decode on the engine alone <= 1.0 ms (median)"] == "met"
    assert v["decode, multi vs single (engine, median) >= 3x"] == "met"
    assert v["prefill seq=128, multi vs single >= 0.98x"] == "met"
    v = verdicts(report(engine_state(decode_multi_ms=1.5, prefill_ratio=0.9, n_correct=20))[0])
    assert v["decode on the engine alone <= 1.0 ms (median)"] == "MISSED"
    assert v["prefill seq=128, multi vs single >= 0.98x"] == "MISSED"
    assert v["decode: top-1 agreement with HF eager >= 99% over 200 inputs"] == "MISSED"  # too few inputs
    assert v["decode: max abs logit diff vs HF eager <= 0.02 (fp16)"] == "met"
    state = engine_state(1.5, 1.0)
    state["engine"]["correctness"]["multi"]["prefill"]["max_abs_diff"] = 0.05
    v = verdicts(report(state)[0])
    assert v["prefill: max abs logit diff vs HF eager <= 0.02 (fp16)"] == "MISSED"


def test_report_names_make_bench_and_a_failed_triton_phase():
    state = engine_state(1.5, 1.0)
    state["triton_error"] = "TimeoutError: tritonserver not ready"
    md = report(state)[0]
    assert "all: `make bench PY=python3`, which ran `python -m bench.llm_bench`" in md
    assert "The Triton phase failed" in md and "tritonserver not ready" in md


def test_call_order_rotates_so_no_engine_always_follows_another():
    orders = [call_order(["noop", "single", "multi"], it) for it in range(6)]
    firsts = [o[0] for o in orders]
    assert all(firsts.count(k) == 2 for k in ("noop", "single", "multi"))
    before_multi = [o[o.index("multi") - 1] for o in orders if o.index("multi") > 0]
    assert before_multi.count("single") == before_multi.count("noop") == 2
    assert all(sorted(o) == ["multi", "noop", "single"] for o in orders)


def triton_state(rss_start: int, rss_end: int, gpu_start: int | None = 10 << 30, gpu_end: int | None = 10 << 30) -> dict:
    state = engine_state(1.5, 1.0)
    noop = {"median_ms": 2.0, "p99_ms": 2.2, "n": 100}
    state["triton"] = {
        "startup_s": 100.0,
        "latency": {"decode@1": {**cell(16.0, 4.0), "noop": noop}},
        "load": {"total": {"errors": 0, "mismatches": 0}, "concurrency": 16, "duration_s": 60.0},
        "memory_start": {"host_rss_bytes": rss_start, "gpu_used_bytes": gpu_start},
        "memory_end": {"host_rss_bytes": rss_end, "gpu_used_bytes": gpu_end},
    }
    state["make"]["triton"] = "make bench PY=python3 BENCH_ARGS=--phase triton"
    state["commands"]["triton"] = "python -m bench.llm_bench --phase triton"
    return state


def test_memory_drift_is_judged_and_an_unmeasured_reading_is_never_called_flat():
    v = verdicts(report(triton_state(4 << 30, (4 << 30) + (8 << 20)))[0])
    assert v["load run: memory flat"] == "met"
    v = verdicts(report(triton_state(4 << 30, 5 << 30))[0])
    assert v["load run: memory flat"] == "MISSED"
    md = report(triton_state(0, 0))[0]  # the probe found no server process
    assert verdicts(md)["load run: memory flat"] == "not measured"
    assert "host RSS not measured" in md
    v = verdicts(report(triton_state(4 << 30, 4 << 30, None, None))[0])  # no nvidia-smi
    assert v["load run: memory flat"] == "not measured"


def test_report_names_each_phase_command_and_keeps_notes():
    state = triton_state(4 << 30, 4 << 30)
    state["notes"] = ["the server was restarted once"]
    state["triton"]["startup_s"] = None
    md = report(state)[0]
    assert "triton: `make bench PY=python3 BENCH_ARGS=--phase triton`, which ran `python -m bench.llm_bench --phase triton`" in md
    assert "## Notes on this run" in md and "- the server was restarted once" in md
    assert "server start-up (process start to ready): not measured" in md


def test_report_shows_the_decode_split_when_measured():
    state = engine_state(2.1, 1.0)
    assert "CUDA graph replay alone" not in report(state)[0]  # CPU runs and older results have none
    state["engine"]["decode_split"] = {"call_ms": {"p50": 1.6, "p99": 1.7}, "replay_ms": {"p50": 1.5, "p99": 1.55}}
    md = report(state)[0]
    assert "CUDA graph replay alone p50 1.500 ms" in md and "call p50 1.600 ms" in md
    assert "idling" not in md  # older results did not measure it
    state["engine"]["decode_split"]["engine_call_after_idle_ms"] = {"p50": 1.9, "p99": 2.2}
    assert "after 2 ms of idling before each, as one client's requests arrive through Triton: p50 1.900 ms" in report(state)[0]


def test_kernel_summary_counts_per_replay_by_kind_and_name():
    kernels = [("triton_red_fused_mul_sum_0", 10.0), ("triton_poi_fused_add_1", 2.0),
               ("pytorch_flash::flash_fwd_kernel", 6.0), ("Memcpy DtoD (Device -> Device)", 1.0)] * 4
    k = summarize_kernels(kernels, replays=2)
    assert k["kernels_per_replay"] == 8 and k["busy_ms_per_replay"] == 0.038
    assert list(k["by_kind"]) == ["reduction (GEMVs, norms)", "extern (attention, cuBLAS, other)", "pointwise", "copy"]
    assert k["by_kind"]["reduction (GEMVs, norms)"] == {"per_replay": 2, "ms_per_replay": 0.02}
    assert k["top"][0]["name"] == "triton_red_fused_mul_sum_0"
    state = engine_state(2.1, 1.0)
    state["engine"]["decode_split"] = {"call_ms": {"p50": 1.6, "p99": 1.7}, "replay_ms": {"p50": 1.5, "p99": 1.55},
                                       "kernels": k}
    md = report(state)[0]
    assert "8 GPU kernels, busy 0.038 ms" in md and "| pointwise | 2 | 0.004 |" in md


METRICS_BEFORE = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="llm",version="1"} 10
nv_inference_request_duration_us{model="llm",version="1"} 10000
nv_inference_compute_infer_duration_us{model="llm",version="1"} 8000
nv_inference_request_success{model="noop",version="1"} 5
nv_inference_request_duration_us{model="noop",version="1"} 2000
llm_profile_latency_ms_count{model="llm",profile="decode"} 10
llm_profile_latency_ms_sum{model="llm",profile="decode"} 60
llm_profile_latency_ms_count{model="llm",profile="prefill"} 0
llm_profile_latency_ms_sum{model="llm",profile="prefill"} 0
"""


def test_server_split_is_the_mean_per_request_between_two_snapshots():
    after = METRICS_BEFORE.replace("} 10\n", "} 14\n").replace("} 10000", "} 14000").replace("} 8000", "} 11000")
    after = after.replace("sum{model=\"llm\",profile=\"decode\"} 60", "sum{model=\"llm\",profile=\"decode\"} 80")
    before, after = parse_metrics(METRICS_BEFORE), parse_metrics(after)
    s = server_split(before, after, "llm")
    assert s["requests"] == 4 and s["request_ms"] == 1.0 and s["compute_infer_ms"] == 0.75
    assert s["handler_ms"] == 5.0 and s["queue_ms"] is None  # (80 - 60) ms over 4 requests; no queue timer here
    assert server_split(before, after, "noop") is None  # no requests in between
    assert server_split(before, after, "absent") is None
    state = triton_state(4 << 30, 4 << 30)
    state["triton"]["server_split"] = {"decode@1": {"noop": None, "single": None, "multi": s}}
    md = report(state)[0]
    assert "| decode seq=1 | multi | 4.000 | 1.000 | - | - | 0.750 | - | 5.000 |" in md


def test_a_decode_only_run_keeps_the_engine_phase_command_beside_its_own():
    state = engine_state(0.9, 1.0)
    engine = argparse.Namespace(phase="engine", build_label="1", decode_only=False)
    decode_b2 = argparse.Namespace(phase="engine", build_label="2", decode_only=True)
    record_command(state, engine, "python -m bench.llm_bench --phase engine --build-label 1", "make bench B1")
    record_command(state, decode_b2, "python -m bench.llm_bench --phase engine --build-label 2 --decode-only", None)
    md = report(state)[0]
    assert "  - engine: `make bench B1`, which ran `python -m bench.llm_bench --phase engine --build-label 1`" in md
    assert ("  - engine, build 2 decode only: `python -m bench.llm_bench --phase engine --build-label 2 --decode-only`"
            in md)
