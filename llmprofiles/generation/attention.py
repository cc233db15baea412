"""Decode attention that reads the KV pool in place: one Triton kernel per layer and step.

A decode step (``seq == 1``) attends each row's query to the keys of its own pool slot.
The batched-matmul form in :func:`llmprofiles.generation.forward.attend_out_mlp` first writes
the step's keys and values into the pool (two ``index_put`` kernels), gathers every row's slot
into a dense copy (two more), then runs two batched matmuls and a masked softmax: about seven
kernels per layer, and at batch 64 the gather alone was the step's largest kernel (H200,
bench/NOTES.md, session 5). This kernel does the whole of it in one launch:

- program ``(b, kv_head, part)`` attends every query head of one KV head of row ``b`` at once
  (one ``tl.dot`` over a tile of at least 16 query rows), so each key and value is read once
  per row, whatever the group size. It walks its part of the pool positions of slot ``slots[b]``
  before the row's position, causally and inside the sliding window, with an online softmax in
  float32; where a context is cut into several parts (:func:`splits_for`), a second kernel
  combines them;
- the step's own key and value come from registers, not from the pool, so no program reads a
  position another one is writing; the first part writes them into the pool at
  ``(write_slots[b], write_pos[b])`` (padding rows write the scratch slot, as before).

A row reads only as many positions as its own context holds; the step's attention length
(``kv_len``) sets only how many parts there are. Off CUDA, or without Triton, the batched-matmul
form runs. With ``TRITON_INTERPRET=1`` set when this module is imported, the kernel runs on the CPU
in Triton's interpreter (the tests do, where Triton is installed).

Per layer on the H200 (``bench/probes/decode_attention.py``, gemma-3-1b shapes: 4 query heads on one
KV head, head_dim 256; 26 layers in one CUDA graph; ``results/2026-11-30-session11-probes/``), in us:

======================  ========  ======================  ===========
batch, context          matmuls   one program per head    this kernel
======================  ========  ======================  ===========
1, 192                  14.1      6.1                     5.3
64, 192                 28.4      26.4                    10.7
8, 1,900                30.7      33.3                    11.8
64, 1,900               118.5     208.8                   44.6
======================  ========  ======================  ===========
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs (CI) have no Triton: the batched-matmul form runs
    triton = None

BLOCK_T = 32  # pool positions per loop iteration
NUM_WARPS = 4  # 8 was no faster in that probe, and slower at short contexts
SPLIT_MIN = 32  # the fewest pool positions worth a program of their own
MAX_SPLITS = 16
DOT_ROWS = 16  # the smallest tile tl.dot takes: a KV head's query heads, padded

# triton.jit reads TRITON_INTERPRET as the kernel below is defined: then it runs in Triton's interpreter, on CPU tensors.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device, head_dim: int) -> bool:
    """Whether the kernel can run for this device and head size."""
    return (triton is not None and (device.type == "cuda" or INTERPRETED)
            and head_dim >= 16 and head_dim & (head_dim - 1) == 0)


def splits_for(kv_len: int, programs: int, processors: int) -> int:
    """Parts each row's context is cut into: enough programs for two per processor, none under SPLIT_MIN positions.

    A power of two, 1 for short contexts (then one kernel writes the output and no combine runs). One program
    per (row, KV head) walks its context alone: at batch 1 that is a handful of programs for the whole GPU.
    """
    n = 1
    while n < MAX_SPLITS and kv_len // (2 * n) >= SPLIT_MIN and programs * n < 2 * processors:
        n *= 2
    return n


if triton is not None:
    @triton.jit
    def _decode_attention(q_ptr, k_ptr, v_ptr, k_pool_ptr, v_pool_ptr, slots_ptr, positions_ptr,
                          write_slots_ptr, write_pos_ptr, out_ptr, part_ptr, scale, window,
                          q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, p_ss, p_st, p_sh, o_sb, o_sh,
                          GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
                          SLIDING: tl.constexpr, SPLITS: tl.constexpr, PRECISION: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        heads = tl.num_programs(1) * GROUP
        g = tl.arange(0, ROWS)
        real = g < GROUP  # rows past the group pad the tile: they load zeros and store nothing
        h = kvh * GROUP + g
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + b * q_sb + h[:, None] * q_sh + d[None, :], mask=real[:, None], other=0.0)
        k_new = tl.load(k_ptr + b * k_sb + kvh * k_sh + d)
        v_new = tl.load(v_ptr + b * v_sb + kvh * v_sh + d)
        pos = tl.load(positions_ptr + b)
        slot = tl.load(slots_ptr + b)
        lo = pos * 0
        if SLIDING:
            lo = tl.maximum(pos - window + 1, 0)
        # This program's share of the positions before the row's own, in whole blocks.
        share = tl.cdiv(tl.cdiv(pos - lo, SPLITS), BLOCK) * BLOCK
        first = lo + split * share
        last = tl.minimum(first + share, pos)
        # The step's own token is the first part's: its running max starts at that score, its weight at 1.
        # The other parts start empty (max -inf, weight 0).
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
            s = tl.dot(q, tl.trans(keys), input_precision=PRECISION) * scale  # [ROWS, BLOCK], float32
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            values = tl.load(v_pool_ptr + offs, mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values, input_precision=PRECISION)
            total = total * alpha + tl.sum(p, axis=1)
            m = m_new
        if SPLITS == 1:
            tl.store(out_ptr + b * o_sb + h[:, None] * o_sh + d[None, :],
                     (acc / total[:, None]).to(out_ptr.dtype.element_ty), mask=real[:, None])
        else:  # partials [B, H, SPLITS, HEAD_DIM + 2]: the weighted values, their total weight, the max
            rows = part_ptr + ((b * heads + h) * SPLITS + split) * (HEAD_DIM + 2)
            tl.store(rows[:, None] + d[None, :], acc, mask=real[:, None])
            tl.store(rows + HEAD_DIM, total, mask=real)
            tl.store(rows + HEAD_DIM + 1, m, mask=real)
        if split == 0:
            w = tl.load(write_slots_ptr + b).to(tl.int64) * p_ss + tl.load(write_pos_ptr + b).to(tl.int64) * p_st
            tl.store(k_pool_ptr + w + kvh * p_sh + d, k_new)
            tl.store(v_pool_ptr + w + kvh * p_sh + d, v_new)

    @triton.jit
    def _combine(part_ptr, out_ptr, o_sb, o_sh, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        d = tl.arange(0, HEAD_DIM)
        sp = tl.arange(0, SPLITS)
        rows = part_ptr + ((b * tl.num_programs(1) + h) * SPLITS + sp) * (HEAD_DIM + 2)
        m = tl.load(rows + HEAD_DIM + 1)
        weight = tl.exp(m - tl.max(m, axis=0))  # split 0 always holds the step's own token: the max is finite
        total = tl.sum(tl.load(rows + HEAD_DIM) * weight, axis=0)
        acc = tl.sum(tl.load(rows[:, None] + d[None, :]) * weight[:, None], axis=0)
        tl.store(out_ptr + b * o_sb + h * o_sh + d, (acc / total).to(out_ptr.dtype.element_ty))


def processors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     slots: torch.Tensor, positions: torch.Tensor, write_slots: torch.Tensor,
                     write_pos: torch.Tensor, scale: float, window: int | None, kv_len: int) -> torch.Tensor:
    """Attention of one decode token per row, ``[B, H, 1, D]``, and the step's keys and values written.

    q ``[B, H, 1, D]``; k, v ``[B, 1, kvh, D]``; k_pool, v_pool one layer's pool ``[slots, ctx, kvh, D]``
    (row-major); slots, positions, write_slots, write_pos ``[B]`` (int64). ``window``: the sliding
    window of a local layer (a key at ``t`` is seen from ``pos`` when ``pos - window < t <= pos``),
    None on a global one. ``kv_len`` bounds every row's position: it sets how many parts a row's
    context is cut into (:func:`splits_for`); with more than one, a second kernel combines them.
    """
    B, H, _, D = q.shape
    kv_heads = k_pool.shape[2]
    if k_pool.stride(-1) != 1 or v_pool.stride() != k_pool.stride():
        raise ValueError("decode_attention needs row-major K and V pools of one layout")
    # Any strides but the last: q arrives as a transposed view, v as a slice of the fused projection.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    slots, positions, write_slots, write_pos = (t if t.stride(0) == 1 else t.contiguous()
                                                for t in (slots, positions, write_slots, write_pos))
    if window is not None:
        kv_len = min(kv_len, window)
    splits = splits_for(kv_len, B * kv_heads, processors(q.device))
    out = torch.empty(B, H, 1, D, dtype=q.dtype, device=q.device)
    parts = torch.empty(B, H, splits, D + 2, dtype=torch.float32, device=q.device) if splits > 1 else out
    group = H // kv_heads
    _decode_attention[(B, kv_heads, splits)](
        q, k, v, k_pool, v_pool, slots, positions, write_slots, write_pos, out, parts, scale, window or 0,
        q.stride(0), q.stride(1), k.stride(0), k.stride(2), v.stride(0), v.stride(2), k_pool.stride(0),
        k_pool.stride(1), k_pool.stride(2), out.stride(0), out.stride(1),
        GROUP=group, ROWS=max(DOT_ROWS, triton.next_power_of_2(group)), HEAD_DIM=D, BLOCK=BLOCK_T,
        SLIDING=window is not None, SPLITS=splits,
        # float32 pools (the tests' models) multiply in float32: tl.dot's default would round them to tf32
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=NUM_WARPS)
    if splits > 1:
        _combine[(B, H)](parts, out, out.stride(0), out.stride(1), HEAD_DIM=D, SPLITS=splits, num_warps=NUM_WARPS)
    return out


@torch.library.custom_op("llmprofiles::decode_attention", mutates_args=("k_pool", "v_pool"))
def decode_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor,
                        v_pool: torch.Tensor, layer: int, slots: torch.Tensor, positions: torch.Tensor,
                        write_slots: torch.Tensor, write_pos: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """:func:`decode_attention` on layer ``layer`` of the whole pools ``[layers, slots, ctx, kvh, D]``, as one
    operator that ``torch.compile`` keeps whole inside a compiled step (``window`` 0: a global layer).

    The pools are declared mutated, so inductor orders the layers' calls and writes in place (no copy of the
    pool). Inside a compiled step the attention length is not known, so the parts are counted for the whole
    context: at short contexts the later parts find no positions and return at once.
    """
    return decode_attention(q, k, v, k_pool[layer], v_pool[layer], slots, positions, write_slots, write_pos, scale,
                            window or None, k_pool.shape[2])


@decode_attention_op.register_fake
def _(q, k, v, k_pool, v_pool, layer, slots, positions, write_slots, write_pos, scale, window):
    return q.new_empty(q.shape[0], q.shape[1], 1, q.shape[3])


@torch.library.custom_op("llmprofiles::write_kv", mutates_args=("k_pool", "v_pool"))
def write_kv_op(k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, layer: int,
                write_slots: torch.Tensor, write_pos: torch.Tensor) -> None:
    """Write a step's keys and values ``[B, S, kvh, D]`` into layer ``layer`` of the whole pools at
    ``(write_slots, write_pos)`` ``[B, S]``: one operator that a compiled step keeps whole, writing in place (the
    pools declared mutated, as :func:`decode_attention_op`'s)."""
    k_pool[layer][write_slots, write_pos] = k
    v_pool[layer][write_slots, write_pos] = v


@write_kv_op.register_fake
def _(k, v, k_pool, v_pool, layer, write_slots, write_pos):
    return None
