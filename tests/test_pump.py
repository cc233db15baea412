"""The response pump: per-request order, coalescing while a sender is busy, errors apart, nothing lost at stop."""

import random
import threading
import time

import pytest

from llmprofiles.generation.scheduler import GenerateRequest, Output
from llmprofiles.serving.pump import ResponsePump, StreamInterval, coalesce


def token(request, i, final=False, reason=""):
    return Output(request, [i], f"<{i}>", final=final, finish_reason=reason, num_input_tokens=3,
                  num_output_tokens=i + 1)


def test_coalesce_joins_tokens_and_keeps_the_last_counts_and_reason():
    r = GenerateRequest([1, 2, 3])
    (out,) = coalesce([token(r, 0), token(r, 1), token(r, 2, final=True, reason="length")])
    assert (out.ids, out.text, out.final, out.finish_reason, out.num_output_tokens) == (
        [0, 1, 2], "<0><1><2>", True, "length", 3)


def test_coalesce_keeps_an_error_apart_from_the_tokens_before_it():
    r = GenerateRequest([1])
    error = Output(r, [], "", final=True, error="internal engine error: boom")
    merged = coalesce([token(r, 0), token(r, 1), error])
    assert [(m.ids, m.error) for m in merged] == [([0, 1], None), ([], "internal engine error: boom")]


def test_outputs_that_pile_up_behind_a_busy_send_leave_as_one_response():
    r = GenerateRequest([1, 2, 3])
    sent, release, first_taken = [], threading.Event(), threading.Event()

    def send(out):
        sent.append(out)
        first_taken.set()
        release.wait(5)  # the server is slow to take the first response

    pump = ResponsePump(send, threads=1)
    pump.put(token(r, 0))
    assert first_taken.wait(5)
    for i in range(1, 5):
        pump.put(token(r, i, final=i == 4, reason="length" if i == 4 else ""))
    release.set()
    pump.stop()
    assert [o.ids for o in sent] == [[0], [1, 2, 3, 4]]
    assert sent[-1].final and sent[-1].num_output_tokens == 5


def test_many_requests_over_several_threads_arrive_whole_and_in_order():
    requests = [GenerateRequest([i]) for i in range(40)]
    got: dict[int, list] = {id(r): [] for r in requests}
    finals: dict[int, int] = {id(r): 0 for r in requests}
    lock = threading.Lock()

    def send(out):
        time.sleep(random.random() * 1e-4)
        with lock:
            assert finals[id(out.request)] == 0, "a response after the final one"
            got[id(out.request)].extend(out.ids)
            finals[id(out.request)] += out.final

    pump = ResponsePump(send, threads=4)
    for step in range(30):  # as the scheduler does: one token per running request per step
        for r in requests:
            pump.put(token(r, step, final=step == 29, reason="length" if step == 29 else ""))
    pump.stop()
    assert all(ids == list(range(30)) for ids in got.values())
    assert set(finals.values()) == {1}


def test_a_failing_send_does_not_stop_the_thread_serving_other_requests():
    bad, good = GenerateRequest([1]), GenerateRequest([2])
    sent = []

    def send(out):
        if out.request is bad:
            raise RuntimeError("the client is gone")
        sent.append(out.ids)

    pump = ResponsePump(send, threads=1)
    pump.put(token(bad, 0, final=True))
    pump.put(token(good, 7, final=True))
    pump.stop()
    assert sent == [[7]]


def test_zero_threads_is_refused_with_the_value():
    with pytest.raises(ValueError, match="send threads 0"):
        ResponsePump(lambda out: None, threads=0)


def test_stream_interval_sends_the_first_token_alone_then_groups_and_flushes_on_the_final():
    sent = []
    emit = StreamInterval(sent.append, tokens=3).put
    a, b = GenerateRequest([1]), GenerateRequest([2])
    for i in range(5):  # two requests interleaved, as the scheduler emits them step by step
        emit(token(a, i))
        emit(token(b, i))
    assert [(o.request is a, o.ids) for o in sent] == [(True, [0]), (False, [0]), (True, [1, 2, 3]), (False, [1, 2, 3])]
    emit(token(a, 5, final=True, reason="length"))  # a's held-back token leaves with its final
    error = Output(b, [], "", final=True, error="internal engine error: boom")
    emit(error)
    assert [(o.ids, o.final, o.finish_reason) for o in sent[4:5]] == [([4, 5], True, "length")]
    assert [(o.request is b, o.ids, o.error) for o in sent[5:]] == [(True, [4], None), (True, [], error.error)]
    # A request object reused after its final starts over: its first token leaves alone again.
    emit(token(a, 0))
    assert sent[-1].ids == [0] and sent[-1].request is a


def test_stream_interval_of_one_sends_every_token_and_a_bad_interval_is_refused():
    sent = []
    emit = StreamInterval(sent.append, tokens=1).put
    r = GenerateRequest([1])
    for i in range(3):
        emit(token(r, i, final=i == 2))
    assert [o.ids for o in sent] == [[0], [1], [2]]
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="stream interval"):
            StreamInterval(sent.append, tokens=bad)
