"""The generate engine, scheduler, sampler, detokenizer and request checks, without Triton (CPU, fp32)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from llmprofiles import models
from llmprofiles.generation.detokenizer import IncrementalDetokenizer
from llmprofiles.generation.engine import GenerationEngine
from llmprofiles.generation.forward import ModelShape, fuse_weights
from llmprofiles.generation.kvcache import SlotPool, SlotsExhausted
from llmprofiles.generation.sampler import SamplingParams, filter_logits, generator_for, sample
from llmprofiles.generation.scheduler import GenerateRequest, Observer, QueueFull, Scheduler
from llmprofiles.generation.tokenizer import Tokenizer, train_bpe
from llmprofiles.profiles.generation import GenerationSpec, parse_buckets
from llmprofiles.profiles.selection import SelectionError
from llmprofiles.profiles.sets import GENERATE
from llmprofiles.serving.generate import Limits, check_shapes, parse_request, parse_sampling_parameters, shown
from llmprofiles.serving.llm import BadRequest

SPEC = GenerationSpec(slots=3, max_context=96, decode_buckets=(1, 2), prefill_buckets=(8, 16))


@pytest.fixture(scope="module")
def hf():
    return models.load_model("tiny", torch.float32)


@pytest.fixture(scope="module")
def reference(hf):
    """Full recompute: argmax of the last-token logits of the whole sequence (what `llm` serves)."""
    wrapper = models.LastTokenLM(hf)

    def greedy(prompt: list[int], n: int) -> list[int]:
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(n):
                ids = torch.tensor([seq])
                seq.append(int(wrapper(ids, models.default_position_ids(ids)).argmax()))
        return seq[len(prompt):]

    return greedy


def make_engine(hf, spec=SPEC) -> GenerationEngine:
    shape = ModelShape.from_config(hf.config.to_dict())
    weights = {k: v.clone() for k, v in hf.state_dict().items()}
    return GenerationEngine(shape, fuse_weights(shape, weights), spec, "cpu")


@pytest.fixture
def engine(hf):
    return make_engine(hf)


class Recorder(Observer):
    def __init__(self):
        self.steps = []

    def step(self, profile_index, tokens):
        self.steps.append(profile_index)


def run(scheduler: Scheduler, limit: int = 500) -> None:
    for _ in range(limit):
        if not scheduler.run_once():
            return
    raise AssertionError("scheduler did not go idle")


def prompts(*lengths: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(3, 32000, (n,), generator=g).tolist() for n in lengths]


# --- the spec and its profiles ------------------------------------------------------


def test_spec_profiles_are_decode_buckets_then_prefill_buckets():
    ps = SPEC.profiles()
    assert ps.names == ("decode_b1", "decode_b2", "prefill_8", "prefill_16")
    fit = lambda b, s: ps.first_fit({"input_ids": (b, s), "position_ids": (b, s)})  # noqa: E731
    assert [fit(1, 1), fit(2, 1), fit(1, 2), fit(1, 8), fit(1, 9), fit(1, 16)] == [0, 1, 2, 2, 3, 3]
    assert fit(3, 1) is None and fit(1, 17) is None and fit(2, 2) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(decode_buckets=(2, 1)), "strictly increasing"),
    (dict(decode_buckets=(1, 4)), "exceeds slots"),
    (dict(prefill_buckets=(8, 128)), "exceeds max_context"),
    (dict(slots=0), "must be >= 1"),
    (dict(prefill_buckets=()), "non-empty"),
])
def test_bad_spec_raises(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SPEC.replace(**kwargs)


def test_declared_specs_are_valid_and_buckets_parse():
    for spec in GENERATE.values():
        assert spec.profiles().names[0] == "decode_b1"
    assert parse_buckets("1,2,4") == (1, 2, 4)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_buckets("1;2")


def test_slot_pool_hands_out_lowest_first_and_refuses_when_empty():
    pool = SlotPool(2)
    assert (pool.alloc(), pool.alloc()) == (0, 1)
    with pytest.raises(SlotsExhausted):
        pool.alloc()
    pool.release(0)
    assert pool.alloc() == 0
    with pytest.raises(ValueError, match="not in use"):
        pool.release(5)


# --- the engine -----------------------------------------------------------------------


def test_prefill_logits_match_the_full_forward(hf, engine):
    wrapper = models.LastTokenLM(hf)
    for slot, prompt in enumerate(prompts(1, 8, 13)):
        logits, index = engine.prefill(slot, prompt, 0)
        ids = torch.tensor([prompt])
        ref = wrapper(ids, models.default_position_ids(ids))
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
        assert index == engine.select(1, len(prompt))


def test_each_step_goes_to_the_first_fit_profile(engine):
    assert engine.prefill(0, [5] * 5, 0)[1] == 2  # prefill_8, padded from 5
    assert engine.prefill(0, [5] * 9, 5)[1] == 3  # prefill_16
    assert engine.decode([0], [5], [14])[1] == 0  # decode_b1
    assert engine.decode([0, 1], [5, 6], [15, 0])[1] == 1  # decode_b2


def test_steps_outside_every_profile_or_the_pool_are_refused(engine):
    with pytest.raises(SelectionError, match="fit no optimization profile"):
        engine.prefill(0, [5] * 17, 0)
    with pytest.raises(SelectionError, match="exceed the context"):
        engine.prefill(0, [5] * 8, 90)
    with pytest.raises(SelectionError, match="slot 3 is out of range"):
        engine.decode([3], [5], [0])
    with pytest.raises(SelectionError, match="token id 32000"):
        engine.decode([0], [32000], [0])


def test_padding_rows_do_not_touch_live_slots(engine):
    """A batch-1 step in the batch-2 bucket pads a row; that row writes the scratch slot only."""
    engine.prefill(0, [5, 6, 7], 0)
    engine.prefill(1, [8, 9], 0)
    before = engine.forward.k_pool[:, 1].clone()
    engine.decode([0], [11], [3])
    assert torch.equal(engine.forward.k_pool[:, 1], before)


# --- the scheduler --------------------------------------------------------------------


def test_greedy_tokens_equal_full_recompute_alone_and_batched(hf, reference):
    ps = prompts(1, 7, 20, 40)  # 20 and 40 are prefilled in chunks of 16
    expected = [reference(p, 6) for p in ps]
    for batch in (False, True):
        outs = {}
        sched = Scheduler(make_engine(hf), _NullTok(), lambda o: outs.setdefault(id(o.request), []).append(o))
        reqs = [GenerateRequest(p, max_tokens=6) for p in ps]
        for r in reqs:
            sched.submit(r)
            if not batch:
                run(sched)
        run(sched)
        got = [[t for o in outs[id(r)] for t in o.ids] for r in reqs]
        assert got == expected, f"batched={batch}"


def test_requests_join_and_leave_the_running_batch(hf):
    rec = Recorder()
    outs = []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append, observer=rec)
    short, long = GenerateRequest(prompts(4)[0], max_tokens=2), GenerateRequest(prompts(4)[0], max_tokens=8)
    sched.submit(long)
    for _ in range(3):
        sched.run_once()
    sched.submit(short)  # joins while `long` is decoding
    run(sched)
    finals = [o.request for o in outs if o.final]
    assert finals == [short, long]  # the short request did not wait for the long one
    names = sched.engine.profiles.names
    assert "decode_b2" in [names[i] for i in rec.steps]  # they shared decode steps
    assert sched.engine.pool.free == SPEC.slots


def test_prompts_that_arrive_together_are_prefilled_one_per_iteration(hf):
    # Prefilling both before the next decode step kept them in lockstep for good under a closed loop
    # (TTFT p50 up by half on the CPU machine, bench/NOTES.md session 7).
    rec = Recorder()
    outs = []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append, observer=rec)
    sched.submit(GenerateRequest(prompts(4)[0], max_tokens=20))
    sched.run_once()  # prefilled and decoding
    a, b = (GenerateRequest(p, max_tokens=4, stream=True) for p in prompts(5, 6))
    sched.submit(a)
    sched.submit(b)
    names = sched.engine.profiles.names
    rec.steps.clear()
    sched.run_once()
    assert [names[i] for i in rec.steps] == ["prefill_8", "decode_b2"]  # a's prompt, then the running two
    assert outs and all(o.request is a for o in outs) and sched.active == 3  # a streams; b waits
    rec.steps.clear()
    sched.run_once()
    assert [names[i] for i in rec.steps] == ["prefill_8", "decode_b2", "decode_b1"]  # b's prompt, then three
    assert any(o.request is b for o in outs)


def test_the_scheduler_reports_where_its_time_goes(hf):
    """Per iteration that did work: its whole time, and the parts of it (sending, prefill, launch, the wait)."""
    class Times(Observer):
        def __init__(self):
            self.seen = []

        def scheduler_time(self, seconds, responses):
            self.seen.append((seconds, responses))

    def slow_emit(out):
        time.sleep(0.002)

    obs = Times()
    sched = Scheduler(make_engine(hf), _NullTok(), slow_emit, observer=obs)
    sched.submit(GenerateRequest(prompts(5)[0], max_tokens=4, stream=True))
    run(sched)
    # On the CPU a step's tokens are taken right after it: the prefill and the first decode step (tokens 1 and 2),
    # then one decode step per iteration (3, then 4 with the final response).
    assert [responses for _, responses in obs.seen] == [2, 1, 1]
    for t, responses in obs.seen:
        assert set(t) == {"iteration", "inputs", "step", "sample", "wait", "emit", "prefill"}
        assert t["emit"] >= 0.002 * responses
        assert t["step"] > 0 and t["sample"] > 0 and t["inputs"] > 0
        assert sum(v for k, v in t.items() if k != "iteration") <= t["iteration"]
    assert obs.seen[0][0]["prefill"] > 0 and all(t["prefill"] == 0 for t, _ in obs.seen[1:])


def test_streaming_sends_each_token_and_the_final_flag_last(hf):
    outs = []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append)
    sched.submit(GenerateRequest(prompts(5)[0], max_tokens=4, stream=True))
    run(sched)
    assert [len(o.ids) for o in outs] == [1, 1, 1, 1]
    assert [o.final for o in outs] == [False, False, False, True]
    assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 4


def test_end_id_stops_unless_min_tokens_forbids_it(hf, reference):
    p = prompts(6)[0]
    tokens = reference(p, 8)
    end = tokens[2]
    outs = []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append)
    sched.submit(GenerateRequest(p, max_tokens=8, end_id=end))
    run(sched)
    assert outs[-1].finish_reason == "stop" and outs[-1].ids == tokens[:tokens.index(end)]
    outs.clear()
    sched.submit(GenerateRequest(p, max_tokens=8, min_tokens=8, end_id=end))
    run(sched)
    assert outs[-1].finish_reason == "length" and len(outs[-1].ids) == 8 and end not in outs[-1].ids


def test_cancel_frees_the_slot_within_one_step(hf):
    outs = []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append)
    cancelled = {"flag": False}
    r = GenerateRequest(prompts(5)[0], max_tokens=50, stream=True, is_cancelled=lambda: cancelled["flag"])
    other = GenerateRequest(prompts(5)[0], max_tokens=10)
    sched.submit(r)
    sched.submit(other)
    for _ in range(4):
        sched.run_once()
    assert sched.engine.pool.used == 2
    cancelled["flag"] = True
    sched.run_once()
    assert sched.engine.pool.used == 1
    assert outs[-1].request is r and outs[-1].final and outs[-1].finish_reason == "cancelled"
    run(sched)
    assert [o.finish_reason for o in outs if o.request is other] == ["length"]


def test_a_cancelled_waiting_request_leaves_the_queue_and_checks_are_rate_limited(hf):
    outs = []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append, cancel_check_s=3600)
    flag = {"cancelled": False}
    for _ in range(SPEC.slots):
        sched.submit(GenerateRequest([5], max_tokens=40))
    waiting = GenerateRequest([5], max_tokens=4, is_cancelled=lambda: flag["cancelled"])
    sched.submit(waiting)
    sched.run_once()  # the first check happens now: nothing is cancelled yet
    flag["cancelled"] = True
    sched.run_once()
    assert sched.queued == 1  # not asked again inside cancel_check_s
    sched.cancel_check_s = 0.0
    sched.run_once()
    assert sched.queued == 0
    assert [o.finish_reason for o in outs if o.request is waiting] == ["cancelled"]


def test_queue_bound_refuses_at_once(hf):
    sched = Scheduler(make_engine(hf), _NullTok(), lambda o: None, max_queue=1)
    for _ in range(SPEC.slots + 1):  # the slots, then one waiting
        sched.submit(GenerateRequest([5], max_tokens=4))
    with pytest.raises(QueueFull, match=r"all 3 sequence slots are in use and 1 requests are queued \(the bound is 1\)"):
        sched.submit(GenerateRequest([5], max_tokens=4))


def test_same_seed_same_tokens_whatever_the_batch(hf):
    def sampled(seed, with_neighbour):
        outs = []
        sched = Scheduler(make_engine(hf), _NullTok(), outs.append)
        r = GenerateRequest(prompts(5)[0], max_tokens=8, sampling=SamplingParams(temperature=1.0, top_k=50, seed=seed))
        sched.submit(r)
        if with_neighbour:
            sched.submit(GenerateRequest(prompts(9)[0], max_tokens=8,
                                         sampling=SamplingParams(temperature=0.7, seed=99)))
        run(sched)
        return [o.ids for o in outs if o.request is r][0]

    assert sampled(123, False) == sampled(123, True)
    assert sampled(123, False) != sampled(124, False)


def test_exclude_input_false_puts_the_prompt_first(hf):
    outs = []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append)
    p = prompts(4)[0]
    sched.submit(GenerateRequest(p, max_tokens=2, exclude_input=False))
    run(sched)
    assert outs[0].ids[:4] == p and len(outs[0].ids) == 6


# --- sampler and detokenizer ----------------------------------------------------------------


def test_top_k_and_top_p_filter():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [False, False, True, True]
    probs = torch.softmax(logits, -1)  # 0.64, 0.24, 0.09, 0.03
    kept = ~torch.isinf(filter_logits(logits, 0, 0.8))
    assert kept.tolist() == [True, True, False, False] and probs[:2].sum() >= 0.8


def test_greedy_rows_take_argmax_and_banned_tokens_are_never_chosen():
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    greedy = SamplingParams()
    assert sample(logits, [greedy, greedy], [None, None], [None, 1]) == [1, 2]
    hot = SamplingParams(temperature=1.0, seed=1)
    assert sample(logits.clone(), [hot], [generator_for(hot, torch.device("cpu"))], [1]) != [1]


def test_each_banned_token_is_removed_from_its_own_row_only():
    """A banned argmax gives way to its row's runner-up, also for logits that are not contiguous; a banned token
    that is not the argmax changes nothing; a runner-up tied with the banned token is taken."""
    greedy = SamplingParams()
    logits = torch.tensor([[9.0, 0.0, 0.0, 1.0], [8.0, 7.0, 0.0, 0.0], [0.0, 1.0, 6.0, 0.0], [5.0, 4.0, 0.0, 0.0],
                           [0.0, 3.0, 3.0, 0.0], [2.0, 0.0, 1.0, 0.0]]).t().contiguous().t()
    assert not logits.is_contiguous()
    rows = [greedy] * 6
    assert sample(logits, rows, [None] * 6, [0, None, 2, 0, 1, 2]) == [3, 0, 1, 1, 2, 0]
    assert logits[0, 0] == 9.0  # the caller's logits are left alone
    half = logits.half()
    assert sample(half, rows, [None] * 6, [0, None, 2, 0, 1, 2]) == [3, 0, 1, 1, 2, 0]


def test_a_ban_writes_only_the_banned_entries():
    """Every row banning one token is one column fill; else an indexed write of exactly the banned pairs."""
    from llmprofiles.generation.sampler import ban

    base = torch.arange(12.0).view(3, 4)
    for banned, cells in (([2, 2, 2], {(0, 2), (1, 2), (2, 2)}), ([None, 0, 3], {(1, 0), (2, 3)}),
                          ([1, 1, None], {(0, 1), (1, 1)}), ([None] * 3, set())):
        logits = base.clone()
        ban(logits, banned)
        assert {(i, j) for i in range(3) for j in range(4) if logits[i, j] == float("-inf")} == cells
        assert all(logits[i, j] == base[i, j] for i in range(3) for j in range(4) if (i, j) not in cells)


def test_a_sampled_row_never_draws_its_banned_token():
    hot = SamplingParams(temperature=1.0, seed=3)
    logits = torch.tensor([[0.0, 0.0, 0.0], [30.0, 0.0, 0.0]])
    gen = [generator_for(hot, torch.device("cpu")) for _ in range(2)]
    for _ in range(20):
        assert sample(logits, [hot, hot], gen, [None, 0])[1] != 0
    assert logits[1, 0] == 30.0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_bpe(32000, folder, 512)
    return Tokenizer(folder)


def test_trained_tokenizer_has_the_model_vocab_and_every_id_decodes(tokenizer):
    assert tokenizer.vocab_size == 32000
    assert tokenizer.encode("x")[0] == 2  # <bos> first
    for i in (0, 1, 2, 3, 100, 31999):
        assert isinstance(tokenizer.decode([i], skip_special_tokens=False), str)


def test_transformers_loads_the_built_tokenizer_folder(tokenizer, tmp_path_factory):
    """genai-perf's --tokenizer and AutoTokenizer read the folder the build writes."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tok_hf")
    train_bpe(32000, folder, 512)
    hf = AutoTokenizer.from_pretrained(str(folder))
    assert hf("def main():").input_ids == tokenizer.encode("def main():")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (2, 1, 0)


