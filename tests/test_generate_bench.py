"""The generate benchmark's pure logic: targets, the report, perf_analyzer's profile export (no server, no GPU)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from bench.generate_bench import (FULL, QUICK, compare_greedy, last_json_line, parse_profile_export, report, resolve,
                                  step_intervals_ms, targets)

MS = 1_000_000  # ns per ms


def summary(p50: float, p99: float) -> dict:
    return {"count": 100, "p50_ms": p50, "p90_ms": (p50 + p99) / 2, "p99_ms": p99, "mean_ms": p50}


def decode(batch: int, ms: float) -> dict:
    return {"batch": batch, "profile": f"decode_b{batch}", "context": 192, "call_ms": summary(ms, ms * 1.1),
            "replay_ms": summary(ms * 0.9, ms)}


def client(ttft: float, itl: float, itl99: float, tps: float, errors: int = 0) -> dict:
    return {"ttft": summary(ttft, ttft * 2), "itl": summary(itl, itl99), "e2e": summary(300, 400),
            "output_tokens_per_s": tps, "count": 40, "errors": errors, "mismatches": 0, "ok": not errors,
            "wall_s": 25.0, "server_steps": {}, "command": "python client/generate.py ..."}


def met_state() -> dict:
    """A run that meets every target of issue 11."""
    gib = 2**30
    return {
        "env": {"gpu": "NVIDIA H200", "driver": "580", "torch": "2.11", "cuda": "13.0", "transformers": "5.17",
                "numpy": "2.5.2", "python": "3.12", "tritonserver_wheel": "0.7.0", "perf_analyzer_wheel": "2.60.0",
                "date": "2026-11-30",
                "manifest": {"model": "gemma-3-1b", "dtype": "float16", "device": "cuda", "runtime": "kv-portable",
                             "generation": {"slots": 64, "max_context": 2048, "decode_buckets": [1, 64],
                                            "prefill_buckets": [128]}}},
        "commands": {"engine": "python -m bench.generate_bench --phase engine"},
        "make": {"engine": 'make bench-generate PY=python3 BENCH_ARGS="--phase engine"'},
        "phase_wall_s": {"engine": 240.0},
        "engine": {
            "load_s": 20.0, "warm_up_s": [1.0, 2.0, 3.0], "profiles": ["decode_b1", "decode_b64", "prefill_128"],
            "decode": {"1": decode(1, 1.1), "64": decode(64, 1.9)},
            "prefill": {"128": {"length": 128, "profile": "prefill_128", "call_ms": summary(5.0, 6.0), "replay_ms": None}},
            "host_gap": {"concurrency": 64, "profile": "decode_b64", "steps": 180, "step_wall_ms": summary(2.2, 3.0),
                         "engine_call_p50_ms": 1.9, "gpu_step_p50_ms": 1.7, "gpu_step_is": "graph replay (CUDA events)",
                         "host_gap_ms": 0.5, "tokens_per_s": 28_000.0},
            "memory": {"weights_bytes": 2 * gib, "kv_bytes": 3 * gib, "max_allocated_bytes": int(5.3 * gib),
                       "max_reserved_bytes": int(5.5 * gib), "rest_allocated_bytes": int(0.3 * gib),
                       "rest_reserved_bytes": int(0.5 * gib)},
            "greedy": {"prompts": 100, "tokens": 32, "identical": 97, "first_divergence": [20, 25, 30],
                       "median_first_divergence": 25.0, "hf_generate_s": 10.0},
            "spec": {}, "dtype": "float16"},
        "triton": {
            "startup_s": 80.0,
            "first_vs_steady": {"first": {"ttft_ms": 12.0, "e2e_ms": 300.0},
                                "steady": [{"ttft_ms": 10.0, "e2e_ms": 260.0}] * 5,
                                "steady_ttft_p50_ms": 10.0, "steady_e2e_p50_ms": 260.0},
            "client": {"1": client(12.0, 1.8, 2.5, 520.0), "64": client(40.0, 2.4, 9.0, 26_000.0)},
            "perf_analyzer": {"1": {"not_run": "perf_analyzer not found"}, "64": {"error": "exit 1: boom"}},
            "memory_after_sweep": {"host_rss_bytes": gib, "gpu_used_bytes": 7 * gib},
            "gauges_end": {"active_sequences": 0.0, "queue_size": 0.0}},
        "load": {"concurrency": 64, "seconds": 300.0, "wall_s": 301.0, "requests": 9000, "completed": 8100,
                 "cancelled": 900, "errors": 0, "error_samples": [], "output_tokens_per_s": 25_000.0,
                 "ttft": summary(40.0, 80.0),
                 "memory_start": {"host_rss_bytes": gib, "gpu_used_bytes": 7 * gib},
                 "memory_end": {"host_rss_bytes": gib + (8 << 20), "gpu_used_bytes": 7 * gib},
                 "gauges_end": {"active_sequences": 0.0, "queue_size": 0.0}},
        "anchor": {"batches": {"1": {"batch": 1, "first_call_s": 70.0, "long": 72, "short": 8, "long_s": [1.0],
                                     "short_s": [0.5], "per_token_ms": 4.0, "tokens_per_s": 250.0}},
                   "cache_implementation": "static", "prompt_len": 128},
    }


def verdicts(state: dict) -> dict[str, str]:
    return {name: v for name, _, v in targets(state)}


def test_every_target_met_when_the_numbers_meet_them():
    v = verdicts(met_state())
    assert set(v.values()) == {"MET"}, v


def test_targets_missed_follow_the_numbers():
    s = met_state()
    s["engine"]["decode"]["64"] = decode(64, 2.5)
    s["triton"]["client"]["1"] = client(16.0, 2.1, 3.0, 400.0)
    s["triton"]["client"]["64"] = client(40.0, 3.0, 12.0, 20_000.0)
    s["triton"]["first_vs_steady"]["first"]["e2e_ms"] = 600.0
    s["engine"]["memory"]["max_reserved_bytes"] = int(6 * 2**30)  # 1.2x of weights + KV
    s["engine"]["greedy"]["identical"] = 90
    s["load"]["errors"] = 3
    s["load"]["memory_end"]["host_rss_bytes"] += 200 << 20
    s["load"]["gauges_end"]["active_sequences"] = 2.0
    v = verdicts(s)
    assert v["engine decode step at batch 1 <= 1.2 ms (median)"] == "MET"
    missed = [name for name, verdict in v.items() if verdict == "MISSED"]
    assert len(missed) == len(v) - 1, v


def test_unmeasured_targets_say_so_rather_than_pass_or_fail():
    s = met_state()
    for key in ("triton", "load"):
        del s[key]
    del s["engine"]["decode"]["64"]
    for key in ("max_allocated_bytes", "max_reserved_bytes", "rest_allocated_bytes", "rest_reserved_bytes"):
        del s["engine"]["memory"][key]  # a CPU run
    v = verdicts(s)
    assert v["engine decode step at batch 64 <= 2.0 ms (median)"] == "not measured"
    assert v["Triton concurrency 64: >= 25,000 output tokens/s"] == "not measured"
    assert v["GPU memory <= weights + KV pool + 15% (peak reserved by PyTorch)"] == "not measured"
    assert v["load run: every slot free at the end (active sequences and queue 0)"] == "not measured"


def test_short_load_run_or_few_prompts_cannot_meet_but_errors_still_miss():
    s = met_state()
    s["load"]["wall_s"], s["load"]["concurrency"] = 15.0, 4
    s["engine"]["greedy"] |= {"prompts": 8, "identical": 8}
    v = verdicts(s)
    assert v["load run with cancellations: zero errors"] == "not measured"
    assert v["load run: memory flat (drift < 64 MiB)"] == "not measured"
    assert v["greedy first 32 tokens identical to HF generate for >= 95 of 100 prompts"] == "not measured"
    s["load"]["errors"] = 1
    assert verdicts(s)["load run with cancellations: zero errors"] == "MISSED"


def test_report_renders_every_section_and_names_failures():
    s = met_state()
    s["errors"] = {"anchor": "RuntimeError: compile failed"}
    s["notes"] = ["perf_analyzer wheel carried from the CPU machine"]
    md = report(s)
    for heading in ("## Targets (issue 11)", "## Engine alone", "## Through Triton", "## Load run with cancellations",
                    "## Anchor: HF `generate`"):
        assert heading in md
    assert "not run: perf_analyzer not found" in md and "error: exit 1: boom" in md
    assert "**The anchor phase failed:**\n\n```\nRuntimeError: compile failed\n```" in md
    assert 'engine: `make bench-generate PY=python3 BENCH_ARGS="--phase engine"`, which ran' in md
    assert "the device waits 0.500 ms per step" in md


def test_report_of_an_engine_only_cpu_run():
    s = met_state()
    for key in ("triton", "load", "anchor"):
        del s[key]
    s["engine"]["decode"]["1"]["replay_ms"] = None
    md = report(s)
    assert "## Through Triton" not in md and "| 1 | decode_b1 | 1.100 |" in md


def export(window: list[int] | None) -> dict:
    """Two streamed requests: 3 tokens (one response carries two ids) and 2 tokens plus an empty final response."""
    t0 = 1_700_000_000 * 10**9
    requests = [
        {"timestamp": t0, "request_inputs": {"max_tokens": 3},
         "response_timestamps": [t0 + 10 * MS, t0 + 12 * MS, t0 + 16 * MS],
         "response_outputs": [{"output_ids": 7}, {"output_ids": [8, 9]}, {"output_ids": 5, "finish_reason": "length"}]},
        {"timestamp": t0 + 20 * MS, "request_inputs": {"max_tokens": 2},
         "response_timestamps": [t0 + 25 * MS, t0 + 26 * MS, t0 + 27 * MS],
         "response_outputs": [{"output_ids": 1}, {"output_ids": 2}, {"output_ids": ""}]},
    ]
    exp = {"experiment": {"mode": "concurrency", "value": 2}, "requests": requests}
    if window is not None:
        exp["window_boundaries"] = [t0 + w * MS for w in window]
    return {"version": "2.60.0", "service_kind": "triton", "endpoint": "", "experiments": [exp]}


def test_profile_export_gives_ttft_itl_and_tokens_per_s():
    (r,) = parse_profile_export(export(window=[0, 15, 30]))
    assert r["concurrency"] == 2 and r["requests"] == 2
    assert r["ttft"]["count"] == 2 and r["ttft"]["p50_ms"] == pytest.approx(7.5)  # 10 and 5 ms
    # ITL: 2 ms over two tokens -> 1, 1; then 4; then 1 (the empty final response is no token)
    assert r["itl"]["count"] == 4
    assert r["itl"]["p50_ms"] == pytest.approx(1.0)
    assert r["output_tokens"] == 6 and r["window_s"] == pytest.approx(0.030)
    assert r["output_tokens_per_s"] == pytest.approx(200.0)


def test_profile_export_without_windows_uses_first_request_to_last_response():
    (r,) = parse_profile_export(export(window=None))
    assert r["window_s"] == pytest.approx(0.027) and r["output_tokens"] == 6


def test_profile_export_without_outputs_counts_one_token_per_response():
    doc = export(window=[0, 30])
    for req in doc["experiments"][0]["requests"]:
        req.pop("response_outputs")
    (r,) = parse_profile_export(doc)
    assert r["output_tokens"] == 6 and r["ttft"]["count"] == 2


def test_greedy_comparison_counts_identical_prompts_and_first_divergence():
    r = compare_greedy([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 4, 9], [1, 2, 0, 4], [5, 0, 7, 8]], 4)
    assert r["identical"] == 1 and r["first_divergence"] == [2, 1] and r["median_first_divergence"] == 1.5
    assert compare_greedy([[1, 2]], [[1]], 2)["first_divergence"] == [1]  # a short answer diverges where it ends
    with pytest.raises(ValueError, match="2 reference sequences but 1"):
        compare_greedy([[1], [2]], [[1]], 1)


def test_step_intervals_skip_steps_around_a_prefill_or_a_partial_batch():
    events = [(0.0, 3, 4), (0.002, 3, 4), (0.003, 5, 1), (0.004, 3, 4), (0.0065, 3, 4), (0.008, 3, 3)]
    assert step_intervals_ms(events, 3, 4) == pytest.approx([2.0, 2.5])


def test_last_json_line_skips_trailing_text():
    assert last_json_line('{"a": 1}\ntable\n{"ok": false, "errors": 2}\n\n') == {"ok": False, "errors": 2}
    assert last_json_line("no json here\n[1, 2]\n") is None


def test_quick_settings_yield_to_explicit_flags():
    a = argparse.Namespace(quick=True, **{k: None for k in FULL})
    a.concurrency = [1, 4]
    resolve(a)
    assert a.concurrency == [1, 4] and a.load_seconds == QUICK["load_seconds"]
    b = argparse.Namespace(quick=False, **{k: None for k in FULL})
    resolve(b)
    assert b.concurrency == [1, 8, 32, 64] and b.anchor_batches == [1, 16, 64]
    c = argparse.Namespace(quick=False, **{k: None for k in FULL})
    c.anchor_lengths = [8, 72]
    with pytest.raises(SystemExit, match="the longer first"):
        resolve(c)



def test_report_merges_a_phase_run_with_its_own_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main_state, anchor_state = tmp_path / "main.json", tmp_path / "anchor.json"
    base = met_state()
    anchor = base.pop("anchor")
    main_state.write_text(json.dumps(base))
    anchor_state.write_text(json.dumps({"env": base["env"], "anchor": anchor, "commands": {"anchor": "python -m x"}}))
    from bench import generate_bench

    generate_bench.main(["--phase", "report", "--state", str(main_state), "--merge", str(anchor_state),
                         "--out-dir", str(tmp_path / "out")])
    merged = json.loads(main_state.read_text())
    assert merged["anchor"] == anchor and merged["commands"]["anchor"] == "python -m x"


def test_perf_analyzer_never_reads_an_earlier_runs_export(tmp_path, monkeypatch):
    """perf_analyzer refuses an existing export path and exits; the stale file must not become this run's figures."""
    import stat
    from types import SimpleNamespace

    from bench import generate_bench as gb

    monkeypatch.setattr(gb, "WORK", tmp_path)
    stale = tmp_path / "perf_export_c64.json"
    stale.write_text('{"experiments": []}')
    binary = tmp_path / "perf_analyzer"  # exits 0 without writing, as when it refuses the path
    binary.write_text("#!/bin/sh\necho 'Error: Path must not already exist.'\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    out = gb.run_perf_analyzer(str(binary), SimpleNamespace(grpc_url="127.0.0.1:1"),
                               SimpleNamespace(perf_interval_ms=10), 64, 1000)
    assert not stale.exists() and "error" in out and "exit 0" in out["error"]


