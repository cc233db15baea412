"""Request handling (llmprofiles.serving.llm) against a tiny fake engine.

The fake subclasses :class:`llmprofiles.engine.Engine`, so the real shape checks in
``Engine.run`` guard it; its ``_forward`` records every call. Pure logic, no
Triton or GPU: ``python -m pytest tests/test_serving.py -q``.
"""

import json

import pytest
import torch

from llmprofiles.engine import Engine
from llmprofiles.profiles.selection import SelectionError
from llmprofiles.profiles.sets import MULTI, SINGLE
from llmprofiles.serving.llm import BadRequest, RequestHandler, Served, choice_from_parameters, validate

VOCAB = 100


class FakeEngine(Engine):
    """Logits ``[batch, vocab]`` whose row b is ``profile_index * 1000 + last token of row b`` everywhere."""

    def __init__(self, profiles=MULTI, vocab_size=VOCAB):
        super().__init__(profiles, vocab_size, torch.device("cpu"))
        self.calls = []

    def _forward(self, profile_index, input_ids, position_ids):
        self.calls.append((profile_index, input_ids.clone(), position_ids.clone()))
        row = (profile_index * 1000 + input_ids[:, -1]).to(torch.float32)
        return row[:, None].expand(input_ids.shape[0], self.vocab_size).clone()


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def served_log():
    return []


@pytest.fixture
def handler(engine, served_log):
    return RequestHandler(engine, on_served=lambda index, ms: served_log.append((index, ms)))


def ids(*row: int) -> torch.Tensor:
    return torch.tensor([row], dtype=torch.int64)


# --- validate ------------------------------------------------------------------------------


def test_missing_position_ids_default_to_arange_per_row(engine):
    input_ids = ids(5, 6, 7, 8)
    _, position_ids, index = validate(engine, input_ids, None)
    assert position_ids.tolist() == [[0, 1, 2, 3]]
    assert position_ids.dtype == torch.int64
    assert index == 1


def test_given_position_ids_are_kept(engine):
    pos = torch.tensor([[10, 11, 12]])
    _, position_ids, _ = validate(engine, ids(1, 2, 3), pos)
    assert position_ids is pos


def test_decode_request_selects_profile_0(engine):
    assert validate(engine, ids(42), torch.tensor([[17]]))[2] == 0


def test_position_ids_shape_mismatch_raises(engine):
    with pytest.raises(BadRequest) as e:
        validate(engine, ids(1, 2, 3), torch.tensor([[0, 1]]))
    assert str(e.value) == (
        "position_ids shape [1, 2] differs from input_ids shape [1, 3]; they must be equal"
    )


def test_one_dimensional_input_ids_raise(engine):
    with pytest.raises(BadRequest, match=r"input_ids must be 2-D \[batch, seq\], got shape \[3\]"):
        validate(engine, torch.tensor([1, 2, 3]), None)


def test_negative_token_id_raises_naming_value_and_range(engine):
    with pytest.raises(BadRequest) as e:
        validate(engine, ids(3, -1, 4), None)
    assert str(e.value) == f"token id -1 in input_ids is out of range; allowed [0, {VOCAB - 1}]"


def test_token_id_equal_to_vocab_raises(engine):
    with pytest.raises(BadRequest) as e:
        validate(engine, ids(3, VOCAB, 4), None)
    assert str(e.value) == f"token id {VOCAB} in input_ids is out of range; allowed [0, 99]"


def test_token_ids_at_range_edges_pass(engine):
    validate(engine, ids(0, VOCAB - 1), None)


def test_negative_position_id_raises(engine):
    with pytest.raises(BadRequest, match="position id -3 is negative; position_ids must be >= 0"):
        validate(engine, ids(1, 2), torch.tensor([[-3, 0]]))


@pytest.mark.parametrize("seq", [0, 513])
def test_seq_outside_every_profile_is_a_bad_request(engine, seq):
    input_ids = torch.zeros((1, seq), dtype=torch.int64)
    with pytest.raises(BadRequest, match=rf"\[1, {seq}\].*fit no optimization profile"):
        validate(engine, input_ids, None)


def test_batch_2_is_a_bad_request(engine):
    with pytest.raises(BadRequest, match=r"\[2, 1\].*fit no optimization profile"):
        validate(engine, torch.zeros((2, 1), dtype=torch.int64), None)


