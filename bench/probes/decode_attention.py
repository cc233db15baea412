"""Decode attention on the GPU: the kernel's settings against the batched matmuls, per layer, in CUDA graphs.

gemma-3-1b shapes (4 query heads, 1 KV head, head_dim 256; 64 slots x 2048 positions, fp16). For each
batch and context: 26 layers' attention captured in one graph (each layer its own pool, as in the
engine), replayed; the time per layer. The matmul form is the engine's: the step's keys and values
written with two eager index_puts, then the slots gathered and attended with two batched matmuls and a
masked softmax (compiled, as in ``attend_out_mlp``). Run on the GPU machine::

    python3 bench/probes/decode_attention.py --out $OUT/decode_attention.json

It also times an experiment not in the product: ``_grouped``, one program per row and KV head attending all
that head's query heads at once, which reads the keys once. ``--check`` compares it with the kernel (on the
CPU: ``TRITON_INTERPRET=1 python bench/probes/decode_attention.py --check``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from llmprofiles.generation import attention  # noqa: E402

LAYERS, SLOTS, CTX, H, KVH, D = 26, 64, 2048, 4, 1, 256


def write(k, v, k_pool, v_pool, slots, positions):
    """The engine's eager pool writes."""
    k_pool[slots, positions] = k[:, 0]
    v_pool[slots, positions] = v[:, 0]