def test_incremental_text_matches_whole_decode_with_multibyte_characters(tokenizer):
    text = "def f(x):\n    return 'héllo wörld 日本語 ✓' + x"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, ids[:1])
    pieces = [detok.add([i]) for i in ids[1:]] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_tokens_fed_then_decoded_together_give_the_text_of_decoding_each(tokenizer):
    """The scheduler feeds each step's token and makes a response's text when it sends (several tokens at once under
    a send budget): the pieces differ, their concatenation does not, and no piece ends mid-character."""
    for text in ["héllo wörld", "日本語 ✓ x", "def f(): pass"]:
        ids = tokenizer.encode(text)
        one, many = IncrementalDetokenizer(tokenizer, ids[:1]), IncrementalDetokenizer(tokenizer, ids[:1])
        each = [one.add([i]) for i in ids[1:]] + [one.flush()]
        pieces = []
        for n, i in enumerate(ids[1:], 1):
            many.feed(i)
            if n % 3 == 0:
                pieces.append(many.text())
        pieces.append(many.text(final=True))
        assert "".join(pieces) == "".join(each) == text[len(tokenizer.decode(ids[:1])):]
        assert not any("\ufffd" in p for p in pieces)


# --- request checks ----------------------------------------------------------------------------

LIMITS = Limits(vocab_size=32000, max_context=64)


