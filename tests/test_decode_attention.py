"""The decode attention kernel against the batched-matmul form it replaces.

On the CPU machine the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``), where
Triton is installed; on a GPU it runs compiled. Without Triton the test is skipped, and the
engine runs the batched-matmul form (which every other generation test covers).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch): the kernel cannot run")

from llmprofiles import models  # noqa: E402
from llmprofiles.generation import attention, forward  # noqa: E402
from llmprofiles.generation.engine import GenerationEngine  # noqa: E402
from llmprofiles.profiles.generation import GenerationSpec  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Triton's interpreter converts arrays to scalars as numpy deprecates
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def kernel():
    """The attention module, where its kernel can run (on the CPU: conftest.py defines it for the interpreter)."""
    if not attention.available(DEVICE, 32):
        pytest.skip(f"the decode attention kernel cannot run on {DEVICE} here")
    return attention


def reference(q, k, v, k_pool, v_pool, slots, positions, write_slots, write_pos, scale, window):
    """Write the pool as the eager path does, then masked softmax attention over each row's slot."""
    k_pool[write_slots, write_pos] = k[:, 0]
    v_pool[write_slots, write_pos] = v[:, 0]
    B, H, _, D = q.shape
    kvh, ctx = k_pool.shape[2], k_pool.shape[1]
    t = torch.arange(ctx, device=positions.device)
    seen = t[None, :] <= positions[:, None]
    if window is not None:
        seen &= t[None, :] > positions[:, None] - window
    keys = k_pool[slots].float().repeat_interleave(H // kvh, dim=2)  # [B, ctx, H, D]
    values = v_pool[slots].float().repeat_interleave(H // kvh, dim=2)
    scores = torch.einsum("bhd,bthd->bht", q[:, :, 0].float(), keys) * scale
    scores = scores.masked_fill(~seen[:, None], float("-inf"))
    return torch.einsum("bht,bthd->bhd", scores.softmax(-1), values)[:, :, None].to(q.dtype)


def test_long_contexts_are_cut_into_parts_until_the_gpu_is_busy():
    split = attention.splits_for
    assert attention.SPLIT_MIN == 32
    assert split(40, 4, 132) == 1 and split(63, 4, 132) == 1  # short: one kernel, no combine
    assert split(256, 4, 132) == 8 and split(128, 4, 132) == 4  # batch 1: parts of 32 positions or more
    assert split(2048, 4, 132) == attention.MAX_SPLITS
    assert split(256, 256, 132) == 2 and split(2048, 512, 132) == 1  # a full batch keeps the GPU busy already


@pytest.mark.parametrize("parts", [1, 8])
@pytest.mark.parametrize("heads,kv_heads,window", [(4, 1, None), (4, 1, 9), (4, 2, None), (2, 2, 40)])
def test_kernel_matches_masked_softmax_and_writes_the_pool(kernel, monkeypatch, heads, kv_heads, window, parts):
    g = torch.Generator().manual_seed(heads * 10 + kv_heads + (window or 0))
    n_slots, ctx, D, scale = 4, 80, 32, 0.3
    dtype = torch.float16 if DEVICE.type == "cuda" else torch.float32

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE, dtype)

    k_pool, v_pool = rand(n_slots + 1, ctx, kv_heads, D), rand(n_slots + 1, ctx, kv_heads, D)
    # Rows at position 0, inside the first block, across blocks and at the context's end; the last row is
    # padding, on the scratch slot (4), as the engine pads a batch.
    slots = torch.tensor([2, 0, 3, 1, 4], device=DEVICE)
    positions = torch.tensor([0, 5, 37, ctx - 1, 0], device=DEVICE)
    B = len(slots)
    # q as the transposed view and v as the slice of a wider tensor that the engine passes
    q = rand(B, 1, heads, D).transpose(1, 2)
    k, v = rand(B, 1, kv_heads, D), rand(B, 1, kv_heads, 3 * D)[..., D:2 * D]
    want_k, want_v = k_pool.clone(), v_pool.clone()
    want = reference(q, k, v, want_k, want_v, slots, positions, slots, positions, scale, window)
    if parts > 1:  # the context cut into parts of 8 positions or more: as a long context on a large GPU
        monkeypatch.setattr(kernel, "SPLIT_MIN", 8)
        monkeypatch.setattr(kernel, "processors", lambda device: 10_000)
    else:  # one part: a GPU the rows keep busy already
        monkeypatch.setattr(kernel, "processors", lambda device: 1)
    assert kernel.splits_for(min(ctx, window or ctx), B * kv_heads, kernel.processors(DEVICE)) == (
        1 if parts == 1 or (window or ctx) < 16 else parts if window is None else 4)
    got = kernel.decode_attention(q, k, v, k_pool, v_pool, slots, positions, slots, positions, scale, window, ctx)
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert torch.equal(k_pool, want_k) and torch.equal(v_pool, want_v), "the step's keys and values were not written"


def test_engine_steps_with_the_kernel_give_the_batched_matmul_logits(kernel):
    """A prefill, then decode steps of three rows (one padded bucket), with and without the kernel."""
    hf = models.load_model("tiny", torch.float32)
    shape = forward.ModelShape.from_config(hf.config.to_dict())
    spec = GenerationSpec(slots=4, max_context=64, decode_buckets=(4,), prefill_buckets=(16,))

    def make(use_kernel: bool) -> GenerationEngine:
        weights = forward.fuse_weights(shape, {k: v.clone().to(DEVICE) for k, v in hf.state_dict().items()})
        e = GenerationEngine(shape, weights, spec, DEVICE, cuda_graphs=False, compile=False)
        e.forward.decode_kernel = use_kernel
        return e

    with_kernel, without = make(True), make(False)
    prompts = {0: list(range(3, 15)), 1: [7], 2: list(range(40, 49))}
    for e in (with_kernel, without):
        for slot, p in prompts.items():
            e.prefill(slot, p, 0)
    tokens, positions = [5, 6, 7], [len(p) for p in prompts.values()]
    for _ in range(3):
        a, _ = with_kernel.decode(list(prompts), tokens, positions)
        b, _ = without.decode(list(prompts), tokens, positions)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        tokens, positions = [int(t) for t in b.argmax(-1)], [p + 1 for p in positions]
    torch.testing.assert_close(with_kernel.forward.k_pool[:, :3], without.forward.k_pool[:, :3])


def test_the_kernel_runs_by_default_on_cuda_only_and_an_impossible_request_is_refused(monkeypatch):
    hf = models.load_model("tiny", torch.float32)
    shape = forward.ModelShape.from_config(hf.config.to_dict())
    weights = forward.fuse_weights(shape, dict(hf.state_dict()))
    pool = torch.zeros(1, 2, 8, 1, shape.head_dim)
    assert not forward.KVForward(shape, weights, pool, pool).decode_kernel  # CPU: the interpreter only on request
    monkeypatch.setattr(attention, "INTERPRETED", False)
    with pytest.raises(ValueError, match="decode attention kernel cannot run on cpu"):
        forward.KVForward(shape, weights, pool, pool, decode_kernel=True)


def test_the_builds_check_keeps_a_matching_kernel_and_refuses_a_wrong_or_failing_one(kernel, monkeypatch):
    from llmprofiles.generation.engine import check_decode_kernel

    hf = models.load_model("tiny", torch.float32)
    kept = check_decode_kernel(hf, DEVICE)
    assert kept["use"] == "kernel" and kept["max_abs_diff"] < 1e-3, kept

    right = kernel.decode_attention

    def shifted(q, k, v, k_pool, v_pool, slots, positions, write_slots, write_pos, scale, window, kv_len):
        # a plausible bug: every row attends one position too far (it reads the slot's stale next key)
        return right(q, k, v, k_pool, v_pool, slots, positions + 1, write_slots, write_pos, scale, window, kv_len)

    monkeypatch.setattr(forward.attention, "decode_attention", shifted)
    wrong = check_decode_kernel(hf, DEVICE)
    assert wrong["use"] == "matmuls" and "differ" in wrong["reason"], wrong

    def broken(*args):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(forward.attention, "decode_attention", broken)
    failed = check_decode_kernel(hf, DEVICE)
    assert failed == {"use": "matmuls", "reason": "the kernel failed: RuntimeError: no kernel image is available"}


def test_every_decode_step_takes_the_kernel_and_prefill_does_not(kernel, monkeypatch):
    hf = models.load_model("tiny", torch.float32)
    shape = forward.ModelShape.from_config(hf.config.to_dict())
    spec = GenerationSpec(slots=2, max_context=512, decode_buckets=(1, 2), prefill_buckets=(256,))
    weights = forward.fuse_weights(shape, {k: v.clone().to(DEVICE) for k, v in hf.state_dict().items()})
    e = GenerationEngine(shape, weights, spec, DEVICE, cuda_graphs=False, compile=False, decode_kernel=True)
    calls = []
    real = kernel.decode_attention
    monkeypatch.setattr(kernel, "decode_attention", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for slot in (0, 1):
        e.prefill(slot, list(range(4, 204)), 0)
    assert calls == []
    layers = shape.num_layers
    e.decode([0], [5], [300])  # batch 1, 301 positions
    e.decode([0, 1], [5, 6], [301, 300])  # batch 2 over 302 positions
    e.decode([0, 1], [5, 6], [100, 100])
    assert calls == [1] * layers + [2] * 2 * layers


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_decode_step_compiled_whole_gives_the_layer_by_layer_logits_and_pool(kernel, compiled):
    """decode_step (the kernel as one operator, batch 1 with multiply-and-reduce projections) against the
    layer-by-layer step with the kernel and with the batched matmuls, over a padded bucket and batch 1."""
    hf = models.load_model("tiny", torch.float32)
    shape = forward.ModelShape.from_config(hf.config.to_dict())
    spec = GenerationSpec(slots=4, max_context=64, decode_buckets=(1, 4), prefill_buckets=(16,))

    def make(use_kernel: bool, whole: bool) -> GenerationEngine:
        weights = forward.fuse_weights(shape, {k: v.clone().to(DEVICE) for k, v in hf.state_dict().items()})
        e = GenerationEngine(shape, weights, spec, DEVICE, cuda_graphs=False, compile=whole and compiled,
                             decode_kernel=use_kernel)
        e.forward.whole_decode = whole
        return e

    engines = [make(False, False), make(True, False), make(True, True)]
    prompts = {0: list(range(3, 15)), 1: [7], 2: list(range(40, 49))}
    for e in engines:
        for slot, p in prompts.items():
            e.prefill(slot, p, 0)
    tokens, positions = [5, 6, 7], [len(p) for p in prompts.values()]
    for step in range(3):
        batch = [e.decode(list(prompts), tokens, positions)[0] for e in engines]
        single = [e.decode([3], [9 + step], [step])[0] for e in engines]  # batch 1: the other compile
        for got in batch[1:]:
            torch.testing.assert_close(got, batch[0], atol=1e-4, rtol=1e-4)
        for got in single[1:]:
            torch.testing.assert_close(got, single[0], atol=1e-4, rtol=1e-4)
        tokens, positions = [int(t) for t in batch[0].argmax(-1)], [p + 1 for p in positions]
    for e in engines[1:]:  # every step's keys and values landed in the engine's own pool
        torch.testing.assert_close(e.forward.k_pool[:, :4], engines[0].forward.k_pool[:, :4])
        torch.testing.assert_close(e.forward.v_pool[:, :4], engines[0].forward.v_pool[:, :4])