def test_manual_choice_outside_its_range_is_a_bad_request(engine):
    with pytest.raises(BadRequest, match=r"outside optimization profile 0 \(decode"):
        validate(engine, ids(1, 2), None, "decode")


# --- choice_from_parameters ----------------------------------------------------------------


@pytest.mark.parametrize("parameters", [None, "", "{}", {}, '{"other": 1}'])
def test_absent_parameter_means_auto(parameters):
    assert choice_from_parameters(parameters) == "auto"


@pytest.mark.parametrize("parameters,expected", [
    ('{"optimization_profile": "prefill"}', "prefill"),
    ('{"optimization_profile": 1}', 1),
    ({"optimization_profile": "decode"}, "decode"),
])
def test_parameter_value_is_passed_through(parameters, expected):
    assert choice_from_parameters(parameters) == expected


def test_malformed_json_parameters_raise():
    with pytest.raises(BadRequest) as e:
        choice_from_parameters('{"optimization_profile": ')
    assert str(e.value) == "request parameters are not valid JSON: '{\"optimization_profile\": '"


@pytest.mark.parametrize("parameters", ['"decode"', "[1]", "7", "null"])
def test_json_parameters_that_are_not_an_object_raise(parameters):
    with pytest.raises(BadRequest, match="request parameters must be a JSON object, got"):
        choice_from_parameters(parameters)


# --- RequestHandler -------------------------------------------------------------------------


def test_auto_request_runs_first_fit_profile_and_returns_its_logits(handler, engine, served_log):
    served = handler(ids(7), None, None)
    assert isinstance(served, Served)
    assert served.profile_index == 0
    assert served.logits.shape == (1, VOCAB)
    assert torch.equal(served.logits, torch.full((1, VOCAB), 7.0))
    assert len(engine.calls) == 1
    index, input_ids, position_ids = engine.calls[0]
    assert index == 0 and input_ids.tolist() == [[7]] and position_ids.tolist() == [[0]]
    assert served.latency_ms >= 0


def test_prefill_request_gets_default_positions_in_the_engine(handler, engine):
    served = handler(ids(4, 5, 6), None, "")
    assert served.profile_index == 1
    assert torch.equal(served.logits, torch.full((1, VOCAB), 1006.0))
    assert engine.calls[0][2].tolist() == [[0, 1, 2]]


def test_auto_is_not_sticky_across_requests(handler, engine):
    got = [handler(torch.zeros((1, seq), dtype=torch.int64), None, None).profile_index
           for seq in (256, 1, 256, 1)]
    assert got == [1, 0, 1, 0]
    assert [c[0] for c in engine.calls] == [1, 0, 1, 0]


@pytest.mark.parametrize("parameters", ['{"optimization_profile": "prefill"}', '{"optimization_profile": 1}',
                                        '{"optimization_profile": "1"}', {"optimization_profile": "prefill"}])
def test_manual_choice_overrides_auto(handler, engine, parameters):
    served = handler(ids(9), None, parameters)
    assert served.profile_index == 1
    assert engine.calls[0][0] == 1
    assert torch.equal(served.logits, torch.full((1, VOCAB), 1009.0))


@pytest.mark.parametrize("parameters,message", [
    ('{"optimization_profile": "generate"}', "optimization_profile 'generate' is not a known profile"),
    ('{"optimization_profile": 2}', "optimization_profile index 2 is out of range"),
    ('{"optimization_profile": -1}', "optimization_profile index -1 is out of range"),
    ('{"optimization_profile": true}', "optimization_profile True is malformed"),
    ('{"optimization_profile": 1.5}', "optimization_profile 1.5 is malformed"),
    ({"optimization_profile": "generate"}, "optimization_profile 'generate' is not a known profile"),
    ({"optimization_profile": {"index": 0}}, "optimization_profile {'index': 0} is malformed"),
    ('{"optimization_profile": ', "request parameters are not valid JSON"),
])
def test_bad_optimization_profile_never_reaches_the_engine(handler, engine, served_log, parameters, message):
    with pytest.raises(BadRequest) as e:
        handler(ids(1), None, parameters)
    assert message in str(e.value)
    if "not valid JSON" not in message:
        assert "allowed: 'auto', an index in [0, 1], or one of ['decode', 'prefill']" in str(e.value)
    assert engine.calls == []
    assert served_log == []


