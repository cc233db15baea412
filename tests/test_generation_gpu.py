"""The generate engine on CUDA: every profile a captured graph, same tokens as eager, no compile after warm-up."""

from __future__ import annotations

import pytest
import torch

from llmprofiles import models
from llmprofiles.generation.engine import GenerationEngine, kv_buckets
from llmprofiles.generation.forward import ModelShape, fuse_weights
from llmprofiles.generation.scheduler import GenerateRequest, Scheduler
from llmprofiles.profiles.generation import GenerationSpec

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")]

SPEC = GenerationSpec(slots=8, max_context=320, decode_buckets=(1, 2, 4, 8), prefill_buckets=(16, 64))


@pytest.fixture(scope="module")
def hf():
    return models.load_model("tiny", torch.float32, "cuda")


def engine(hf, **kw) -> GenerationEngine:
    shape = ModelShape.from_config(hf.config.to_dict())
    return GenerationEngine(shape, fuse_weights(shape, {k: v.clone() for k, v in hf.state_dict().items()}), SPEC,
                            torch.device("cuda"), **kw)


@pytest.fixture(scope="module")
def graphed(hf):
    e = engine(hf)
    e.warm_up()
    return e


def greedy(e: GenerationEngine, prompts: list[list[int]], n: int) -> list[list[int]]:
    outs: dict[int, list[int]] = {}
    sched = Scheduler(e, _Tok(), lambda o: outs.setdefault(id(o.request), []).extend(o.ids))
    reqs = [GenerateRequest(p, max_tokens=n, min_tokens=n) for p in prompts]
    for r in reqs:
        sched.submit(r)
    while sched.run_once():
        pass
    return [outs[id(r)] for r in reqs]


PROMPTS = [[5], list(range(10, 30)), list(range(100, 170)), list(range(7, 12))]


def test_every_profile_is_captured_at_warm_up_prefills_per_attention_length_decodes_once(graphed):
    assert graphed.forward.decode_kernel, "on CUDA decode attends with the kernel by default"
    assert graphed.forward.whole_decode, "and a decode step is compiled whole"
    lengths = kv_buckets(SPEC.max_context)
    prefills = {(i, k) for i, (b, s) in enumerate(graphed.step_shapes) for k in lengths if k >= s > 1}
    decodes = {(i, lengths[-1]) for i, (b, s) in enumerate(graphed.step_shapes) if s == 1}  # one graph, any length
    assert set(graphed.graphs) == prefills | decodes and len(decodes) == len(SPEC.decode_buckets)


def test_decode_with_the_attention_kernel_gives_the_batched_matmul_tokens(hf, graphed):
    matmuls = engine(hf)
    matmuls.forward.decode_kernel = False
    matmuls.warm_up()
    assert greedy(graphed, PROMPTS, 12) == greedy(matmuls, PROMPTS, 12)


def test_graphs_give_the_eager_tokens_batched(hf, graphed):
    eager = engine(hf, cuda_graphs=False, compile=False)
    assert greedy(graphed, PROMPTS, 12) == greedy(eager, PROMPTS, 12)


def test_programmatic_dependent_launch_gives_the_eager_tokens(hf):
    """The batch-1 step compiled with PDL (where the build's probe passes): each kernel may start before the one
    before it ends, so a missing wait would read stale values. Batch 1 alone, one prompt at a time."""
    from llmprofiles.runtimes.compiled import pdl_works

    if torch.cuda.get_device_capability()[0] < 9 or not pdl_works(torch.device("cuda")):
        pytest.skip("programmatic dependent launch does not work here (the build would not use it)")
    pdl, eager = engine(hf, pdl=True), engine(hf, cuda_graphs=False, compile=False)
    pdl.warm_up()
    for prompt in PROMPTS:
        assert greedy(pdl, [prompt], 12) == greedy(eager, [prompt], 12)


def test_a_prompts_first_chunk_compiled_whole_gives_the_eager_tokens_and_is_captured_at_warm_up(hf):
    """fresh_prefill (make build GEN_FRESH_PREFILL=1): each prefill bucket has a graph of a first chunk that attends
    only to itself (attention length 0), captured at warm-up; a 70-token prompt goes on through the pool from its
    second chunk. The tokens equal the eager pool path's."""
    fresh = engine(hf, fresh_prefill=True)
    fresh.warm_up()
    assert {(i, 0) for i, (b, s) in enumerate(fresh.step_shapes) if s > 1} <= set(fresh.graphs)
    graphs = len(fresh.graphs)
    eager = engine(hf, cuda_graphs=False, compile=False)
    assert greedy(fresh, PROMPTS, 12) == greedy(eager, PROMPTS, 12)
    assert len(fresh.graphs) == graphs  # nothing captured at request time