def parse(tokenizer, **inputs):
    arrays = {k: (v if isinstance(v, np.ndarray) else np.array([v])) for k, v in inputs.items()}
    return parse_request(arrays, tokenizer, LIMITS)


def test_request_defaults_and_sampling_parameters_as_strings(tokenizer):
    req, flags = parse(tokenizer, text_input=b"hello", sampling_parameters=b'{"temperature": "0.5", "max_tokens": "8", "seed": 3}')
    assert (req.max_tokens, req.sampling.temperature, req.sampling.seed, req.exclude_input) == (8, 0.5, 3, True)
    req, _ = parse(tokenizer, input_ids=np.array([5, 6]), max_tokens=np.array([4], dtype=np.int32),
                   sampling_parameters=b'{"max_tokens": 9}')
    assert req.max_tokens == 4 and req.prompt_ids == [5, 6]  # the tensor input wins


@pytest.mark.parametrize("inputs, match", [
    (dict(), "exactly one of text_input"),
    (dict(text_input=b""), "text_input is empty"),
    (dict(input_ids=np.array([], dtype=np.int64)), "input_ids is empty"),
    (dict(text_input=b"a", input_ids=np.array([5])), "got both"),
    (dict(input_ids=np.array([32000])), r"token id 32000 .* allowed \[0, 31999\]"),
    (dict(input_ids=np.array([-1])), r"token id -1"),
    (dict(input_ids=np.array([5]), max_tokens=0), "max_tokens 0 must be >= 1"),
    (dict(input_ids=np.array([5] * 60), max_tokens=10), r"allowed max_tokens for this prompt: \[1, 4\]"),
    (dict(input_ids=np.array([5] * 64)), "allowed at most 63"),
    (dict(input_ids=np.array([5]), temperature=-0.5), "temperature -0.5 must be >= 0"),
    (dict(input_ids=np.array([5]), top_p=0.0), r"top_p 0.0 must be in \(0, 1\]"),
    (dict(input_ids=np.array([5]), top_p=1.5), r"top_p 1.5"),
    (dict(input_ids=np.array([5]), min_tokens=20, max_tokens=10), "min_tokens 20"),
    (dict(input_ids=np.array([5]), sampling_parameters=b"{not json"), "not valid JSON"),
    (dict(input_ids=np.array([5]), sampling_parameters=b"[1]"), "must be a JSON object"),
    (dict(input_ids=np.array([5]), sampling_parameters=b'{"stop": ["x"]}'), "key 'stop' is not supported"),
    (dict(input_ids=np.array([5]), sampling_parameters=b'{"temperature": "hot"}'), "'hot' is not a valid float"),
    (dict(input_ids=np.array([5]), max_tokens=np.array([1, 2], dtype=np.int32)), "exactly one value"),
])
def test_bad_requests_name_the_value_and_the_rule(tokenizer, inputs, match):
    with pytest.raises(BadRequest, match=match):
        parse(tokenizer, **inputs)


