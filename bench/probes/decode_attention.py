"""Decode attention on the GPU: the kernel's settings against the batched matmuls, per layer, in CUDA graphs.

gemma-3-1b shapes (4 query heads, 1 KV head, head_dim 256; 64 slots x 2048 positions, fp16). For each
batch and context: 26 layers' attention captured in one graph (each layer its own pool, as in the
engine), replayed; the time per layer. The matmul form is the engine's: the step's keys and values
written with two eager index_puts, then the slots gathered and attended with two batched matmuls and a
masked softmax (compiled, as in ``attend_out_mlp``). Run on the GPU machine::

    python3 bench/probes/decode_attention.py --out $OUT/decode_attention.json

The figures of the one-program-per-query-head kernel that this kernel replaced, and of this kernel when it
was an experiment here, are in ``results/2026-11-30-session11-probes/decode_attention.json`` (code at the
commit that added that folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.probes.step_kernels import captured, event_ms  # noqa: E402
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


def per_layer_us(step, replays: int = 50) -> float:
    return event_ms(captured(step).replay, replays) * 1e3 / LAYERS


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path)
    a = p.parse_args()
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
        for warps in (4, 8):
            attention.NUM_WARPS = warps
            got = attention.decode_attention(q, k, v, *pools[0], slots, positions, slots, positions, 0.0625,
                                             None, kv_len).float()
            us = per_layer_us(lambda: [attention.decode_attention(q, k, v, kp, vp, slots, positions, slots,
                                                                  positions, 0.0625, None, kv_len)
                                       for kp, vp in pools])
            row[f"kernel_w{warps}"] = {"us": us, "splits": attention.splits_for(kv_len, batch * KVH, attention.processors(dev)),
                                       "max_abs_diff": (got - ref).abs().max().item()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    a.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
                                indent=1))


if __name__ == "__main__":
    main()