def test_a_variant_sets_its_parameters_in_a_copy_of_the_config_and_nothing_else_changes():
    from bench.generate_bench import parse_variant, with_parameters

    config = ('parameters: [\n  { key: "send_threads", value: { string_value: "0" } },\n'
              '  { key: "stream_interval", value: { string_value: "1" } }\n]\n')
    changed = with_parameters(config, parse_variant("stream_interval=8,send_threads=4"))
    assert changed == config.replace('string_value: "1"', 'string_value: "8"').replace(
        'string_value: "0"', 'string_value: "4"')
    with pytest.raises(RuntimeError, match="0 stream_interval parameters"):
        with_parameters(config.replace("stream_interval", "other"), {"stream_interval": 8})
    with pytest.raises(argparse.ArgumentTypeError, match="'max_queue=4'.*NAME one of"):
        parse_variant("stream_interval=2,max_queue=4")
    with pytest.raises(argparse.ArgumentTypeError, match="'send_threads=x'"):
        parse_variant("send_threads=x")



def test_a_variant_can_turn_the_graphs_greedy_choice_off_in_the_builds_config(tmp_path):
    """`--stream-variant graph_greedy=0` is graph_greedy's A/B: the build's config.pbtxt declares it once."""
    from bench.generate_bench import parse_variant, with_parameters
    from llmprofiles.generation.build import write_triton_config

    write_triton_config(tmp_path, torch.device("cuda"), 8)
    config = (tmp_path / "config.pbtxt").read_text()
    assert 'key: "graph_greedy", value: { string_value: "1" }' in config
    off = with_parameters(config, parse_variant("graph_greedy=0"))
    assert off == config.replace('key: "graph_greedy", value: { string_value: "1" }',
                                 'key: "graph_greedy", value: { string_value: "0" }')