def test_huge_declared_shapes_are_refused_before_reading(tokenizer):
    with pytest.raises(BadRequest, match="allowed at most 63"):
        check_shapes({"input_ids": [1 << 40]}, LIMITS)
    with pytest.raises(BadRequest, match="exactly one value"):
        check_shapes({"max_tokens": [4611686018427387904, 4]}, LIMITS)
    assert len(shown("x" * 10_000)) < 100
    with pytest.raises(BadRequest) as e:
        parse_sampling_parameters(b'{"' + b"k" * 100_000 + b'": 1}')
    assert len(str(e.value)) < 400


class _NullTok:
    """Decoding is not what these scheduler tests check: every id is one character."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(0x41 + i % 26) for i in ids)


def test_a_started_scheduler_asks_about_cancellation_off_its_thread_and_never_after_the_final(hf):
    """is_cancelled() is a round trip to the server: the watcher thread asks, the steps only read its mark."""
    outs, asked, finals = [], [], set()

    def emit(o):
        outs.append(o)
        if o.final:
            finals.add(id(o.request))

    ids = {}

    def asker(name, flag):
        def ask():
            asked.append((threading.current_thread().name, name, ids[name] in finals))
            return flag["cancel"]
        return ask

    sched = Scheduler(make_engine(hf), _NullTok(), emit, cancel_check_s=0.001)
    flags = {"long": {"cancel": False}, "short": {"cancel": False}}
    long = GenerateRequest(prompts(5)[0], max_tokens=400, stream=True, is_cancelled=asker("long", flags["long"]))
    short = GenerateRequest(prompts(5)[0], max_tokens=4, is_cancelled=asker("short", flags["short"]))
    long_id, short_id = ids["long"], ids["short"] = id(long), id(short)
    sched.start()
    try:
        sched.submit(long)
        sched.submit(short)
        deadline = time.monotonic() + 60
        while short_id not in finals and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # the watcher keeps asking about `long`, and must not ask about `short` again
        flags["long"]["cancel"] = True
        while long_id not in finals and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        sched.stop()
    assert [o.finish_reason for o in outs if o.request is long and o.final] == ["cancelled"]
    assert [o.finish_reason for o in outs if o.request is short] == ["length"]
    assert sched.engine.pool.used == 0
    assert asked and {thread for thread, _, _ in asked} == {"generate-cancel-watch"}
    assert not [a for a in asked if a[2]], "asked about a request after its final output"


def reference_inputs(engine, index, rows, slots, starts) -> dict:
    """The step's padded inputs, written out the plain way: what the engine's numpy filling must equal."""
    batch, seq = engine.step_shapes[index]
    scratch, ctx = engine.pool.scratch, engine.spec.max_context
    out = {"tokens": torch.zeros(batch, seq, dtype=torch.int64), "positions": torch.arange(seq).repeat(batch, 1),
           "slots": torch.full((batch,), scratch), "last": torch.zeros(batch, dtype=torch.int64)}
    out["write_slots"] = torch.full((batch, seq), scratch)
    for i, (row, slot, start) in enumerate(zip(rows, slots, starts)):
        out["tokens"][i, :len(row)] = torch.tensor(row)
        out["positions"][i] += start
        out["slots"][i], out["last"][i] = slot, len(row) - 1
        out["write_slots"][i, :len(row)] = slot
    out["write_pos"] = torch.where(out["write_slots"] == scratch, out["positions"].clamp(max=ctx - 1), out["positions"])
    return out


@pytest.mark.parametrize("rows, slots, starts", [
    ([[5]], [1], [0]),                                # decode, bucket 1 full
    ([[7]], [2], [40]),                               # decode of one row: decode_b1
    ([[7], [9]], [2, 0], [40, 95]),                   # decode, bucket 2 full, the last position of the context
    ([list(range(3, 8))], [0], [11]),                 # a prompt chunk of 5 padded to prefill_8
    ([list(range(3, 19))], [1], [80]),                # a chunk of 16: padding writes clamp inside the pool
])
def test_step_inputs_are_the_padded_rows_and_padding_writes_the_scratch_slot(hf, rows, slots, starts):
    engine = make_engine(hf)
    index = engine.select(len(rows), max(len(r) for r in rows))
    engine._host_inputs(index, [[1] * len(r) for r in rows], [2] * len(rows), [3] * len(rows))  # stale values first
    x = engine._host_inputs(index, rows, slots, starts)
    want = reference_inputs(engine, index, rows, slots, starts)
    for name, value in want.items():
        assert torch.equal(getattr(x, name), value), name


def test_a_prompts_first_chunk_attending_only_to_itself_gives_the_pool_path_logits_pool_and_tokens(hf, reference):
    """fresh_prefill: a prompt's first chunk skips reading the pool back (causal attention over its own keys); its
    logits and the keys and values it writes equal the pool path's, and a prompt longer than the largest bucket
    goes on through the pool from its second chunk."""
    def engine(fresh):
        shape = ModelShape.from_config(hf.config.to_dict())
        return GenerationEngine(shape, fuse_weights(shape, {k: v.clone() for k, v in hf.state_dict().items()}), SPEC,
                                "cpu", fresh_prefill=fresh)

    fresh, pooled = engine(True), engine(False)
    lengths = []
    real = fresh.forward.forward
    fresh.forward.forward = lambda *a: (lengths.append(a[-1]), real(*a))[1]
    for slot, (p, start) in enumerate([(prompts(5)[0], 0), (prompts(16)[0], 0), (prompts(7)[0], 16)]):
        if start:  # a later chunk of the prompt in slot 1: through the pool, after the fresh first one
            slot = 1
        got, want = fresh.prefill(slot, p, start)[0], pooled.prefill(slot, p, start)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert lengths == [0, 0, 23]  # the third, from position 16, read the pool (its 23 positions)
    for a, b in ((fresh.forward.k_pool, pooled.forward.k_pool), (fresh.forward.v_pool, pooled.forward.v_pool)):
        torch.testing.assert_close(a[:, :2, :23], b[:, :2, :23], rtol=1e-5, atol=1e-5)
    outs = []
    sched = Scheduler(fresh, _NullTok(), outs.append)
    p = prompts(30)[0]
    sched.submit(GenerateRequest(p, max_tokens=6, min_tokens=6))
    run(sched)
    assert [t for o in outs for t in o.ids] == reference(p, 6)


BATCHED = GenerationSpec(slots=4, max_context=96, decode_buckets=(1, 2), prefill_buckets=(8, 16), prefill_batches=(1, 2, 4))


def test_batched_prefill_profiles_come_after_the_single_ones_and_fit_their_batches():
    ps = BATCHED.profiles()
    assert ps.names == ("decode_b1", "decode_b2", "prefill_8", "prefill_16", "prefill_b2_8", "prefill_b2_16",
                        "prefill_b4_8", "prefill_b4_16")
    fit = lambda b, s: ps.names[ps.first_fit({"input_ids": (b, s), "position_ids": (b, s)})]  # noqa: E731
    assert [fit(1, 5), fit(2, 5), fit(2, 9), fit(3, 8), fit(4, 16), fit(2, 1)] == [
        "prefill_8", "prefill_b2_8", "prefill_b2_16", "prefill_b4_8", "prefill_b4_16", "decode_b2"]
    assert ps.first_fit({"input_ids": (5, 8), "position_ids": (5, 8)}) is None
    assert GenerationSpec.from_dict(BATCHED.to_dict()) == BATCHED
    assert GenerationSpec.from_dict({k: v for k, v in SPEC.to_dict().items() if k != "prefill_batches"}) == SPEC
    with pytest.raises(ValueError, match="must start with 1"):
        BATCHED.replace(prefill_batches=(2, 4))
    with pytest.raises(ValueError, match=r"prefill_batches \[1, 8\]: largest bucket 8 exceeds slots = 4"):
        BATCHED.replace(prefill_batches=(1, 8))


@pytest.mark.parametrize("fresh", [False, True])
def test_prompts_prefilled_in_one_step_give_each_its_own_logits_pool_and_next_step(hf, fresh):
    """Three whole prompts of one length bucket in one step (padded to a batch of 4): each row's logits, the keys and
    values written into its slot and the decode step after equal those of the prompts prefilled one at a time."""
    shape = ModelShape.from_config(hf.config.to_dict())
    together, alone = (GenerationEngine(shape, fuse_weights(shape, {k: v.clone() for k, v in hf.state_dict().items()}),
                                        BATCHED, "cpu", fresh_prefill=fresh) for _ in range(2))
    ps = prompts(5, 8, 3)
    logits, index = together.prefill_many([0, 1, 2], ps)
    assert together.profiles.names[index] == "prefill_b4_8" and logits.shape[0] == 3
    for slot, p in enumerate(ps):
        torch.testing.assert_close(logits[slot], alone.prefill(slot, p, 0)[0][0], rtol=1e-4, atol=1e-4)
    for a, b in ((together.forward.k_pool, alone.forward.k_pool), (together.forward.v_pool, alone.forward.v_pool)):
        for slot, p in enumerate(ps):
            torch.testing.assert_close(a[:, slot, :len(p)], b[:, slot, :len(p)], rtol=1e-5, atol=1e-5)
    assert not together.forward.k_pool[:, 3].any()  # the free slot: the padding row wrote the scratch slot only
    step = [int(t) for t in logits.argmax(-1)]
    positions = [len(p) for p in ps]
    torch.testing.assert_close(together.decode([0, 1, 2], step, positions)[0], alone.decode([0, 1, 2], step, positions)[0],
                               rtol=1e-4, atol=1e-4)


def _compiled_fresh(hf, backend):
    """A BATCHED engine whose fresh prefill is compiled (``backend``) and every other step eager; its compile counter."""
    from torch._dynamo.testing import CompileCounterWithBackend

    shape = ModelShape.from_config(hf.config.to_dict())
    engine = GenerationEngine(shape, fuse_weights(shape, {k: v.clone() for k, v in hf.state_dict().items()}), BATCHED,
                              "cpu", compile=False, fresh_prefill=True)
    counter = CompileCounterWithBackend(backend)
    engine.forward.compiled = True
    engine.forward.prefill_fresh = torch.compile(engine.forward.fresh_prefill, fullgraph=True, dynamic=True,
                                                 backend=counter)
    return engine, counter


def test_the_fresh_prefill_compiles_once_for_one_prompt_and_for_batched_prompts(hf):
    """A compile made at batch 1 serves the batched prefill profiles too (an unbacked batch: a backed size of 1 is
    specialised, and the whole step compiled again for 2 or more), with the eager step's logits at every batch."""
    torch._dynamo.reset()
    compiled, counter = _compiled_fresh(hf, "inductor")
    eager = make_engine(hf, BATCHED)
    eager.forward.fresh = True
    compiles = []  # the backend's calls after each step (one compile may call it more than once)
    for slots, ps in (([0], prompts(5)), ([0], prompts(13)), ([1, 2], prompts(6, 8)), ([0, 1, 2], prompts(3, 16, 9))):
        got, index = compiled.prefill_many(slots, ps)
        torch.testing.assert_close(got, eager.prefill_many(slots, ps)[0], rtol=1e-4, atol=1e-4)
        compiles.append(counter.frame_count)
    assert compiles[0] > 0 and compiles == compiles[:1] * 4 and compiled.forward.any_batch_fresh
    from llmprofiles.generation.engine import COMPILE_STAGES, compile_seconds

    spent = compile_seconds()  # what the server's start-up log reports, by stage
    assert set(spent) == set(COMPILE_STAGES) and spent["compile"] > 0
    assert all(not hasattr(t, "_dynamo_unbacked_indices") for ring in compiled.host for x in ring
               for t in (x.tokens, x.positions, x.write_slots, x.write_pos, x.last))  # the marks are on views only


