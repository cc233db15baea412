"""One engine step of a Gemma3-family causal LM over a pool of KV-cache slots.

A step takes tokens ``[batch, seq]``, the KV slot of each row and the position of
each row's first token. It writes every token's keys and values into the pool at
``(slot, position)``, attends each query to the keys of its own slot up to its
position (and inside the sliding window on local layers), and returns the logits
of one chosen token per row. Prefill is ``batch == 1`` over a prompt chunk;
decode is ``seq == 1`` over many sequences. Both are the same function.

Written gpt-fast style from the Hugging Face Gemma3 definition, so serving needs
no ``transformers`` import: weights come from safetensors, settings from the
model's ``config.json``. Sibling projections (q/k/v, gate/up) are held as one
fused matrix each; the unfused tensors are dropped, so the weights exist once.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmprofiles.generation import attention, mlp
from llmprofiles.runtimes.fusion import persistent_rows, rows_cache_key

SUPPORTED = ("gemma3_text",)
log = logging.getLogger(__name__)
# The whole batch-1 decode step's compile (KVForward.decode_step): inductor options over its defaults, and its
# projections as multiply-and-reduce (see linear). Graph replay on the H200 at 192 positions
# (bench/probes/decode_step.py, results/2026-11-30-session11-probes/): 1.29 ms with both, 1.46 with coordinate
# descent alone, 1.73 with multiply-and-reduce alone.
WHOLE_B1_OPTIONS: dict = {"coordinate_descent_tuning": True}
WHOLE_B1_GEMV = True
# With ``pdl`` (a build with --decode-pdl where its probe found programmatic dependent launch working: the manifest's
# decode_pdl), the batch-1 step's kernels launch while the one before them finishes, and wait for it before reading
# what it wrote. Its kernels are all inductor's reductions and pointwise kernels around the attention operator: the
# probe's graph replay fell from 1.39 to 1.17 ms at 192 positions. The step for batches of 2 or more, whose
# projections are matmul library calls that take no part in it, replayed alike with and without (1.34 / 1.36 ms at
# batch 8, 1.59 at batch 64), and stays without. H200, session 12, results/2026-11-30-session12-probes/. Off by
# default: fresh builds' PDL compiles varied widely (generation/build.py, DECODE_PDL).
PDL_OPTIONS: dict = {"triton.enable_pdl": True}
# The fresh prefill (a prompt's first chunk) compiled once for batch 1 and the batched prefill profiles alike
# (KVForward._prefill_fresh). Without it the whole 26-layer step compiled again for batches of 2 or more: the batched
# build's warm-up took 70 s or more longer, and its server's start-up about 30 s more (H200, session 15).
ANY_BATCH_FRESH = True
# The batch-1 step's MLP as two matrix-vector kernels (llmprofiles.generation.mlp), where they can run: inductor's
# multiply-and-reduce form recomputed the whole activation in every program of the down projection. The default of
# an engine whose build did not check them (KVForward's mlp_kernel None); a CUDA build checks them against PyTorch
# (engine.check_mlp_kernel) and its manifest says whether they serve.
MLP_KERNEL = True
# With the MLP kernels, the batch-1 step's attention projections (q/k/v, output) run as the same matrix-vector kernel
# (mlp.linear_op) instead of inductor's reductions. The build's check covers them with the MLP's.
PROJ_KERNEL = True
def b1_options(pdl: bool = False) -> dict:
    """Inductor options of the batch-1 step's compile: WHOLE_B1_OPTIONS, PDL_OPTIONS with ``pdl``, and
    fusion.PERSISTENT_ROWS's cache key."""
    return {**WHOLE_B1_OPTIONS, **(PDL_OPTIONS if pdl else {}), **rows_cache_key()}


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    query_pre_attn_scalar: float
    sliding_window: int
    layer_sliding: tuple[bool, ...]
    rope_theta: tuple[float, ...]  # per layer
    rope_factor: tuple[float, ...]  # per layer (linear scaling; 1.0 = none)
    final_logit_softcapping: float | None
    eos_token_id: int
    bos_token_id: int | None

    @classmethod
    def from_config(cls, cfg: dict) -> ModelShape:
        if cfg.get("model_type") not in SUPPORTED:
            raise ValueError(f"the generate engine supports model types {list(SUPPORTED)}, "
                             f"got {cfg.get('model_type')!r}")
        if cfg.get("attn_logit_softcapping") is not None:
            raise ValueError("attn_logit_softcapping is not supported by the generate engine")
        if cfg.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ValueError(f"hidden_activation {cfg['hidden_activation']!r} is not supported; expected gelu_pytorch_tanh")
        layer_types = cfg["layer_types"]
        rope = cfg["rope_parameters"]
        thetas, factors = [], []
        for t in layer_types:
            p = rope[t]
            kind = p.get("rope_type", "default")
            if kind not in ("default", "linear"):
                raise ValueError(f"rope_type {kind!r} ({t}) is not supported; expected default or linear")
            thetas.append(float(p["rope_theta"]))
            factors.append(float(p.get("factor", 1.0)) if kind == "linear" else 1.0)
        eos = cfg.get("eos_token_id")
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"], num_kv_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
            rms_norm_eps=cfg["rms_norm_eps"], query_pre_attn_scalar=cfg["query_pre_attn_scalar"],
            sliding_window=cfg["sliding_window"], layer_sliding=tuple(t == "sliding_attention" for t in layer_types),
            rope_theta=tuple(thetas), rope_factor=tuple(factors),
            final_logit_softcapping=cfg.get("final_logit_softcapping"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos, bos_token_id=cfg.get("bos_token_id"),
        )


