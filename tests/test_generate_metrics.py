"""The generate model's metrics: the scheduler thread only records; flush() sends one update per metric changed."""

import time
from types import SimpleNamespace

from llmprofiles.serving.generate import MetricsObserver


class FakeMetric:
    def __init__(self, log, name, labels):
        self.log, self.name = log, f"{name}{sorted(labels.items())}"

    def increment(self, n):
        self.log.append((self.name, "increment", n))

    def observe(self, v):
        self.log.append((self.name, "observe", v))

    def set(self, v):
        self.log.append((self.name, "set", v))


def fake_pb_utils(log):
    class Family:
        GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"

        def __init__(self, name, description, kind):
            self.name = name

        def Metric(self, labels, buckets=None):  # noqa: N802 (pb_utils' name)
            return FakeMetric(log, self.name, labels)

    return SimpleNamespace(MetricFamily=Family)


def observer(log, flush_s=3600.0):
    return MetricsObserver(fake_pb_utils(log), "generate", ("decode_b1", "prefill_16"), flush_s=flush_s)


def test_recording_sends_nothing_and_a_flush_sends_one_update_per_metric():
    log = []
    m = observer(log)
    for _ in range(3):
        m.step(0, 1)
    m.first_token(12.0, 7)
    m.tokens([2.0, 4.0, 3.0])
    m.tokens([5.0])
    m.gauges(2, 1)
    m.gauges(3, 0)
    assert log == []
    m.flush()
    steps = "llm_generate_steps_total[('model', 'generate'), ('profile', 'decode_b1')]"
    output = "llm_generate_output_tokens_total[('model', 'generate')]"
    assert (steps, "increment", 3) in log and (output, "increment", 1 + 3 + 1) in log
    assert [e for e in log if e[1] == "observe"] == [
        ("llm_generate_time_to_first_token_ms[('model', 'generate')]", "observe", 12.0),
        ("llm_generate_inter_token_latency_ms[('model', 'generate')]", "observe", 3.0),
        ("llm_generate_inter_token_latency_ms[('model', 'generate')]", "observe", 5.0)]
    assert [e for e in log if e[1] == "set"] == [("llm_generate_active_sequences[('model', 'generate')]", "set", 3),
                                                 ("llm_generate_queue_size[('model', 'generate')]", "set", 0)]
    log.clear()
    m.gauges(3, 0)  # unchanged: nothing to send
    m.flush()
    assert log == []
    m.close()


def test_the_timer_flushes_what_the_scheduler_recorded():
    log = []
    m = observer(log, flush_s=0.01)
    m.step(1, 16)
    deadline = time.monotonic() + 5
    while not log and time.monotonic() < deadline:
        time.sleep(0.01)
    m.close()
    assert log == [("llm_generate_steps_total[('model', 'generate'), ('profile', 'prefill_16')]", "increment", 1)]


def test_a_flush_that_need_not_wait_returns_while_another_thread_flushes():
    log = []
    m = observer(log)
    m.step(0, 1)
    with m._flushing:  # another sender thread is in the middle of a flush
        m.flush(wait=False)
        assert log == []
    m.flush(wait=False)
    assert len(log) == 1
    m.close()


def test_a_flush_without_gauges_keeps_them_for_the_timer():
    """Before a final response only counters and histograms go: a gauge's set holds the stub's GIL."""
    log = []
    m = observer(log)
    m.step(0, 1)
    m.gauges(2, 1)
    m.flush(gauges=False)
    assert [e[1] for e in log] == ["increment"]
    m.gauges(3, 1)  # a later value replaces the one waiting
    log.clear()
    m.flush()
    assert log == [("llm_generate_active_sequences[('model', 'generate')]", "set", 3),
                   ("llm_generate_queue_size[('model', 'generate')]", "set", 1)]
    m.close()


def test_the_scheduler_time_is_summed_and_sent_by_the_timer_only():
    """Its counters add round trips: not before a final response (flush(gauges=False)), only from the timer."""
    log = []
    m = observer(log)
    m.scheduler_time({"iteration": 0.004, "step": 0.001, "wait": 0.002, "emit": 0.0005, "prefill": 0.0}, 3)
    m.scheduler_time({"iteration": 0.003, "step": 0.001, "wait": 0.001, "emit": 0.0, "prefill": 0.0}, 0)
    m.flush(gauges=False)
    assert log == []
    m.flush()
    part = "llm_generate_scheduler_seconds_total[('model', 'generate'), ('part', '{}')]".format
    sent = {name: n for name, op, n in log if op == "increment"}
    assert sent == {part("iteration"): 0.007, part("step"): 0.002, part("wait"): 0.003, part("emit"): 0.0005,
                    "llm_generate_responses_total[('model', 'generate')]": 3}
    log.clear()
    m.flush()
    assert log == []  # nothing new: nothing sent
    m.close()


