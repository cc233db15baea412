"""The pure parts of the load generator: percentiles, phase mix, expected profiles, tables.

Pure logic, no Triton: ``python -m pytest tests/test_loadgen.py -q``.
"""

import numpy as np
import pytest

from llmprofiles.loadgen import (
    PARAMETER, Phase, Reply, Stats, compare_tables, decode_count, default_profile_set, expected_profile,
    format_table, percentiles, phase_of, request_arrays, request_parameters, served_label,
)
from llmprofiles.profiles.selection import SelectionError

# --- percentiles ------------------------------------------------------------------------


def test_percentiles_interpolate_linearly():
    assert percentiles([1, 2, 3, 4, 5], (0, 50, 100)) == [1.0, 3.0, 5.0]
    assert percentiles([10, 20], (50, 90)) == pytest.approx([15.0, 19.0])


def test_percentiles_ignore_input_order():
    assert percentiles([5, 1, 4, 2, 3]) == percentiles([1, 2, 3, 4, 5])


def test_percentiles_of_nothing_are_none():
    assert percentiles([]) == [None, None, None]


# --- the decode/prefill mix -------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 7, 10, 200])
def test_every_prefix_holds_the_decode_fraction(fraction, n):
    decodes = sum(phase_of(i, fraction) == "decode" for i in range(n))
    assert decodes == decode_count(n, fraction)
    assert abs(decodes - n * fraction) <= 0.5


def test_nine_in_ten_decode_gives_180_of_200():
    phases = [phase_of(i, 0.9) for i in range(200)]
    assert phases.count("decode") == 180 and phases.count("prefill") == 20


def test_half_mix_alternates():
    assert [phase_of(i, 0.5) for i in range(4)] == ["decode", "prefill", "decode", "prefill"]


def test_pure_regimes_send_one_phase():
    assert {phase_of(i, 1.0) for i in range(50)} == {"decode"}
    assert {phase_of(i, 0.0) for i in range(50)} == {"prefill"}


# --- expected profile -------------------------------------------------------------------


def test_default_profile_set_follows_the_model_name():
    assert default_profile_set("llm_single") == "single"
    assert default_profile_set("llm") == "multi"


def test_auto_expects_ordered_first_fit():
    assert expected_profile("multi", 1) == 0  # decode is declared first and wins seq == 1
    assert expected_profile("multi", 128) == 1
    assert expected_profile("multi", 512) == 1
    assert expected_profile("single", 1) == 0
    assert expected_profile("single", 128) == 0


@pytest.mark.parametrize("choice", ["prefill", "1", 1])
def test_pinned_profile_is_expected_when_it_holds_the_shapes(choice):
    assert expected_profile("multi", 1, choice) == 1


def test_pinned_profile_that_cannot_hold_the_shapes_raises():
    with pytest.raises(SelectionError, match=r"\[1, 128\].*outside optimization profile 0 \(decode"):
        expected_profile("multi", 128, "decode")


def test_unknown_profile_for_the_set_raises():
    with pytest.raises(SelectionError, match="'decode' is not a known profile"):
        expected_profile("single", 1, "decode")


def test_seq_beyond_every_profile_raises():
    with pytest.raises(SelectionError, match="fit no optimization profile"):
        expected_profile("multi", 513)


# --- requests ---------------------------------------------------------------------------


def test_auto_sends_no_parameter():
    assert request_parameters("auto") is None


def test_index_choices_are_sent_as_ints_and_names_as_strings():
    assert request_parameters("1") == {PARAMETER: 1}
    assert request_parameters("decode") == {PARAMETER: "decode"}


def test_request_arrays_are_reproducible_and_in_vocab():
    ids, pos = request_arrays(seed=0, i=3, seq=128, vocab=32000)
    again, _ = request_arrays(seed=0, i=3, seq=128, vocab=32000)
    other, _ = request_arrays(seed=0, i=4, seq=128, vocab=32000)
    warmup, _ = request_arrays(seed=0, i=3, seq=128, vocab=32000, stream=1)
    assert ids.shape == pos.shape == (1, 128) and ids.dtype == pos.dtype == np.int64
    assert 0 <= ids.min() and ids.max() < 32000
    assert (pos[0] == np.arange(128)).all()
    assert (ids == again).all() and not (ids == other).all() and not (ids == warmup).all()


# --- checking replies -------------------------------------------------------------------


def test_stats_count_mismatches_and_bad_logits():
    stats = Stats(Phase("decode", 1), expected=0, vocab=8)
    stats.check(Reply(1.0, 0, (1, 8)))
    stats.check(Reply(2.0, 1, (1, 8)))  # served by the wrong profile
    stats.check(Reply(3.0, 0, (1, 7)))  # wrong logits width
    stats.error("connection refused")
    s = stats.summary(wall_s=1.0)
    assert (s["count"], s["errors"], s["mismatches"]) == (4, 2, 1)
    assert s["served"] == {"0": 1, "1": 1}
    assert s["p50_ms"] == 1.5 and s["throughput_rps"] == 2.0
    assert s["error_samples"] == ["logits shape [1, 7], expected [1, 8]", "connection refused"]


# --- tables -----------------------------------------------------------------------------


def test_format_table_aligns_columns():
    text = format_table(["regime", "p50_ms"], [["decode (seq=1)", "5.232"], ["prefill (seq=128)", "17.152"]])
    header, rule, *rows = text.splitlines()
    assert len(rule) == len(header) == max(len(r) for r in rows) and set(rule) == {"-"}
    assert header.startswith("regime ") and rows[0].startswith("decode (seq=1) ")
    assert rows[0].endswith(" 5.232") and rows[1].endswith(" 17.152") and len(rows[0]) == len(rows[1])


def test_served_label_names_profiles():
    assert served_label("multi", {"1": 20, "0": 180}) == "0 (decode) x180, 1 (prefill) x20"
    assert served_label("single", {"1": 3}) == "1 (unknown) x3"
    assert served_label("multi", {}) == "-"


def test_compare_table_shows_medians_and_speedup():
    def cell(p50, profile_set, served):
        return {"p50_ms": p50, "profile_set": profile_set, "served": served}

    result = {"requests": 200, "protocol": "grpc", "models": {"single": "llm_single", "multi": "llm"}, "rows": [
        {"label": "decode (seq=1)", "speedup": {"multi": 5.232 / 4.597},
         "cells": {"single": cell(5.232, "single", {"0": 200}), "multi": cell(4.597, "multi", {"0": 200})}},
    ]}
    lines = compare_tables(result).splitlines()
    assert lines[1].split() == ["regime", "single-profile", "multi-profile", "speedup"]
    assert lines[3].split() == ["decode", "(seq=1)", "5.232", "4.597", "1.14x"]
    assert "0 (prefill) x200" in lines[-1] and "0 (decode) x200" in lines[-1]