def test_report_puts_the_stream_variants_beside_the_triton_phases_row():
    state = met_state()
    state["stream"] = {"concurrency": 64, "variants": {
        "stream_interval=4": client(30.0, 1.1, 6.0, 9_000.0),
        "send_threads=4": {**client(30.0, 1.0, 5.0, 0.0), "ttft": None, "error": "no figures"}}}
    md = report(state)
    section = md.split("## How responses are sent: an A/B at concurrency 64")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| the build's config.pbtxt", "| stream_interval=4"]
    assert "9,000" in rows[1] and "stream phase" in rows[1] and "triton phase" in rows[0]
    assert "- send_threads=4: no figures" in section
    # The first runs of the phase kept their results under "intervals".
    state["stream"] = {"concurrency": 64, "intervals": {"8": client(30.0, 1.0, 5.0, 6_000.0)}}
    assert "| stream_interval=8 | 6,000 |" in report(state)


def test_report_gives_each_variants_other_concurrency_in_its_own_table():
    state = met_state()
    state["stream"] = {"concurrency": 64, "variants": {
        "decode_steps=1": {**client(30.0, 1.1, 6.0, 16_000.0), "also": {"1": client(5.0, 1.4, 2.0, 700.0)}},
        "decode_steps=4": {**client(31.0, 0.6, 4.0, 24_000.0), "also": {"1": client(5.1, 0.9, 3.0, 1_050.0)}}}}
    section = report(state).split("The same servers at concurrency 1")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[:2] for r in rows] == [["| decode_steps=1", "700"], ["| decode_steps=4", "1,050"]]
    assert "The same servers at concurrency" not in report(met_state())