def test_the_fresh_prefill_is_traced_once_when_python_floats_are_constants(hf):
    """compile_dynamic: with dynamic shapes Dynamo made the attention scale a symbol, then threw the whole trace away
    and traced again with it fixed (two AOT compiles for one step on torch 2.13, CPU: a plain
    ``torch.compile(dynamic=True)`` here counts 2). With the floats as constants it traces once."""
    from torch._dynamo.utils import counters

    from llmprofiles.generation.forward import compile_dynamic

    torch._dynamo.reset()
    counters.clear()
    engine, _ = _compiled_fresh(hf, "eager")
    f = engine.forward.fresh_prefill
    engine.forward.prefill_fresh = compile_dynamic(f, backend="aot_eager")
    eager = make_engine(hf, BATCHED)
    eager.forward.fresh = True
    for slots, ps in (([0], prompts(5)), ([1, 2], prompts(6, 8))):
        torch.testing.assert_close(engine.prefill_many(slots, ps)[0], eager.prefill_many(slots, ps)[0],
                                   rtol=1e-4, atol=1e-4)
    assert counters["aot_autograd"]["total"] == 1


def test_a_failed_compile_for_every_batch_falls_back_to_one_per_batch_size(hf, monkeypatch, caplog):
    """If the compile with an unbacked batch fails, the step compiles per batch size instead (batch 1, then 2 or
    more), says so once in the log, and serves the same logits."""
    torch._dynamo.reset()
    compiled, counter = _compiled_fresh(hf, "eager")
    real = compiled.forward.prefill_fresh

    def refuse_unbacked(*inputs):
        if any(hasattr(t, "_dynamo_unbacked_indices") for t in inputs):
            raise RuntimeError("GuardOnDataDependentSymNode: could not guard on u0")
        return real(*inputs)

    compiled.forward.prefill_fresh = refuse_unbacked
    eager = make_engine(hf, BATCHED)
    eager.forward.fresh = True
    compiles = []
    with caplog.at_level("WARNING"):
        for slots, ps in (([0], prompts(5)), ([1, 2], prompts(6, 8)), ([0, 1, 2, 3], prompts(3, 16, 9, 4))):
            torch.testing.assert_close(compiled.prefill_many(slots, ps)[0], eager.prefill_many(slots, ps)[0],
                                       rtol=1e-4, atol=1e-4)
            compiles.append(counter.frame_count)
    assert not compiled.forward.any_batch_fresh
    assert 0 < compiles[0] < compiles[1] == compiles[2]  # batch 1, then once for 2 or more
    assert [r.message for r in caplog.records if "compiles per batch size" in r.message] == [
        "the fresh prefill's one compile for every batch failed, it compiles per batch size: "
        "GuardOnDataDependentSymNode: could not guard on u0"]