def test_several_whole_prompts_in_one_captured_prefill_step_give_the_eager_tokens(hf):
    """Batched prefill profiles (on by default on CUDA) with the fresh prefill, compiled once for every batch: prompts
    of one length bucket prefilled together in one graph (attention length 0, the only one their profiles capture at
    warm-up) give each its eager tokens."""
    spec = SPEC.replace(prefill_batches=(1, 2, 4))
    shape = ModelShape.from_config(hf.config.to_dict())
    weights = lambda: fuse_weights(shape, {k: v.clone() for k, v in hf.state_dict().items()})
    batched = GenerationEngine(shape, weights(), spec, torch.device("cuda"), fresh_prefill=True)
    batched.warm_up()
    names = batched.profiles.names
    several = {i for i, name in enumerate(names) if name.startswith("prefill_b")}
    assert {k for k in batched.graphs if k[0] in several} == {(i, 0) for i in several}  # whole prompts only
    assert batched.forward.any_batch_fresh  # one compile of the fresh prefill served every batch (no fallback)
    eager = GenerationEngine(shape, weights(), spec, torch.device("cuda"), cuda_graphs=False, compile=False)
    prompts = [list(range(10, 30)), list(range(40, 55)), list(range(60, 90)), [5, 6, 7]]  # 3 in the 64 bucket
    graphs, seen = len(batched.graphs), []
    real = batched.prefill_many
    batched.prefill_many = lambda slots, ps: (seen.append(len(ps)), real(slots, ps))[1]
    assert greedy(batched, prompts, 8) == greedy(eager, prompts, 8)
    assert seen and len(batched.graphs) == graphs  # prefilled together, nothing captured at request time


def test_the_batch_1_decode_step_keeps_the_fastest_of_its_compiles_and_the_warm_up_reuses_it(hf, tmp_path,
                                                                                              monkeypatch):
    """The build's tuning (generation/tuning.py): two compiles from empty caches, each checked and timed; the kept
    one's artifacts make the warm-up's compile of the step a cache hit, and its tokens are still the eager ones."""
    from torch._dynamo.utils import counters

    from llmprofiles.generation.tuning import (
        b1_graph_key,
        keep,
        served_b1_ms,
        tune_decode_b1,
    )

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    tuned = engine(hf)
    record, artifacts, configs = tune_decode_b1(tuned, 2)
    times = [a["ms"] for a in record["attempts"]]
    assert len(times) == 2 and record["winner_ms"] == min(times) and record["kernel_configs"] > 0
    assert all(a["max_abs_diff"] < 0.01 for a in record["attempts"]) and b1_graph_key(tuned) not in tuned.graphs
    keep(artifacts, configs)
    counters.clear()
    tuned.warm_up()
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1, dict(counters["inductor"])
    assert served_b1_ms(tuned) < 1.5 * record["winner_ms"]
    eager = engine(hf, cuda_graphs=False, compile=False)
    for prompt in PROMPTS[:2]:
        assert greedy(tuned, [prompt], 8) == greedy(eager, [prompt], 8)


def test_a_greedy_step_chooses_inside_its_graph_as_sampling_its_logits_would(graphed):
    """decode_greedy's tokens come from the captured graph (greedy_banned after the step): sample_tensor's choice
    over decode's logits, a banned argmax giving way to the next best, at every decode bucket."""
    from llmprofiles.generation.sampler import SamplingParams, sample_tensor

    for b in SPEC.decode_buckets:
        slots, inputs, positions = list(range(b)), [5 + 3 * i for i in range(b)], [0] * b
        logits, index = graphed.decode(slots, inputs, positions)
        top = logits.argmax(dim=-1).tolist()
        for banned in ([None] * b, [t if i % 2 == 0 else None for i, t in enumerate(top)], top):
            want = sample_tensor(logits.clone(), [SamplingParams()] * b, [None] * b, list(banned)).tolist()
            tokens, greedy_index = graphed.decode_greedy(slots, inputs, positions, list(banned))
            assert tokens.device.type == "cuda" and greedy_index == index
            assert tokens.tolist() == want
        assert want != top  # every argmax banned