def test_report_breaks_the_engines_memory_down_by_stage():
    state = met_state()
    mib = 2**20
    state["engine"]["memory"]["stages"] = {
        "after_load": {"allocated_bytes": 5000 * mib, "reserved_bytes": 5100 * mib},
        "after_warm_up": {"allocated_bytes": 5400 * mib, "reserved_bytes": 5800 * mib}}
    md = report(state)
    assert "| after load | 5,000 | 5,100 | - |" in md and "| after warm up | 5,400 | 5,800 | - |" in md
    assert "By stage" not in report(met_state())


def test_report_gives_the_host_gap_of_one_stream_beside_the_full_batch():
    state = met_state()
    state["engine"]["host_gap_b1"] = {**state["engine"]["host_gap"], "concurrency": 1,
                                      "step_wall_ms": summary(2.9, 3.1), "gpu_step_p50_ms": 1.82,
                                      "host_gap_ms": 1.08}
    md = report(state)
    assert ("The same with one stream: wall per step p50 2.900 ms against 1.820 ms for the step alone: "
            "the device waits 1.080 ms per step for the host.") in md
    assert "The same with one stream" not in report(met_state())


def test_report_puts_the_decode_attention_forms_side_by_side():
    state = met_state()
    state["engine"]["decode"]["1"]["attention"] = "kernel"
    state["engine"]["attention_ab"] = {"matmuls": {"1": decode(1, 1.9), "64": decode(64, 2.8)},
                                       "kernel": {"1": decode(1, 1.5), "64": decode(64, 2.1)}}
    md = report(state)
    assert "attention by the kernel that reads each row's context in place" in md
    assert "| 1 | 1.900 / 1.710 | 1.500 / 1.350 |" in md and "| 64 | 2.800 / 2.520 | 2.100 / 1.890 |" in md
    assert "Decode attention side by side" not in report(met_state())
    state["engine"]["decode"]["1"]["whole_step"] = True
    state["engine"]["attention_ab"] = {"matmuls": {"1": decode(1, 1.9)}, "kernel_layers": {"1": decode(1, 1.6)},
                                       "whole": {"1": decode(1, 1.3)}}
    md = report(state)
    assert "the kernel that reads each row's context in place, the step compiled whole" in md
    assert "| batch | batched matmuls, by layer | kernel, by layer | kernel, compiled whole (served) |" in md
    assert "| 1 | 1.900 / 1.710 | 1.600 / 1.440 | 1.300 / 1.170 |" in md