def final(name):
    """A final Output whose text names it."""
    from llmprofiles.generation.scheduler import GenerateRequest, Output

    return Output(GenerateRequest([1]), [], name, final=True)


def test_a_final_response_leaves_after_the_metrics_recorded_before_it():
    """Finals: the scheduler thread only queues a final; its thread sends the recorded metrics first, then the
    finals in order, and a send that fails does not keep the others back."""
    import threading

    from llmprofiles.serving.generate import Finals

    log, sent, done = [], [], threading.Event()
    m = observer(log)

    def send(out):
        if out.text == "broken":
            raise RuntimeError("client gone")
        sent.append((out.text, len(log)))  # how many metric updates had gone out when this final left
        if out.text == "last":
            done.set()

    finals = Finals(m, send)
    m.tokens([2.0, 3.0])
    for name in ("a", "broken", "b", "last"):
        finals.put(final(name))
    assert done.wait(5)
    finals.stop()
    assert [o for o, _ in sent] == ["a", "b", "last"]
    assert sent[0][1] >= 2 and any(op == "increment" and n == 2 for _, op, n in log[:sent[0][1]])
    m.close()


def test_stopping_sends_every_queued_final():
    import threading

    from llmprofiles.serving.generate import Finals

    sent, gate = [], threading.Event()
    m = observer([])

    def send(out):
        gate.wait(5)  # the thread cannot take the next final until stop() has been called
        sent.append(out.text)

    finals = Finals(m, send)
    for name in ("x", "y"):
        finals.put(final(name))
    stopping = threading.Thread(target=finals.stop)
    stopping.start()
    time.sleep(0.05)
    gate.set()
    stopping.join(5)
    assert sent == ["x", "y"] and not finals._threads[0].is_alive()
    m.close()


def test_finalize_stages_are_timed_in_turn_and_a_stuck_thread_is_named_with_where_it_waits():
    """stop_in_turn (the generate model's finalize): every stage runs even after one fails, a missing one is skipped,
    each is announced as it starts, and a generate thread still alive afterwards is named with its frames."""
    import threading

    from llmprofiles.serving.generate import stop_in_turn

    release = threading.Event()
    stuck = threading.Thread(target=release.wait, name="generate-stuck", daemon=True)
    ran, said = [], []

    def fail():
        ran.append("fail")
        raise RuntimeError("boom")

    try:
        line = stop_in_turn([("first", lambda: ran.append("first")), ("fails", fail), ("absent", None),
                             ("starts", stuck.start), ("last", lambda: ran.append("last"))], say=said.append)
    finally:
        release.set()
    assert ran == ["first", "fail", "last"]
    assert said == ["finalize: first", "finalize: fails", "finalize: starts", "finalize: last"]
    assert line.startswith("finalize s by stage {'first': 0.0, 'fails': 'failed after")
    assert "RuntimeError: boom" in line and "'absent'" not in line and "'last': 0.0" in line
    assert "threads still alive: generate-stuck in wait (threading.py:" in line
    stuck.join(5)
    assert "threads still alive" not in stop_in_turn([("first", lambda: None)])


def test_finalize_returns_within_its_budget_when_a_stage_hangs_and_names_the_stage_and_where():
    """A stage that never returns (a send the server no longer answers) must not hold the unload past Triton's exit
    timeout: stop_in_turn gives up after its budget, names the stage and the frames it hangs in, and the later
    stages do not run."""
    import threading
    import time

    from llmprofiles.serving.generate import stop_in_turn

    release = threading.Event()
    ran = []
    t0 = time.perf_counter()
    try:
        line = stop_in_turn([("quick", lambda: ran.append("quick")), ("hangs", release.wait),
                             ("after", lambda: ran.append("after"))], budget_s=0.3)
        took = time.perf_counter() - t0
    finally:
        release.set()
    assert took < 2 and ran == ["quick"]
    assert "'hangs': 'still running after 0.3 s: gave up'" in line
    assert "generate-finalize in wait (threading.py:" in line
