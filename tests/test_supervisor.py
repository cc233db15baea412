"""The supervisor's decisions, without a server: backoff, causes, when a probe round means restart."""

from __future__ import annotations

import pytest

from llmprofiles.serving.health import ModelHealth, verdict
from llmprofiles.serving.supervisor import backoff_s, exit_cause, restart_cause


def test_backoff_doubles_and_is_bounded():
    assert [backoff_s(n, 1.0, 30.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("rc, log, expected", [
    (-9, "", "server killed by SIGKILL"),
    (-6, "I... loading\nterminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n",
     "server killed by SIGABRT (what():  std::bad_alloc)"),
    (1, "E1129 main.cc:535] failed to start", "server exited with code 1"),
])
def test_exit_cause_names_the_signal_and_the_fatal_log_line(rc, log, expected):
    assert exit_cause(rc, log) == expected


def test_dead_stub_restarts_at_once():
    runs = {}
    dead = ModelHealth("llm", False, "HTTP 500: Stub process 'llm_0_0' is not healthy.", dead=True)
    assert restart_cause([ModelHealth("llm_single", True), dead], runs, 3) == \
        "model llm: HTTP 500: Stub process 'llm_0_0' is not healthy."


def test_no_answer_restarts_only_after_hung_probes_rounds_in_a_row():
    runs = {}
    hung = [ModelHealth("llm", False, "no answer within 5 s", dead=True)]
    assert restart_cause(hung, runs, 3) is None
    assert restart_cause([ModelHealth("llm", True)], runs, 3) is None  # an answer resets the count
    assert restart_cause(hung, runs, 3) is None
    assert restart_cause(hung, runs, 3) is None
    assert restart_cause(hung, runs, 3) == "model llm: no answer within 5 s (3 probes in a row)"


def test_a_model_that_failed_to_load_is_not_ready_but_no_reason_to_restart():
    failed = [ModelHealth("llm", False, "state UNAVAILABLE: no engine manifest", dead=False)]
    assert restart_cause(failed, {}, 1) is None
    assert verdict(failed, "ready") == failed and verdict(failed, "live") == []