def test_the_scheduler_split_is_per_decode_step_and_the_report_shows_it():
    from bench.generate_bench import scheduler_split

    before = {"iteration": 1.0, "launch": 0.1, "wait": 0.2, "emit": 0.3, "prefill": 0.0, "decode_steps": 10,
              "output_tokens": 100}
    after = {"iteration": 1.7, "launch": 0.2, "wait": 0.4, "emit": 0.5, "prefill": 0.1, "decode_steps": 110,
             "output_tokens": 6_500}
    split = scheduler_split(before, after)
    assert split["decode_steps"] == 100 and split["rows_per_step"] == 64.0
    per = split["ms_per_step"]
    assert per == pytest.approx({"iteration": 7.0, "launch": 1.0, "wait": 2.0, "emit": 2.0, "prefill": 1.0,
                                 "host": 1.0})
    assert scheduler_split(before, before) is None  # no decode step between the two: nothing to divide
    state = met_state()
    state["triton"]["client"]["64"]["scheduler"] = split
    md = report(state)
    assert "| 64 | 64.0 | 7.000 | 1.000 | 2.000 | 2.000 | 1.000 | 1.000 |" in md
    assert "scheduler thread" not in report(met_state())
    # Since the launch is split in three and the responses are counted:
    before |= {"launch": 0, "inputs": 0.05, "step": 0.03, "sample": 0.02, "responses": 500}
    after |= {"launch": 0, "inputs": 0.15, "step": 0.13, "sample": 0.12, "responses": 1_500, "iteration": 1.9}
    del before["launch"], after["launch"]
    split = scheduler_split(before, after)
    assert split["responses_per_step"] == 10.0
    state["triton"]["client"]["64"]["scheduler"] = split
    md = report(state)
    assert "| conc | rows per step | responses per step | ms per response | iteration | inputs | step | sample |" in md
    assert "| 64 | 64.0 | 10.0 | 0.200 | 9.000 | 1.000 | 1.000 | 1.000 | 2.000 | 2.000 | 1.000 | 1.000 |" in md