@pytest.mark.parametrize("input_ids,position_ids", [
    (ids(1, 2, 3), torch.tensor([[0, 1]])),          # shape mismatch
    (ids(1, VOCAB), None),                           # token id out of range
    (ids(-5), None),                                 # negative token id
    (torch.zeros((1, 513), dtype=torch.int64), None),  # fits no profile
    (torch.zeros((2, 1), dtype=torch.int64), None),    # batch 2 fits no profile
    (ids(1, 2), torch.tensor([[0, -1]])),            # negative position id
])
def test_bad_request_never_reaches_the_engine(handler, engine, served_log, input_ids, position_ids):
    with pytest.raises(BadRequest):
        handler(input_ids, position_ids, None)
    assert engine.calls == []
    assert served_log == []


def test_manual_decode_for_a_prefill_request_never_reaches_the_engine(handler, engine):
    with pytest.raises(BadRequest, match=r"\[1, 2\].*outside optimization profile 0 \(decode"):
        handler(ids(1, 2), None, '{"optimization_profile": "decode"}')
    assert engine.calls == []


def test_on_served_receives_profile_index_and_latency(handler, served_log):
    handler(ids(1), None, None)
    handler(ids(1, 2, 3), None, None)
    handler(ids(1), None, {"optimization_profile": "prefill"})
    assert [index for index, _ in served_log] == [0, 1, 1]
    assert all(isinstance(ms, float) and ms >= 0 for _, ms in served_log)


def test_handler_without_callback_serves(engine):
    assert RequestHandler(engine)(ids(3), None, None).profile_index == 0


def test_single_set_engine_serves_seq_1_with_profile_0():
    engine = FakeEngine(SINGLE)
    served = RequestHandler(engine)(ids(3), None, None)
    assert served.profile_index == 0
    with pytest.raises(BadRequest, match="'decode' is not a known profile"):
        RequestHandler(engine)(ids(3), None, json.dumps({"optimization_profile": "decode"}))


# --- Engine.run guards its profile ----------------------------------------------------------


def test_engine_run_refuses_seq_2_on_decode_profile(engine):
    with pytest.raises(SelectionError) as e:
        engine.run(0, ids(1, 2), torch.tensor([[0, 1]]))
    assert "shapes {'input_ids': (1, 2), 'position_ids': (1, 2)} are outside profile 0 (decode" in str(e.value)
    assert engine.calls == []


def test_engine_run_refuses_seq_513_on_prefill_profile(engine):
    x = torch.zeros((1, 513), dtype=torch.int64)
    with pytest.raises(SelectionError, match=r"outside profile 1 \(prefill: input_ids: min \[1, 1\], max \[1, 512\]"):
        engine.run(1, x, x)
    assert engine.calls == []


def test_engine_run_refuses_position_ids_outside_the_profile(engine):
    with pytest.raises(SelectionError, match="outside profile 0"):
        engine.run(0, ids(1), torch.tensor([[0, 1]]))
    assert engine.calls == []


@pytest.mark.parametrize("index", [-1, 2])
def test_engine_run_refuses_out_of_range_index(engine, index):
    with pytest.raises(SelectionError, match=rf"profile index {index} out of range \[0, 1\]"):
        engine.run(index, ids(1), torch.tensor([[0]]))
    assert engine.calls == []


def test_engine_run_in_range_calls_forward_once_with_that_profile(engine):
    out = engine.run(1, ids(1), torch.tensor([[0]]))
    assert [c[0] for c in engine.calls] == [1]
    assert torch.equal(out, torch.full((1, VOCAB), 1001.0))


def test_base_engine_forward_is_abstract():
    with pytest.raises(NotImplementedError):
        Engine(MULTI, VOCAB, torch.device("cpu")).run(0, ids(1), torch.tensor([[0]]))


def test_warm_requests_cover_every_profile_at_its_opt_as_a_client_sends_them():
    from llmprofiles.serving.llm import RequestHandler, warm_requests

    engine = FakeEngine(MULTI)
    warm = warm_requests(engine)
    assert [i for i, _, _ in warm] == list(range(len(engine.profiles)))
    for i, ids, pos in warm:
        assert tuple(ids.shape) == tuple(engine.profiles.ranges(i)["input_ids"].opt) == tuple(pos.shape)
        assert pos.is_contiguous() and pos._base is None and pos[0].tolist() == list(range(ids.shape[-1]))
        # The explicit choice the model's warm-up sends picks that very profile, checks and all.
        assert RequestHandler(engine)(ids, pos, {"optimization_profile": i}).profile_index == i
