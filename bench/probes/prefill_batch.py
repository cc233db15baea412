"""Several prompts per prefill step, and the pool write inside the compiled step: what they would save.

gemma-3-1b shapes in fp16 with random weights, one process. A prompt's first chunk compiled whole
(``KVForward.fresh_prefill``, compiled dynamic; on the H200 it still compiled again for batch 2 and for length 64,
80-96 s each, session 14) is captured as a graph for
``[batch, length]`` inputs (each row its own slot, every row full) and replayed (CUDA events, median):

- ``op``: as served, the keys and values written by the ``llmprofiles::write_kv`` operator (two index_put
  kernels per layer, 52 per step, about 200 us at 128 tokens in ``step_kernels``);
- ``inline``: the same write as an index assignment inside the compiled step, which inductor may fuse with the
  kernel that makes the keys. Its logits and the pool it wrote are compared with ``op``'s.

A batch of b prompts is worth it where its replay is well under b times batch 1's.

Run on the GPU machine::

    python3 -m bench.probes.prefill_batch --out $OUT/prefill_batch.json
"""

from __future__ import annotations

import argparse
import json
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.probes.decode_step import random_engine
from bench.probes.step_kernels import event_ms


def fresh_prefill_inline(self, tokens, positions, write_slots, write_pos, last):
    """KVForward.fresh_prefill with the pool write as an index assignment (no operator)."""
    s, w, eps = self.shape, self.w, self.shape.rms_norm_eps
    from llmprofiles.generation.forward import out_mlp, qkv_rope

    x = F.embedding(tokens, w["embed"]) * self.embed_scale
    for i, (cos, sin) in enumerate(self.rotaries(positions, x.dtype)):
        q, k, v = qkv_rope(x, w[f"{i}.input_layernorm"], w[f"{i}.qkv"], w[f"{i}.q_norm"], w[f"{i}.k_norm"],
                           cos, sin, eps, s.num_heads, s.num_kv_heads, s.head_dim)
        self.k_pool[i][write_slots, write_pos] = k
        self.v_pool[i][write_slots, write_pos] = v
        attn = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                              scale=self.scale, enable_gqa=True)
        x = out_mlp(attn, x, *self.after_attention(i), eps)
    return self.logits(x[torch.arange(x.shape[0], device=x.device), last])


def inputs(batch: int, length: int, vocab: int, device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    tokens = torch.randint(4, vocab, (batch, length), generator=g).to(device)
    positions = torch.arange(length, device=device).expand(batch, length).contiguous()
    slots = torch.arange(batch, device=device)[:, None].expand(batch, length).contiguous()
    last = torch.full((batch,), length - 1, device=device)
    return tokens, positions, slots, positions.clone(), last


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shapes", default="1x128,2x128,4x128,1x64,2x64,4x64")
    p.add_argument("--forms", default="op,inline")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--model", default="gemma-3-1b")
    a = p.parse_args()
    device = torch.device("cuda")
    engine = random_engine(a.model, device, fresh_prefill=True)
    f = engine.forward
    shapes = [tuple(int(n) for n in s.split("x")) for s in a.shapes.split(",")]
    rows, reference = [], {}
    for form in a.forms.split(","):
        method = f.fresh_prefill if form == "op" else types.MethodType(fresh_prefill_inline, f)
        step = torch.compile(method, fullgraph=True, dynamic=True)
        for batch, length in shapes:
            x = inputs(batch, length, engine.vocab_size, device)
            f.k_pool.zero_()
            f.v_pool.zero_()
            t0 = time.perf_counter()
            with torch.inference_mode():
                logits = step(*x).float()
            torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            written = f.k_pool[:, :batch, :length].float()
            ref_logits, ref_pool = reference.setdefault((batch, length), (logits, written))
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode():
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    step(*x)
                torch.cuda.current_stream().wait_stream(stream)
                with torch.cuda.graph(graph):
                    step(*x)
            row = {"form": form, "batch": batch, "length": length, "replay_ms": round(event_ms(graph.replay, a.iters), 4),
                   "first_call_s": round(first_s, 1),
                   "logits_max_abs_diff": (logits - ref_logits).abs().max().item(),
                   "pool_max_abs_diff": (written - ref_pool).abs().max().item(),
                   "pool_written": bool(written.abs().sum().item() > 0)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            a.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                                         "rows": rows}, indent=1))
            del graph


if __name__ == "__main__":
    main()