def test_greedy_tokens_are_the_same_with_the_graphs_choice_or_sampled_logits(graphed):
    outs = {}
    for graph_greedy in (True, False):
        got: dict[int, list[int]] = {}
        sched = Scheduler(graphed, _Tok(), lambda o: got.setdefault(id(o.request), []).extend(o.ids),
                          graph_greedy=graph_greedy)
        reqs = [GenerateRequest(p, max_tokens=12, min_tokens=12) for p in PROMPTS]
        for r in reqs:
            sched.submit(r)
        while sched.run_once():
            pass
        outs[graph_greedy] = [got[id(r)] for r in reqs]
    assert outs[True] == outs[False]


def test_no_compile_and_no_capture_at_request_time(graphed):
    from torch._dynamo.utils import counters

    graphs, frames = len(graphed.graphs), dict(counters["stats"])
    greedy(graphed, PROMPTS[:3], 6)
    assert len(graphed.graphs) == graphs and dict(counters["stats"]) == frames


@pytest.mark.parametrize("end_ids", ["one", "two"])
def test_decode_steps_never_wait_for_the_device_while_the_end_token_is_banned(graphed, end_ids):
    """min_tokens bans the end token in every step until it is reached (benchmarks send min_tokens = max_tokens).
    Its index went to the GPU from pageable memory, which synchronizes the stream: the host waited for the step it
    had just launched, so decode lost its overlap (H200, 2026-11-30: ITL 2.9 ms at concurrency 1, 1.8 ms steps)."""
    outs = []
    sched = Scheduler(graphed, _Tok(), outs.append)
    for i, p in enumerate(PROMPTS):  # one end id: a column fill bans it; two: an indexed write (sampler.ban)
        end_id = 7 if end_ids == "two" and i % 2 else None
        sched.submit(GenerateRequest(p, max_tokens=12, min_tokens=12, stream=True, end_id=end_id))
    while sched.queued or sched._prefilling:  # a prefill reads its first token on the host: a wait by design
        sched.run_once()
    steps = 0
    torch.cuda.set_sync_debug_mode("error")
    try:
        while sched.active:
            sched.run_once()  # raises "called a synchronizing CUDA operation" on a stream or device wait
            steps += 1
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert steps >= 10 and sum(len(o.ids) for o in outs) == 12 * len(PROMPTS)


def test_several_decode_steps_per_iteration_give_the_seeded_tokens_and_never_wait(graphed):
    """decode_steps 3: each step reads the last one's tokens on the device, a step's rows gathered when they change;
    the seeded tokens equal one step per iteration's, and nothing in the decode steps waits for the device."""
    from llmprofiles.generation.sampler import SamplingParams

    def serve(decode_steps: int, check_sync: bool) -> list[list[int]]:
        outs: dict[int, list[int]] = {}
        sched = Scheduler(graphed, _Tok(), lambda o: outs.setdefault(id(o.request), []).extend(o.ids),
                          decode_steps=decode_steps)
        reqs = [GenerateRequest(p, max_tokens=5 + 3 * i, stream=True, sampling=SamplingParams(temperature=1.0, seed=i))
                for i, p in enumerate(PROMPTS)]
        for r in reqs:
            sched.submit(r)
        while sched.queued or sched._prefilling:
            sched.run_once()
        if check_sync:
            torch.cuda.set_sync_debug_mode("error")
        try:
            while sched.active:
                sched.run_once()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert graphed.pool.used == 0
        return [outs[id(r)] for r in reqs]

    one = serve(1, check_sync=False)
    assert serve(3, check_sync=True) == one and [len(t) for t in one] == [5, 8, 11, 14]


def test_steps_of_one_profile_queue_behind_the_gpu_until_the_ring_of_host_buffers_is_full(graphed):
    """A step's inputs reach the GPU from a pinned host buffer that is rewritten only once its copy is done. With
    one buffer per profile, an iteration's second decode step waited for the GPU to reach the first
    (decode_steps 4 on the H200, 2026-11-30: the engine call took 0.98 ms per step against 0.45 with one step).
    HOST_RING steps of one profile queue without waiting; the next one waits for the oldest copy."""
    from llmprofiles.generation.engine import HOST_RING

    graphed.decode([0], [5], [3])
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU clock cycles ahead of the steps
    asleep = torch.cuda.Event()
    asleep.record()
    for _ in range(HOST_RING):
        graphed.decode([0], [5], [3])
    queued = not asleep.query()  # the host launched them all while the GPU still slept
    graphed.decode([0], [5], [3])  # rewrites the first buffer: waits for its copy, queued after the sleep
    assert queued and asleep.query()
    torch.cuda.synchronize()


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return ""