@pytest.mark.parametrize("overlap", [False, True])
def test_the_scheduler_prefills_waiting_whole_prompts_of_one_bucket_together(hf, reference, overlap):
    """The first admitted prompt takes the admitted whole prompts of its length bucket with it (up to the largest
    prefill batch); a prompt of another bucket, and every chunk of a long one, go alone. Tokens are each prompt's."""
    rec = Recorder()
    outs = {}
    shape = ModelShape.from_config(hf.config.to_dict())
    engine = GenerationEngine(shape, fuse_weights(shape, {k: v.clone() for k, v in hf.state_dict().items()}), BATCHED, "cpu")
    sched = Scheduler(engine, _NullTok(), lambda o: outs.setdefault(id(o.request), []).append(o), observer=rec,
                      overlap=overlap)
    ps = prompts(5, 12, 6, 7, 40)  # 12 is in the 16 bucket; 40 waits for a slot, then goes in chunks of 16
    reqs = [GenerateRequest(p, max_tokens=5, min_tokens=5) for p in ps]
    for r in reqs:
        sched.submit(r)
    sched.run_once()
    names = engine.profiles.names
    assert names[rec.steps[0]] == "prefill_b4_8"  # 5, 6 and 7 together; 12 waits for the next iteration
    run(sched)
    prefills = [names[i] for i in rec.steps if names[i].startswith("prefill")]
    assert prefills == ["prefill_b4_8", "prefill_16", "prefill_16", "prefill_16", "prefill_8"]  # 40: 16, 16, 8
    assert [[t for o in outs[id(r)] for t in o.ids] for r in reqs] == [reference(p, 5) for p in ps]
    assert engine.pool.free == BATCHED.slots


def test_bad_step_inputs_name_the_value_and_the_range(hf):
    engine = make_engine(hf)
    with pytest.raises(SelectionError, match=r"slot 3 is out of range \[0, 2\]"):
        engine.decode([0, 3], [5, 5], [1, 1])
    with pytest.raises(SelectionError, match=r"positions 96..96 exceed the context \[0, 95\]"):
        engine.decode([0], [5], [96])
    with pytest.raises(SelectionError, match=r"token id 32000 is out of range \[0, 31999\]"):
        engine.decode([0, 1], [5, 32000], [1, 1])


def test_decode_is_overlapped_the_next_step_launches_before_the_host_takes_the_last_one(hf):
    """Step N+1 is launched from step N's tokens on the device (step 0 from the prefill's); step N's tokens
    reach the host after."""
    engine = make_engine(hf)
    calls, outs = [], []
    real_decode = engine.decode_greedy  # greedy rows: the step chooses their tokens

    def decode(slots, tokens, positions, banned):
        calls.append((isinstance(tokens, torch.Tensor), sum(len(o.ids) for o in outs)))
        return real_decode(slots, tokens, positions, banned)

    engine.decode_greedy = decode
    sched = Scheduler(engine, _NullTok(), outs.append, overlap=True)
    p = prompts(6)[0]
    sched.submit(GenerateRequest(p, max_tokens=6, min_tokens=6, stream=True))
    run(sched)
    # Decode k (k = 0..4) is launched when k tokens were taken before, each from the device: the first from the
    # prefill's sampled token, which the host takes only after that launch.
    assert calls == [(True, 0), (True, 1), (True, 2), (True, 3), (True, 4)]
    assert sum(len(o.ids) for o in outs) == 6 and outs[-1].finish_reason == "length"
    assert engine.pool.used == 0


@pytest.mark.parametrize("overlap", [True, False])
def test_a_first_token_taken_a_step_late_still_ends_counts_and_frees_as_before(hf, reference, overlap):
    """The first token comes back with the decode steps' tokens: one token asked, an end token first, a cancel
    before it is taken; each ends right, with its TTFT counted once, and every slot comes back."""
    p = prompts(6)[0]
    first = reference(p, 1)[0]

    class Firsts(Observer):
        def __init__(self):
            self.ttft = []

        def first_token(self, ttft_ms, prompt_tokens):
            self.ttft.append((ttft_ms, prompt_tokens))

    obs, outs = Firsts(), []
    sched = Scheduler(make_engine(hf), _NullTok(), outs.append, observer=obs, overlap=overlap)
    one = GenerateRequest(p, max_tokens=1)
    stop = GenerateRequest(p, max_tokens=8, end_id=first)
    cancelled = GenerateRequest(p, max_tokens=8, stream=True)
    for r in (one, stop, cancelled):
        sched.submit(r)
    sched.run_once()  # admits all three, prefills `one`
    cancelled.is_cancelled = lambda: True
    run(sched)
    final = {id(o.request): o for o in outs if o.final}
    assert final[id(one)].finish_reason == "length" and final[id(one)].ids == [first]
    assert final[id(stop)].finish_reason == "stop" and final[id(stop)].ids == []
    assert final[id(cancelled)].finish_reason == "cancelled"
    assert [n for _, n in obs.ttft] == [6, 6] and all(t > 0 for t, _ in obs.ttft)  # the cancelled one had none
    assert sched.engine.pool.used == 0 and not sched._flights


@pytest.mark.parametrize("overlap", [True, False])
def test_a_sequence_that_stops_mid_batch_drops_its_launched_token_and_the_others_go_on(hf, reference, overlap):
    """The end token is seen one step late: the step already launched for it is dropped, its slot reused."""
    p, q = prompts(6, 9)
    tokens_p, tokens_q = reference(p, 10), reference(q, 10)
    end = tokens_p[3]
    outs = []
    two_slots = GenerationSpec(slots=2, max_context=96, decode_buckets=(1, 2), prefill_buckets=(8, 16))
    sched = Scheduler(make_engine(hf, two_slots), _NullTok(), outs.append, overlap=overlap)
    stopping = GenerateRequest(p, max_tokens=10, end_id=end)
    going = GenerateRequest(q, max_tokens=10, end_id=-1)
    after = GenerateRequest(q, max_tokens=10, end_id=-1)  # takes the freed slot while `going` still runs
    for r in (stopping, going, after):
        sched.submit(r)
    run(sched)
    final = {id(o.request): o for o in outs if o.final}
    assert final[id(stopping)].finish_reason == "stop" and final[id(stopping)].ids == tokens_p[:tokens_p.index(end)]
    assert final[id(going)].ids == tokens_q and final[id(after)].ids == tokens_q
    assert sched.engine.pool.used == 0


def test_overlap_is_on_where_the_device_computes_apart_from_the_host(hf):
    engine = make_engine(hf)
    assert Scheduler(engine, _NullTok(), lambda o: None).overlap is False  # CPU: a launched step has already run
    engine.device = torch.device("cuda")  # what the choice reads; nothing runs here
    assert Scheduler(engine, _NullTok(), lambda o: None).overlap is True