def fuse_weights(shape: ModelShape, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state-dict names to this module's: q/k/v and gate/up concatenated, lm_head tied if absent.

    The source tensors are dropped from the returned dict, so only the fused copy stays alive.
    """
    w = dict(weights)
    out = {"embed": w.pop("model.embed_tokens.weight"), "norm": w.pop("model.norm.weight")}
    out["lm_head"] = w.pop("lm_head.weight", out["embed"])
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out[f"{i}.qkv"] = torch.cat([w.pop(a + "q_proj.weight"), w.pop(a + "k_proj.weight"), w.pop(a + "v_proj.weight")])
        out[f"{i}.o"] = w.pop(a + "o_proj.weight")
        out[f"{i}.q_norm"] = w.pop(a + "q_norm.weight")
        out[f"{i}.k_norm"] = w.pop(a + "k_norm.weight")
        m = p + "mlp."
        out[f"{i}.gate_up"] = torch.cat([w.pop(m + "gate_proj.weight"), w.pop(m + "up_proj.weight")])
        out[f"{i}.down"] = w.pop(m + "down_proj.weight")
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            out[f"{i}.{n}"] = w.pop(p + n + ".weight")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As Gemma3RMSNorm: in float32, scaled by (1 + w), then back to x's dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (1.0 + weight.float())).type_as(x)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def linear(x: torch.Tensor, w: torch.Tensor, gemv: bool = False, kernel: bool = False) -> torch.Tensor:
    """``x @ w.T``. With ``gemv`` (a single-token input), a multiply-and-reduce over ``w``'s rows instead, which
    inductor emits as a reduction kernel that it tunes for the shape and fuses with the norm before it; with
    ``kernel`` too, :func:`llmprofiles.generation.mlp.linear_op` where its kernel can run."""
    if gemv and kernel and mlp.available(x.device):
        return mlp.linear_op(x, w)
    if gemv:
        return (x.reshape(1, -1) * w).sum(-1).reshape(*x.shape[:-1], w.shape[0])
    return x @ w.t()


def qkv_rope(x: torch.Tensor, norm_w: torch.Tensor, qkv_w: torch.Tensor, q_norm_w: torch.Tensor,
             k_norm_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float, heads: int, kv_heads: int,
             head_dim: int, gemv: bool = False, kernel: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer up to attention: norm, fused q/k/v projection, q/k norms, rotary. q ``[B, H, S, D]``; k, v ``[B, S, kvh, D]``."""
    B, S = x.shape[:2]
    h = rms_norm(x, norm_w, eps)
    q, k, v = linear(h, qkv_w, gemv, kernel).split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = rms_norm(q.view(B, S, heads, head_dim), q_norm_w, eps)
    k = rms_norm(k.view(B, S, kv_heads, head_dim), k_norm_w, eps)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q.transpose(1, 2), k, v.view(B, S, kv_heads, head_dim)


def attend_out_mlp(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
                   mask: torch.Tensor, residual: torch.Tensor, o_w: torch.Tensor, post_attn_w: torch.Tensor,
                   pre_ff_w: torch.Tensor, gate_up_w: torch.Tensor, down_w: torch.Tensor, post_ff_w: torch.Tensor,
                   scale: float, eps: float) -> torch.Tensor:
    """A layer from attention on: read each row's slot, grouped-query attention, output projection, norms, MLP.

    q ``[B, H, S, D]``; k_pool, v_pool one layer's pool ``[slots, ctx, kvh, D]``; mask ``[B, 1, S, T]``
    (True = attend) sets how many pool positions ``T`` are read. The query heads of one KV head are
    attended as one matrix, so keys and values are never repeated per head.
    """
    B, H, S, D = q.shape
    T, kvh = mask.shape[-1], k_pool.shape[2]
    g = H // kvh
    # Batched matmuls over the gathered slots: prefill, and decode where the kernel cannot run. In
    # `make bench-generate` on the H200 (gemma-3-1b, 192 positions; before the kernel) a decode step took
    # 1.99 / 2.89 ms at batch 1 / 64 this way, and 2.12 / 6.85 ms with single-query attention written as two
    # fused reductions (inductor split those at batch 64).
    keys = k_pool[slots, :T].permute(0, 2, 3, 1)  # [B, kvh, D, T]
    values = v_pool[slots, :T].transpose(1, 2)  # [B, kvh, T, D]
    scores = (q.reshape(B, kvh, g * S, D) @ keys).float().view(B, kvh, g, S, T) * scale
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype).view(B, kvh, g * S, T)
    attn = (probs @ values).view(B, H, S, D)
    return out_mlp(attn, residual, o_w, post_attn_w, pre_ff_w, gate_up_w, down_w, post_ff_w, eps)