def matmuls(q, k_pool, v_pool, slots, positions, kv_len: int, scale: float):
    """The engine's batched-matmul attention (forward.attend_out_mlp up to the output projection)."""
    B = q.shape[0]
    t = torch.arange(kv_len, device=q.device)
    mask = (t[None, :] <= positions[:, None])[:, None, None]  # [B, 1, 1, T]
    keys = k_pool[slots, :kv_len].permute(0, 2, 3, 1)
    values = v_pool[slots, :kv_len].transpose(1, 2)
    scores = (q.reshape(B, KVH, H // KVH, D) @ keys).float().view(B, KVH, H // KVH, 1, kv_len) * scale
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype).view(B, KVH, H // KVH, kv_len)
    return (probs @ values).view(B, H, 1, D)


@triton.jit
def _grouped(q_ptr, k_ptr, v_ptr, k_pool_ptr, v_pool_ptr, slots_ptr, positions_ptr, write_slots_ptr, write_pos_ptr,
             out_ptr, part_ptr, scale, q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, p_ss, p_st, p_sh, o_sb, o_sh,
             GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
             SPLITS: tl.constexpr):
    """An experiment: one program per row, KV head and part attends all the KV head's query heads at once
    (tl.dot over a [ROWS >= 16, BLOCK] tile), so the keys and values are read once, not once per query head.
    Global layers only (no sliding window); the parts are combined by attention._combine."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    heads = tl.num_programs(1) * GROUP
    g = tl.arange(0, ROWS)
    real = g < GROUP
    d = tl.arange(0, HEAD_DIM)
    h = kvh * GROUP + g
    q = tl.load(q_ptr + b * q_sb + h[:, None] * q_sh + d[None, :], mask=real[:, None], other=0.0)
    k_new = tl.load(k_ptr + b * k_sb + kvh * k_sh + d)
    v_new = tl.load(v_ptr + b * v_sb + kvh * v_sh + d)
    pos = tl.load(positions_ptr + b)
    slot = tl.load(slots_ptr + b)
    share = tl.cdiv(tl.cdiv(pos, SPLITS), BLOCK) * BLOCK
    first = split * share
    last = tl.minimum(first + share, pos)
    own = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], axis=1) * scale
    m = tl.where(split == 0, own, float("-inf"))
    total = tl.where(split == 0, 1.0, 0.0) + own * 0.0
    acc = v_new.to(tl.float32)[None, :] * total[:, None]
    base = slot.to(tl.int64) * p_ss + kvh * p_sh
    for start in range(first, last, BLOCK):
        t = start + tl.arange(0, BLOCK)
        valid = t < last
        offs = base + t.to(tl.int64)[:, None] * p_st + d[None, :]
        keys = tl.load(k_pool_ptr + offs, mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(keys)) * scale  # [ROWS, BLOCK]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        values = tl.load(v_pool_ptr + offs, mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values)
        total = total * alpha + tl.sum(p, axis=1)
        m = m_new
    if SPLITS == 1:
        tl.store(out_ptr + b * o_sb + h[:, None] * o_sh + d[None, :], (acc / total[:, None]).to(out_ptr.dtype.element_ty),
                 mask=real[:, None])
    else:
        rows = part_ptr + ((b * heads + h) * SPLITS + split) * (HEAD_DIM + 2)
        tl.store(rows[:, None] + d[None, :], acc, mask=real[:, None])
        tl.store(rows + HEAD_DIM, total, mask=real)
        tl.store(rows + HEAD_DIM + 1, m, mask=real)
    if split == 0:
        w = tl.load(write_slots_ptr + b).to(tl.int64) * p_ss + tl.load(write_pos_ptr + b).to(tl.int64) * p_st
        tl.store(k_pool_ptr + w + kvh * p_sh + d, k_new)
        tl.store(v_pool_ptr + w + kvh * p_sh + d, v_new)


def grouped(q, k, v, k_pool, v_pool, slots, positions, scale: float, kv_len: int, warps: int):
    """The experiment's launch, as attention.decode_attention's (global layers, writes at each row's position)."""
    B, H, _, D = q.shape
    kv_heads = k_pool.shape[2]
    splits = attention.splits_for(kv_len, B * kv_heads, attention.processors(q.device))
    out = torch.empty(B, H, 1, D, dtype=q.dtype, device=q.device)
    parts = torch.empty(B, H, splits, D + 2, dtype=torch.float32, device=q.device) if splits > 1 else out
    _grouped[(B, kv_heads, splits)](
        q, k, v, k_pool, v_pool, slots, positions, slots, positions, out, parts, scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(2), v.stride(0), v.stride(2),
        k_pool.stride(0), k_pool.stride(1), k_pool.stride(2), out.stride(0), out.stride(1),
        GROUP=H // kv_heads, ROWS=max(16, triton.next_power_of_2(H // kv_heads)), HEAD_DIM=D, BLOCK=32,
        SPLITS=splits, num_warps=warps)
    if splits > 1:
        attention._combine[(B, H)](parts, out, out.stride(0), out.stride(1), HEAD_DIM=D, SPLITS=splits,
                                   num_warps=attention.NUM_WARPS)
    return out


def check(device: torch.device) -> None:
    """The experiment against the shipped kernel on small inputs (on the CPU under TRITON_INTERPRET=1)."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    for heads, kv_heads, batch, ctx, split_min in ((4, 1, 3, 80, 8), (4, 2, 2, 80, 32), (8, 1, 1, 200, 8)):
        attention.SPLIT_MIN = split_min
        pools = [torch.randn(batch + 1, ctx, kv_heads, 32, generator=g).to(device, dtype) for _ in range(2)]
        q = torch.randn(batch, 1, heads, 32, generator=g).to(device, dtype).transpose(1, 2)
        k, v = (torch.randn(batch, 1, kv_heads, 32, generator=g).to(device, dtype) for _ in range(2))
        slots = torch.arange(batch, device=device)
        positions = torch.tensor([0, 37, ctx - 1][:batch], device=device)
        want_pools = [p.clone() for p in pools]
        want = attention.decode_attention(q, k, v, *want_pools, slots, positions, slots, positions, 0.3, None, ctx)
        got = grouped(q, k, v, *pools, slots, positions, 0.3, ctx, 4)
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
        assert all(torch.equal(a, b) for a, b in zip(pools, want_pools))
    print("grouped matches decode_attention")


def per_layer_us(step, replays: int = 50) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / LAYERS)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path)
    p.add_argument("--check", action="store_true", help="only compare the grouped experiment with the kernel")
    a = p.parse_args()
    if a.check:
        return check(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    pools = [(torch.randn(SLOTS + 1, CTX, KVH, D, device=dev, generator=g, dtype=torch.float16),
              torch.randn(SLOTS + 1, CTX, KVH, D, device=dev, generator=g, dtype=torch.float16)) for _ in range(LAYERS)]
    compiled = torch.compile(matmuls, dynamic=False)
    rows = []
    for batch, context in ((1, 192), (64, 192), (1, 1900), (8, 1900), (64, 1900)):
        kv_len = next(k for k in (128, 256, 512, 1024, 2048) if k > context)
        q = torch.randn(batch, 1, H, D, device=dev, dtype=torch.float16, generator=g).transpose(1, 2)
        k = torch.randn(batch, 1, KVH, D, device=dev, dtype=torch.float16, generator=g)
        v = torch.randn(batch, 1, KVH, D, device=dev, dtype=torch.float16, generator=g)
        slots = torch.arange(batch, device=dev)
        positions = torch.full((batch,), context, device=dev)
        row = {"batch": batch, "context": context, "kv_len": kv_len}
        row["matmuls_us"] = per_layer_us(lambda: [(write(k, v, kp, vp, slots, positions),
                                                   compiled(q, kp, vp, slots, positions, kv_len, 0.0625))
                                                  for kp, vp in pools])
        ref = matmuls(q, *pools[0], slots, positions, kv_len, 0.0625).float()
        for split_min in (256, 64, 32):
            for warps in (4, 8):
                attention.SPLIT_MIN, attention.NUM_WARPS = split_min, warps
                splits = attention.splits_for(kv_len, batch * H, attention.processors(dev))
                got = attention.decode_attention(q, k, v, *pools[0], slots, positions, slots, positions, 0.0625,
                                                 None, kv_len).float()
                us = per_layer_us(lambda: [attention.decode_attention(q, k, v, kp, vp, slots, positions, slots,
                                                                      positions, 0.0625, None, kv_len)
                                           for kp, vp in pools])
                row[f"kernel_min{split_min}_w{warps}"] = {"us": us, "splits": splits,
                                                           "max_abs_diff": (got - ref).abs().max().item()}
        for warps in (4, 8):  # the grouped experiment, parts of 32 positions or more
            attention.SPLIT_MIN = 32
            got = grouped(q, k, v, *pools[0], slots, positions, 0.0625, kv_len, warps).float()
            us = per_layer_us(lambda: [grouped(q, k, v, kp, vp, slots, positions, 0.0625, kv_len, warps)
                                       for kp, vp in pools])
            row[f"grouped_min32_w{warps}"] = {"us": us, "max_abs_diff": (got - ref).abs().max().item()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    a.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
                                indent=1))


if __name__ == "__main__":
    main()