def test_weights_moved_to_the_device_once_each_and_a_tied_lm_head_stays_the_embedding():
    from llmprofiles.generation.engine import weights_to_device

    embed, other = torch.ones(4, 2), torch.zeros(3)
    moved = weights_to_device({"embed": embed, "lm_head": embed, "norm": other}, torch.device("meta"))
    assert all(t.device.type == "meta" for t in moved.values())
    assert moved["lm_head"] is moved["embed"] and moved["norm"] is not moved["embed"]
    assert moved["embed"].shape == (4, 2) and moved["norm"].shape == (3,)


def test_ints_reach_the_device_as_int64_with_their_values():
    from llmprofiles.generation.sampler import device_ints

    t = device_ints([[0, 2], [7, 9]], torch.device("cpu"))
    assert t.dtype == torch.int64 and t.tolist() == [[0, 2], [7, 9]]


def test_a_send_budget_holds_tokens_back_under_load_and_loses_none(hf):
    """Each streamed send costs time (a round trip to the server through Triton). With a send budget per step, the
    streams served least recently go first; the others keep their tokens for a later, larger response."""
    engine = make_engine(hf)
    ps = prompts(5, 7, 6)  # three streams in three slots: each step has three tokens to send

    def serve(budget_s: float):
        outs = []

        def emit(out):
            outs.append((out.request, list(out.ids), out.final))
            if not out.final:
                time.sleep(0.002)  # a streamed send: 2 ms

        sched = Scheduler(engine, _NullTok(), emit, send_budget_s=budget_s)
        reqs = [GenerateRequest(p, max_tokens=12, min_tokens=12, stream=True) for p in ps]
        for r in reqs:
            sched.submit(r)
        run(sched)
        return reqs, outs

    reqs, plain = serve(0.0)
    _, budgeted = serve(0.003)  # two streamed sends fit per step, not four
    def ids(outs, r):
        return [t for q, got, _ in outs if q.prompt_ids == r.prompt_ids for t in got]

    def sizes(outs, r):
        return [len(got) for q, got, final in outs if q.prompt_ids == r.prompt_ids and not final]

    for r in reqs:
        assert ids(budgeted, r) == ids(plain, r) and len(ids(plain, r)) == 12  # the same tokens, none lost
        assert sizes(plain, r)[1:] == [1] * (len(sizes(plain, r)) - 1)  # no budget: a response per token
        assert sizes(budgeted, r)[0] == 1  # the first token always leaves alone, at once
        assert max(sizes(budgeted, r)) == 2 and len(sizes(budgeted, r)) >= 5  # grouped, and served every other step
    assert len(budgeted) < len(plain)


def test_a_response_carrying_several_tokens_carries_their_text_and_every_stream_its_whole_text(hf, tokenizer):
    """Text is made when a response is sent: under a send budget a response carries several steps' tokens and
    their text; each stream's texts join into the decode of its ids, whatever the grouping."""
    engine = make_engine(hf)
    outs = []

    def emit(out):
        outs.append(out)
        if not out.final:
            time.sleep(0.002)

    sched = Scheduler(engine, tokenizer, emit, send_budget_s=0.003)
    reqs = [GenerateRequest(p, max_tokens=12, min_tokens=12, stream=True) for p in prompts(5, 7, 6)]
    for r in reqs:
        sched.submit(r)
    run(sched)
    for r in reqs:
        mine = [o for o in outs if o.request is r]
        ids = [t for o in mine for t in o.ids]
        assert len(ids) == 12 and "".join(o.text for o in mine) == tokenizer.decode(ids)
    assert any(len(o.ids) > 1 and o.text for o in outs if not o.final)


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("steps", [2, 3])
def test_several_decode_steps_per_iteration_give_the_same_tokens_and_responses(hf, overlap, steps):
    """decode_steps > 1 launches that many steps per iteration before the host takes their tokens: every request
    gets the tokens it gets with one step per iteration (seeded sampling: the tiny model's greedy tokens repeat,
    so a step fed a stale token would not show), in order; a row stops at its max_tokens or end token; a stream
    under a send budget never gets an empty response or one after its final; every slot comes back."""
    ps = prompts(5, 7, 6, 9)  # four requests for three slots: one is admitted, and prefilled, mid-iteration
    lengths = [1, 5, 7, 10]

    def serve(decode_steps, end=-1):
        outs, launches = [], []
        engine = make_engine(hf)
        real_decode = engine.decode
        engine.decode = lambda *args: (launches.append(len(args[0])), real_decode(*args))[1]

        def emit(out):
            outs.append((out.request, list(out.ids), out.final, out.finish_reason))
            if not out.final:
                time.sleep(0.001)

        sched = Scheduler(engine, _NullTok(), emit, overlap=overlap, send_budget_s=0.0015, decode_steps=decode_steps)
        reqs = [GenerateRequest(p, max_tokens=n, stream=True, end_id=end if i == 3 else -1,
                                sampling=SamplingParams(temperature=1.0, seed=i))
                for i, (p, n) in enumerate(zip(ps, lengths))]
        for r in reqs:
            sched.submit(r)
        run(sched)
        assert sched.engine.pool.used == 0 and not sched._flights
        return [[(ids, final, reason) for q, ids, final, reason in outs if q is r] for r in reqs], sum(launches)

    one, _ = serve(1)
    tokens = [[t for ids, _, _ in mine for t in ids] for mine in one]
    assert len(set(tokens[3])) > 3  # sampled tokens vary: a stale input token changes what follows
    at = next(i for i, t in enumerate(tokens[3]) if i >= 4 and t not in tokens[3][:i])  # an end token first seen late
    end = tokens[3][at]
    got, launched = serve(steps, end)
    for i, mine in enumerate(got):
        assert [final for _, final, _ in mine] == [False] * (len(mine) - 1) + [True]  # the final is last, once
        assert all(ids for ids, final, _ in mine if not final)  # no empty streamed response
        want = tokens[i][:at] if i == 3 else tokens[i]
        assert [t for ids, _, _ in mine for t in ids] == want and mine[-1][2] == ("stop" if i == 3 else "length"), i
    # Each row launches only the steps it may use (max_tokens - 1 decode steps), and the one that stops on its end
    # token at most 2 x steps more, launched before the end token was seen.
    assert launched <= sum(n - 1 for n in lengths[:3]) + at + 2 * steps


def test_with_several_decode_steps_a_first_token_leaves_once_the_iterations_first_step_is_queued(hf):
    """A prompt's first token is sent after its iteration's first decode step is launched, not after the last:
    TTFT does not grow with decode_steps (it did: 13.1 ms at 64 streams with one step, 43.8 with four)."""
    engine = make_engine(hf)
    calls, outs = [], []
    real_decode = engine.decode_greedy  # greedy rows: the step chooses their tokens

    def decode(slots, tokens, positions, banned):
        calls.append(sum(len(o.ids) for o in outs))
        return real_decode(slots, tokens, positions, banned)

    engine.decode_greedy = decode
    sched = Scheduler(engine, _NullTok(), outs.append, overlap=True, decode_steps=3)
    sched.submit(GenerateRequest(prompts(6)[0], max_tokens=8, min_tokens=8, stream=True))
    run(sched)
    # Tokens sent before each launch: the first token after the first step of its iteration (else 0, 0, 0), and an
    # iteration's three steps are taken after the next iteration's are launched (overlap).
    assert calls == [0, 1, 1, 1, 1, 1, 4]
    assert sum(len(o.ids) for o in outs) == 8 and engine.pool.used == 0