def out_mlp(attn: torch.Tensor, residual: torch.Tensor, o_w: torch.Tensor, post_attn_w: torch.Tensor,
            pre_ff_w: torch.Tensor, gate_up_w: torch.Tensor, down_w: torch.Tensor, post_ff_w: torch.Tensor,
            eps: float, gemv: bool = False, mlp_kernel: bool = False, proj_kernel: bool = False) -> torch.Tensor:
    """A layer after attention (``attn`` ``[B, H, S, D]``): output projection, norms, MLP. With ``mlp_kernel`` (a
    single token), the MLP runs as :func:`llmprofiles.generation.mlp.mlp_op` where its kernels can run; with
    ``proj_kernel``, the output projection as :func:`llmprofiles.generation.mlp.linear_op`."""
    B, H, S, D = attn.shape
    x = linear(attn.transpose(1, 2).reshape(B, S, H * D), o_w, gemv, proj_kernel)
    x = residual + rms_norm(x, post_attn_w, eps)
    h = rms_norm(x, pre_ff_w, eps)
    if mlp_kernel and mlp.available(h.device):
        h = mlp.mlp_op(h, gate_up_w, down_w)
    else:
        gate, up = linear(h, gate_up_w, gemv).chunk(2, dim=-1)
        h = linear(F.gelu(gate, approximate="tanh") * up, down_w, gemv)
    return x + rms_norm(h, post_ff_w, eps)


def compile_dynamic(fn, backend: str = "inductor"):
    """``torch.compile(fn, dynamic=True, fullgraph=True)`` whose compiles take Python floats as constants.

    With dynamic shapes Dynamo makes every Python float it reads a symbol (``self.scale``, the norms' eps), and
    scaled-dot-product attention then needs the scale as a number: Dynamo traced the whole fresh prefill, threw it
    away and traced it again with the floats fixed, and the first trace's AOT graph never hit AOT autograd's cache.
    On CPU (tiny model, a warm cache) the fresh prefill's compile took 15.7 s with the restart and 7.7 s without
    (session 16); the floats are the model's settings, fixed for its life.
    """
    compiled = torch.compile(fn, dynamic=True, fullgraph=True, backend=backend)

    @functools.wraps(fn)
    def call(*args):
        with torch._dynamo.config.patch(specialize_float=True):
            return compiled(*args)

    return call