def test_a_second_fresh_build_gives_the_spread_and_the_targets_take_the_median():
    state = met_state()
    other = json.loads(json.dumps(state["engine"]))
    other["decode"]["1"]["call_ms"]["p50_ms"] = state["engine"]["decode"]["1"]["call_ms"]["p50_ms"] + 0.2
    state["other_builds"] = [other]
    one = state["engine"]["decode"]["1"]["call_ms"]["p50_ms"]
    md = report(state)
    assert f"engine decode step at batch 1 <= 1.2 ms (p50; median of 2 fresh builds) | {one + 0.1:.3f} ms " \
           f"({one:.3f} and {one + 0.2:.3f})" in md
    assert f"| 1 | {one:.3f} | {one + 0.2:.3f} | {one + 0.1:.3f} | {0.2 / one * 100:.1f}% |" in md
    assert "fresh builds" not in report(met_state())


def test_the_in_process_scheduler_split_sits_under_the_servers():
    from bench.generate_bench import scheduler_split

    parts = {"iteration": 0.0, "inputs": 0.0, "step": 0.0, "sample": 0.0, "wait": 0.0, "emit": 0.0, "prefill": 0.0}
    before = parts | {"decode_steps": 0, "output_tokens": 0, "responses": 0}
    after = {k: 0.1 for k in parts} | {"iteration": 0.9, "decode_steps": 100, "output_tokens": 6400, "responses": 500}
    state = met_state()
    state["triton"]["client"]["64"]["scheduler"] = scheduler_split(before, after)
    state["engine"]["host_gap"]["scheduler_ms_per_step"] = {k: 0.25 for k in parts} | {"iteration": 2.0}
    md = report(state)
    assert "| 64, in-process | 64 | - | - | 2.000 | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 | 0.500 |" in md
    assert "The in-process rows" in md
    del state["engine"]["host_gap"]["scheduler_ms_per_step"]
    assert "The in-process rows" not in report(state)