def test_decode_steps_must_be_positive(hf):
    with pytest.raises(ValueError, match="decode_steps 0 must be >= 1"):
        Scheduler(make_engine(hf), _NullTok(), lambda o: None, decode_steps=0)


def test_tuning_the_batch_1_step_is_refused_without_cuda_graphs_and_the_build_goes_on_untuned(hf):
    """generation/tuning.py times captured graphs; where there are none it says so, and the build records why its
    batch-1 step is untuned rather than failing (the GPU side: tests/test_generation_gpu.py)."""
    from llmprofiles.generation.build import tune_b1
    from llmprofiles.generation.tuning import tune_decode_b1

    e = make_engine(hf)
    with pytest.raises(ValueError, match="needs CUDA graphs, the engine is on cpu"):
        tune_decode_b1(e, 2)
    record = tune_b1(e, 2)
    assert record["runs"] == 2 and "needs CUDA graphs" in record["error"] and "winner" not in record


def test_a_greedy_decode_step_chooses_its_tokens_as_sampling_its_logits_would_bans_included(hf):
    """decode_greedy (on CUDA inside the captured graph) gives sample_tensor's choice over decode's logits: the
    argmax, or the next best where a row's banned token (an end id before min_tokens) is the argmax."""
    from llmprofiles.generation.sampler import sample_tensor

    e = make_engine(hf)
    slots, positions, inputs = [0, 1], [0, 0], [5, 9]
    logits, index = e.decode(slots, inputs, positions)
    top = logits.argmax(dim=-1).tolist()
    for banned in ([None, None], [top[0], None], [top[0], top[1]], [3, top[1]]):
        want = sample_tensor(logits.clone(), [SamplingParams()] * 2, [None] * 2, banned).tolist()
        tokens, greedy_index = e.decode_greedy(slots, inputs, positions, banned)
        assert tokens.tolist() == want and greedy_index == index
        if banned[1] is not None:
            assert want[1] != top[1]  # the ban moved the choice
    assert e.decode_greedy(slots, torch.tensor(inputs), positions, [None] * 2)[0].tolist() == top
    with pytest.raises(SelectionError, match=r"banned tokens \[32000\] go with decode steps only, each in \[-1, 31999\]"):
        e.decode_greedy([0], [5], [0], [32000])


@pytest.mark.parametrize("overlap", [True, False])
def test_greedy_rows_get_the_same_tokens_from_the_steps_choice_as_from_sampling_its_logits(hf, overlap):
    """graph_greedy (the default) takes a greedy step's tokens from decode_greedy, and a step with a sampled row from
    sample_tensor; graph_greedy=False samples every step's logits. Same tokens and finishes either way, with the end
    token banned under min_tokens and a request stopped by its end token."""
    ps = prompts(5, 7, 6, 9)

    def serve(graph_greedy):
        e, outs, calls = make_engine(hf), {}, {"greedy": 0, "logits": 0}
        real_greedy, real_decode = e.decode_greedy, e.decode
        e.decode_greedy = lambda *a: (calls.__setitem__("greedy", calls["greedy"] + 1), real_greedy(*a))[1]
        e.decode = lambda *a: (calls.__setitem__("logits", calls["logits"] + 1), real_decode(*a))[1]
        sched = Scheduler(e, _NullTok(), lambda o: outs.setdefault(id(o.request), []).append(o), overlap=overlap,
                          graph_greedy=graph_greedy)
        reqs = [GenerateRequest(ps[0], max_tokens=9, min_tokens=9), GenerateRequest(ps[1], max_tokens=6),
                GenerateRequest(ps[2], max_tokens=8, min_tokens=3, end_id=-1),
                GenerateRequest(ps[3], max_tokens=7, sampling=SamplingParams(temperature=1.0, seed=3))]
        for r in reqs[:3]:
            sched.submit(r)
        run(sched)  # greedy rows alone
        sched.submit(reqs[3])
        sched.submit(GenerateRequest(ps[0], max_tokens=5))
        run(sched)  # a sampled row beside a greedy one
        got = [[(list(o.ids), o.finish_reason) for o in outs[id(r)]] for r in reqs]
        return got, calls, e.pool.used

    on, calls_on, used_on = serve(True)
    off, calls_off, used_off = serve(False)
    assert on == off and used_on == used_off == 0
    assert calls_off["greedy"] == 0 and calls_on["greedy"] > 0 and calls_on["logits"] > 0


@pytest.mark.parametrize("rows,size,persistent", [(1, 1152, True), (1, 4096, True), (1, 8192, False), (4, 1152, False)])
def test_the_batch_1_norms_are_persistent_reductions_up_to_persistent_rows(rows, size, persistent, monkeypatch):
    """fusion.PERSISTENT_ROWS: inductor's choice for a reduction of ``rows`` rows of ``size`` values, as the batch-1
    step's compile makes it. One row up to PERSISTENT_ROWS stays in registers; the rest is inductor's rule, which loops
    over rows past 1,024 (the fall-through answers what inductor would, so this also fails if its rule moves)."""
    from types import SimpleNamespace

    import sympy
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.sizevars import SizeVarAllocator
    from torch._inductor.virtualized import V

    from llmprofiles.runtimes import fusion

    monkeypatch.setattr(fusion, "PERSISTENT_ROWS", 4096)
    features = SimpleNamespace(numel=sympy.Integer(rows), reduction_numel=sympy.Integer(size),
                               get_reduction_hint=lambda: ReductionHint.INNER)
    with V.set_graph_handler(SimpleNamespace(sizevars=SizeVarAllocator())):
        with fusion.persistent_rows():
            assert V.choices.should_use_persistent_reduction(features, False) is persistent
        with fusion.persistent_rows(1024):  # a limit of its own (bench.decode_variants' +rows)
            assert V.choices.should_use_persistent_reduction(features, False) is (size <= 1024)
        assert V.choices.should_use_persistent_reduction(features, False) is (size <= 1024)  # outside: inductor's


def test_persistent_rows_is_in_the_compile_cache_key_of_the_batch_1_step(monkeypatch):
    """A cached batch-1 compile made with one PERSISTENT_ROWS must not serve another: b1_options carries a graph pass
    that changes nothing, whose uuid (part of inductor's cache key) names the setting; off, no pass."""
    from llmprofiles.generation import forward
    from llmprofiles.runtimes import fusion

    assert fusion.rows_cache_key(0) == {}
    monkeypatch.setattr(fusion, "PERSISTENT_ROWS", 0)
    assert "post_grad_custom_post_pass" not in forward.b1_options()
    assert forward.b1_options(pdl=True) == {**forward.WHOLE_B1_OPTIONS, **forward.PDL_OPTIONS}
    monkeypatch.setattr(fusion, "PERSISTENT_ROWS", 4096)
    key = forward.b1_options()["post_grad_custom_post_pass"]
    assert key.uuid() == "llmprofiles-persistent-rows-4096"
    graph = torch.fx.Graph()
    graph.output(graph.placeholder("x"))
    before = str(graph)
    key(graph)
    assert str(graph) == before