class KVForward(torch.nn.Module):
    """The step function: weights plus the KV pool ``[layers, slots, max_context, kv_heads, head_dim]``.

    With ``compile``, the two halves of a layer (``qkv_rope``, ``attend_out_mlp``) are compiled
    once, with dynamic shapes, and shared by every layer and every profile; only the pool writes
    between them stay eager. With ``decode_kernel`` (default: on CUDA, where Triton is), a decode step
    (``seq == 1``) attends with :func:`llmprofiles.generation.attention.decode_attention` instead, which
    also writes the pool. Such a step is compiled whole (:meth:`decode_step`; ``whole_decode``, default:
    with ``compile``): once for batch 1, with its projections as multiply-and-reduce (and ``pdl``, see
    PDL_OPTIONS), and once for every batch of 2 or more. On the H200 (gemma-3-1b, fp16, 192 positions; ``make bench-generate``'s engine
    phase, 2026-11-30, session 11) a decode step's graph replayed in 1.21 ms at batch 1 and 1.69 ms at
    batch 64 compiled whole, against 1.52 and 1.93 ms layer by layer with the kernel and 1.82 and 2.69 ms
    with the batched matmuls.
    """

    def __init__(self, shape: ModelShape, weights: dict[str, torch.Tensor], k_pool: torch.Tensor, v_pool: torch.Tensor,
                 compile: bool = False, decode_kernel: bool | None = None, whole_decode: bool | None = None,
                 pdl: bool = False, fresh_prefill: bool = False, mlp_kernel: bool | None = None):
        super().__init__()
        self.shape = shape
        self.w = weights
        self.k_pool, self.v_pool = k_pool, v_pool
        dtype, device = weights["embed"].dtype, weights["embed"].device
        self.embed_scale = torch.tensor(shape.hidden_size ** 0.5).to(dtype)
        self.inv_freq = [
            1.0 / (theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float) / shape.head_dim)) / factor
            for theta, factor in zip(shape.rope_theta, shape.rope_factor)
        ]
        self.inv_freq = [f.to(device) for f in self.inv_freq]
        self.scale = shape.query_pre_attn_scalar ** -0.5
        wrap = compile_dynamic if compile else (lambda f: f)
        self.qkv_rope, self.attend_out_mlp, self.out_mlp = wrap(qkv_rope), wrap(attend_out_mlp), wrap(out_mlp)
        can = attention.available(device, shape.head_dim)
        if decode_kernel and not can:
            raise ValueError(f"the decode attention kernel cannot run on {device} with head_dim {shape.head_dim} "
                             "(it needs Triton, CUDA or TRITON_INTERPRET=1, and a power-of-two head_dim >= 16)")
        self.decode_kernel = (can and device.type == "cuda") if decode_kernel is None else decode_kernel
        # A kernel decode step compiled whole (see decode_step); else layer by layer.
        self.whole_decode = compile if whole_decode is None else whole_decode
        self.compiled = compile
        self.mlp_kernel = mlp_kernel  # the batch-1 step's MLP kernels: None follows MLP_KERNEL when it is compiled
        # A prompt's first chunk attends only to itself (see fresh_prefill), compiled whole with dynamic shapes.
        self.fresh = fresh_prefill
        self.any_batch_fresh = ANY_BATCH_FRESH
        self.decode_b1, self.decode_batch, self.prefill_fresh = self._decode_b1, self._decode_batch, self.fresh_prefill
        if compile:
            self.decode_b1 = torch.compile(self._decode_b1, fullgraph=True, dynamic=False, options=b1_options(pdl))
            self.decode_batch = torch.compile(self._decode_batch, fullgraph=True)
            self.prefill_fresh = compile_dynamic(self.fresh_prefill)

    def rotary(self, layer: int, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq[layer]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def rotaries(self, positions: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (cos, sin) ``[B, S, 1, D]``, computed once per distinct rope setting (local, global)."""
        by_setting: dict[tuple[float, float], tuple[torch.Tensor, torch.Tensor]] = {}
        for i, setting in enumerate(zip(self.shape.rope_theta, self.shape.rope_factor)):
            if setting not in by_setting:
                by_setting[setting] = tuple(t[:, :, None, :] for t in self.rotary(i, positions, dtype))
        return [by_setting[setting] for setting in zip(self.shape.rope_theta, self.shape.rope_factor)]

    def after_attention(self, layer: int) -> tuple[torch.Tensor, ...]:
        """Layer ``layer``'s weights after attention, in out_mlp's (and attend_out_mlp's) order."""
        return tuple(self.w[f"{layer}.{name}"] for name in ("o", "post_attention_layernorm", "pre_feedforward_layernorm",
                                                           "gate_up", "down", "post_feedforward_layernorm"))

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                    write_slots: torch.Tensor, write_pos: torch.Tensor, gemv: bool = False) -> torch.Tensor:
        """A decode step (``[B, 1]`` inputs, as :meth:`forward`'s) written to be compiled whole.

        Every layer attends with :func:`llmprofiles.generation.attention.decode_attention_op`, an operator
        inductor keeps whole, so it fuses everything around it: embedding, rotary, each layer's norms into
        the next layer's projection, the final norm. The attention length plays no part: the kernel reads
        each row's own context.
        """
        s, w, eps = self.shape, self.w, self.shape.rms_norm_eps
        mlp_kernel = gemv and (MLP_KERNEL if self.mlp_kernel is None else self.mlp_kernel)
        proj_kernel = mlp_kernel and PROJ_KERNEL
        x = F.embedding(tokens, w["embed"]) * self.embed_scale
        pos, write_slot, write_at = positions[:, 0], write_slots[:, 0], write_pos[:, 0]
        for i, (cos, sin) in enumerate(self.rotaries(positions, x.dtype)):
            q, k, v = qkv_rope(x, w[f"{i}.input_layernorm"], w[f"{i}.qkv"], w[f"{i}.q_norm"], w[f"{i}.k_norm"],
                               cos, sin, eps, s.num_heads, s.num_kv_heads, s.head_dim, gemv, proj_kernel)
            attn = attention.decode_attention_op(q, k, v, self.k_pool, self.v_pool, i, slots, pos, write_slot,
                                                 write_at, self.scale, s.sliding_window if s.layer_sliding[i] else 0)
            x = out_mlp(attn, x, *self.after_attention(i), eps, gemv, mlp_kernel, proj_kernel)
        return self.logits(x[:, 0])

    def fresh_prefill(self, tokens: torch.Tensor, positions: torch.Tensor, write_slots: torch.Tensor,
                      write_pos: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """A prompt's first chunk (positions ``0..S-1``, no context before it, ``S`` within the sliding window),
        written to be compiled whole: each layer writes the chunk's keys and values into the pool and attends
        to them directly (causal scaled-dot-product attention), without reading the pool back. The padding after
        the prompt is only seen by padding. Logits of token ``last[b]`` of each row, as :meth:`forward`'s.
        """
        s, w, eps = self.shape, self.w, self.shape.rms_norm_eps
        x = F.embedding(tokens, w["embed"]) * self.embed_scale
        for i, (cos, sin) in enumerate(self.rotaries(positions, x.dtype)):
            q, k, v = qkv_rope(x, w[f"{i}.input_layernorm"], w[f"{i}.qkv"], w[f"{i}.q_norm"], w[f"{i}.k_norm"],
                               cos, sin, eps, s.num_heads, s.num_kv_heads, s.head_dim)
            attention.write_kv_op(k, v, self.k_pool, self.v_pool, i, write_slots, write_pos)
            attn = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                                  scale=self.scale, enable_gqa=True)
            x = out_mlp(attn, x, *self.after_attention(i), eps)
        return self.logits(x[torch.arange(x.shape[0], device=x.device), last])

    def _prefill_fresh(self, *inputs: torch.Tensor) -> torch.Tensor:
        """:meth:`fresh_prefill`, compiled once for every batch (``any_batch_fresh``): the batch is marked unbacked,
        so a compile made at batch 1 is not specialised to it and batched prefill profiles reuse it (a backed size
        of 1 is always specialised, and batches of 2 or more would compile the whole step again). The inputs are
        views into one packed buffer per profile (StepInputs), at offsets that grow with the batch, and the compile
        would guard on those offsets: each call passes copies (five small copies, inside a captured graph on CUDA),
        which also keeps the marks off the step's buffers. If that compile fails, the step falls back to one compile
        per batch of 1 and of 2 or more, and says so in the log. Uncompiled, the inputs go as they are."""
        if not self.compiled:
            return self.prefill_fresh(*inputs)
        copies = [t.clone() for t in inputs]
        if self.any_batch_fresh:
            for t in copies:
                torch._dynamo.decorators.mark_unbacked(t, 0)
            try:
                return self.prefill_fresh(*copies)
            except Exception as e:  # noqa: BLE001 - a compile failure; the step itself is the same without the marks
                log.warning("the fresh prefill's one compile for every batch failed, it compiles per batch size: %s",
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                self.any_batch_fresh = False
                copies = [t.clone() for t in inputs]
        return self.prefill_fresh(*copies)

    def _decode_b1(self, *inputs: torch.Tensor) -> torch.Tensor:  # compiled for batch 1 alone: decode_b1
        return self.decode_step(*inputs, gemv=WHOLE_B1_GEMV)

    def _decode_batch(self, *inputs: torch.Tensor) -> torch.Tensor:  # compiled for batches of 2 or more
        return self.decode_step(*inputs)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` -> ``[B, vocab]``: final norm, LM head, soft-capping."""
        logits = rms_norm(x, self.w["norm"], self.shape.rms_norm_eps) @ self.w["lm_head"].t()
        cap = self.shape.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                write_slots: torch.Tensor, write_pos: torch.Tensor, last: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Logits ``[batch, vocab]`` of token ``last[b]`` of each row.

        ``kv_len`` 0: a prompt's first chunk that attends only to itself (:meth:`fresh_prefill`; with
        ``fresh_prefill``).

        tokens, positions ``[B, S]``; token ``(b, t)`` writes its keys and values at
        ``(write_slots[b, t], write_pos[b, t])`` of the pool, and row ``b`` attends to the first
        ``kv_len`` positions of pool slot ``slots[b]``, causally and (on local layers) inside the
        sliding window. ``kv_len`` must exceed every real token's position. Padding tokens write a
        scratch slot, so they never touch a live sequence.
        """
        s, w, eps = self.shape, self.w, self.shape.rms_norm_eps
        B, S = tokens.shape
        if kv_len == 0:
            if not self.fresh:
                raise ValueError("attention length 0 (a chunk that attends only to itself) needs fresh_prefill")
            return self._prefill_fresh(tokens, positions, write_slots, write_pos, last)
        kernel = self.decode_kernel and S == 1
        if kernel and self.whole_decode:
            if B == 1:
                with persistent_rows():  # its compile, at the first call
                    return self.decode_b1(tokens, positions, slots, write_slots, write_pos)
            if self.compiled:  # one compile for every batch of 2 or more
                for t in (tokens, positions, slots, write_slots, write_pos):
                    torch._dynamo.mark_dynamic(t, 0, min=2, max=self.k_pool.shape[1])
            return self.decode_batch(tokens, positions, slots, write_slots, write_pos)
        if not kernel:
            kv_pos = torch.arange(kv_len, device=tokens.device)
            causal = kv_pos[None, None, :] <= positions[:, :, None]  # [B, S, T]
            window = kv_pos[None, None, :] > positions[:, :, None] - s.sliding_window
            masks = {False: causal[:, None], True: (causal & window)[:, None]}
        x = F.embedding(tokens, w["embed"]) * self.embed_scale
        for i, (cos, sin) in enumerate(self.rotaries(positions, x.dtype)):
            q, k, v = self.qkv_rope(x, w[f"{i}.input_layernorm"], w[f"{i}.qkv"], w[f"{i}.q_norm"], w[f"{i}.k_norm"],
                                    cos, sin, eps, s.num_heads, s.num_kv_heads, s.head_dim)
            if kernel:
                attn = attention.decode_attention(q, k, v, self.k_pool[i], self.v_pool[i], slots, positions[:, 0],
                                                  write_slots[:, 0], write_pos[:, 0], self.scale,
                                                  s.sliding_window if s.layer_sliding[i] else None, kv_len)
                x = self.out_mlp(attn, x, *self.after_attention(i), eps)
                continue
            # Write this step's keys and values into each row's slot; attention then reads the slot back.
            attention.write_kv_op(k, v, self.k_pool, self.v_pool, i, write_slots, write_pos)
            x = self.attend_out_mlp(q, self.k_pool[i], self.v_pool[i], slots, masks[s.layer_sliding[i]], x,
                                    *self.after_attention(i), self.scale, eps)
        return self.logits(x[torch.arange(B, device=x.device), last])  # only the tokens whose logits are used


def kv_pool_bytes(shape: ModelShape, slots: int, max_context: int, dtype: torch.dtype) -> int:
    """Bytes of the K and V pools for ``slots`` sequences (plus one scratch slot) of ``max_context``."""
    per = shape.num_layers * (slots + 1) * max_context * shape.num_kv_heads * shape.head_dim
    return 2 * per * torch.tensor([], dtype=dtype).element_size()