def test_the_host_inputs_probe_builds_a_decode_steps_inputs_on_a_bare_engine():
    """bench/probes/generate_host_inputs.py reaches into the engine's input machinery (no weights, no device): it
    broke unseen once when the engine's pinned buffers became a ring per profile."""
    from bench.probes.generate_host_inputs import bare_engine, per_call_us

    e = bare_engine("tiny")
    batch = e.spec.max_batch
    index = e.select(batch, 1)
    x = e._host_inputs(index, [[7]] * batch, list(range(batch)), [3] * batch)
    assert x.tokens[:, 0].tolist() == [7] * batch and x.positions[:, 0].tolist() == [3] * batch
    assert per_call_us(lambda: e._host_inputs(index, [[7]] * batch, list(range(batch)), [3] * batch), n=5) > 0


def test_prefill_timing_takes_a_batch_of_whole_prompts_and_the_report_shows_it_per_prompt():
    """The engine phase times each batched prefill profile (prefill_batches) beside the single ones; the report
    gives its time per prompt, and the build's batch-1 decode tuning."""
    from bench.generate_bench import b1_tuning, sync_fn, time_prefill
    from llmprofiles import models
    from llmprofiles.generation.engine import GenerationEngine
    from llmprofiles.generation.forward import ModelShape, fuse_weights
    from llmprofiles.profiles.sets import generate_spec

    hf = models.load_model("tiny", torch.float32)
    shape = ModelShape.from_config(hf.config.to_dict())
    e = GenerationEngine(shape, fuse_weights(shape, dict(hf.state_dict())),
                         generate_spec("tiny").replace(prefill_batches=(1, 2)), torch.device("cpu"))
    r = time_prefill(e, 16, 2, 1, sync_fn(torch.device("cpu")), np.random.default_rng(0), batch=2)
    assert r["profile"] == "prefill_b2_16" and r["batch"] == 2 and r["call_ms"]["p50_ms"] > 0
    s = met_state()
    s["engine"]["prefill"]["2x128"] = {"batch": 2, "length": 128, "profile": "prefill_b2_128",
                                       "call_ms": summary(8.0, 9.0), "replay_ms": None}
    md = report(s)
    assert "| 2 | 128 | prefill_b2_128 | 8.000 | 9.000 | - | 4.000 |" in md
    assert "batch-1 decode step: one compile, untuned" in md
    tuned = {"runs": 3, "attempts": [{"attempt": 0, "ms": 1.3}, {"attempt": 1, "error": "x"}, {"attempt": 2, "ms": 1.2}],
             "winner": 2, "winner_ms": 1.2, "final_ms": 1.21}
    assert b1_tuning({"decode_b1_tuning": tuned}) == ("best of 3 compiles (replay ms 1.300, failed, 1.200; kept 1.200, "
                                                      "served 1.210)")
    assert b1_tuning({"decode_b1_tuning": {"runs": 3, "error": "boom"}}) == "tuning failed (boom), one compile"


def test_the_report_header_reads_the_builds_fresh_prefill_and_tuning_from_its_manifest(tmp_path):
    """environment() copies what the report's header says of the build from the built manifest (it once left out
    fresh_prefill and decode_b1_tuning, so a tuned fresh build was reported untuned and without the fresh prefill)."""
    from bench.generate_bench import environment
    from llmprofiles.manifest import write_manifest
    from llmprofiles.profiles.sets import generate_spec

    version = tmp_path / "generate" / "1"
    version.mkdir(parents=True)
    spec = generate_spec("tiny")
    tuning = {"runs": 3, "attempts": [{"attempt": 0, "ms": 1.5}, {"attempt": 1, "ms": 1.33}], "winner": 1,
              "winner_ms": 1.33, "final_ms": 1.37}
    write_manifest(version, {"model": "tiny", "dtype": "float16", "device": "cuda", "runtime": "kv-portable",
                             "generation": spec.to_dict(), "profiles": spec.profiles().to_dict(),
                             "fresh_prefill": True, "decode_b1_tuning": tuning}, [])
    s = met_state()
    s["env"] = environment(argparse.Namespace(repo=tmp_path, device="cpu"))
    md = report(s)
    assert "first chunk attending only to itself: True" in md
    assert "batch-1 decode step: best of 3 compiles (replay ms 1.500, 1.330; kept 1.330, served 1.370)" in md


def test_the_report_counts_prefill_steps_by_profile_so_batched_prefill_shows():
    state = met_state()
    for c, steps in (("1", {"decode_b1": 900, "prefill_128": 40}),
                     ("64", {"decode_b64": 3000, "prefill_128": 17, "prefill_b2_128": 12, "prefill_b4_128": 434})):
        state["triton"]["client"][c]["server_steps"] = steps
    md = report(state)
    assert "| conc | requests | prefill_128 | prefill_b2_128 | prefill_b4_128 |" in md
    assert "| 64 | 40 | 17 | 12 | 434 |" in md and "| 1 | 40 | 40 | 0 | 0 |" in md


def test_a_second_builds_triton_run_gives_the_spread_and_the_triton_targets_take_the_median():
    state = met_state()
    other = json.loads(json.dumps(state["triton"]))
    c64 = state["triton"]["client"]["64"]
    tps = c64["output_tokens_per_s"]
    other["client"]["64"]["output_tokens_per_s"] = 20_000.0  # this build alone would miss 25,000
    state["other_tritons"] = [other]
    md = report(state)
    mid = (tps + 20_000) / 2
    row = next(line for line in md.splitlines() if line.startswith("| Triton concurrency 64: >= 25,000"))
    assert "(median of 2 fresh builds)" in row and f"{mid:,.0f} tok/s ({tps:,.0f} and 20,000)" in row
    assert row.endswith("| MET |" if mid >= 25_000 else "| MISSED |")
    assert f"| 64 | tok/s | {tps:,.0f} | 20,000 | {mid:,.0f} | {abs(tps - 20_000) / min(tps, 20_000) * 100:.1f}% |" in md
    assert "The same Triton phase on 2 fresh builds" in md
    assert "The same Triton phase" not in report(met_state())
