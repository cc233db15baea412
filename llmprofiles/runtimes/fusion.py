"""Projections and attention shaped for batch-1 decode, for the compiled runtime.

At batch 1 a decode step is a chain of small matrix-vector products, and each
small product costs about as much in latency as in bytes: on the H200 the
1152x256 ``k_proj`` of gemma-3-1b took longer than the 1152x6912 ``gate_proj``
(autotune timings, 2026-11-29). q/k/v and gate/up read the same input, so each
group becomes one product over the concatenated weights. The originals are
dropped, so the weights are still held once, and every profile of the engine
uses the fused module.

Each projection keeps its name and becomes a slice of the group's product, so
the model's own forward code runs unchanged. torch.compile traces that product
once per slice; :class:`DedupeProducts` merges the identical copies, so the
compiled graph computes it once.

:func:`use_gemv` then has every projection compute a single-token input as a
multiply-and-reduce, which inductor emits as a reduction kernel tuned for that
shape, instead of a matmul template padded to 16 rows. Inputs of several tokens
(prefill) keep the GEMM.

:func:`use_single_query_attention` does the same for attention: a single query
token's attention is computed as two reductions that inductor fuses with the
norms and rotary embedding around them, instead of one SDPA kernel per layer.
Prompts of several tokens keep SDPA. Measured effects: ``bench/NOTES.md``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

# Projections that read the same input, in the order their outputs are concatenated.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class Projection(nn.Module):
    """``x @ weight.T + bias``.

    With ``gemv`` set (see :func:`use_gemv`), a single-token input is computed as a
    multiply-and-reduce over the weight's rows instead, which inductor emits as one
    reduction kernel that it can tune and fuse with its neighbours. Every other
    input keeps the GEMM, so prefill is unaffected.
    """

    gemv = False

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        # An existing Parameter is kept as is, so tied weights stay one tensor.
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemv and x.numel() == x.shape[-1]:
            out = (x.reshape(1, -1) * self.weight).sum(-1)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)


class ProjectionSlice(nn.Module):
    """Columns ``[start, stop)`` of a :class:`Projection`'s output: stands in for one projection."""

    def __init__(self, fused: Projection, start: int, stop: int):
        super().__init__()
        self.fused, self.start, self.stop = fused, start, stop
        self.in_features, self.out_features = fused.weight.shape[1], stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.start:self.stop]


def _fusable(linears: list[Any]) -> bool:
    first = linears[0]
    return all(isinstance(m, nn.Linear) for m in linears) and all(
        m.in_features == first.in_features and m.weight.dtype == first.weight.dtype
        and m.weight.device == first.weight.device and (m.bias is None) == (first.bias is None)
        for m in linears)


@torch.no_grad()
def fuse_projections(model: nn.Module) -> int:
    """Fuse every group of :data:`GROUPS` found in ``model``, in place. Returns how many groups were fused."""
    fused = 0
    for module in list(model.modules()):
        for group in GROUPS:
            linears = [getattr(module, name, None) for name in group]
            if not _fusable(linears):
                continue
            weight = torch.cat([m.weight for m in linears])
            bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
            whole, start = Projection(weight, bias), 0
            for name, m in zip(group, linears):
                setattr(module, name, ProjectionSlice(whole, start, start + m.out_features))
                start += m.out_features
            fused += 1
    return fused


@torch.no_grad()
def use_gemv(model: nn.Module) -> int:
    """Every projection computes a single token as a reduction (a GEMV), tuned by inductor.

    Plain ``nn.Linear`` layers become :class:`Projection` over the same weight
    tensors (no copy). Returns how many projections were switched.
    """
    switched = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                child = Projection(child.weight, child.bias)
                setattr(module, name, child)
            if isinstance(child, Projection) and not child.gemv:
                child.gemv = True
                switched += 1
    return switched


# --- the gated MLP as two matrix-vector kernels -----------------------------------


_MLP_KERNELS = False  # set by mlp_kernels


@contextlib.contextmanager
def mlp_kernels(on: bool = True):
    """Inside (with ``on``), the MLPs :func:`use_mlp_kernel` switched compute a single token with the kernels; outside,
    with their own forward. A compile bakes in the setting it was traced under, with no guard on it: a static
    profile's compile (a CUDA graph) takes the kernels, a dynamic profile's keeps inductor's form. Each launch of
    these kernels costs tens of microseconds of Python outside a CUDA graph (about 31 us, session 19's probe).
    llm_single's decode, served by its dynamic profile, took 6.4 and 7.7 ms with them (session 19) and 5.9 and
    3.7 ms without (session 20, two fresh builds): its builds vary too, so how much the kernels cost it there
    was not measured side by side."""
    global _MLP_KERNELS
    before, _MLP_KERNELS = _MLP_KERNELS, on
    try:
        yield
    finally:
        _MLP_KERNELS = before


@torch.compiler.assume_constant_result
def _mlp_kernels_on() -> bool:
    return _MLP_KERNELS


def _kernel_mlp_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from llmprofiles.generation import mlp  # only where use_mlp_kernel switched an MLP

    if _mlp_kernels_on() and x.numel() == x.shape[-1] and mlp.available(x.device):
        return mlp.mlp_op(x, module.gate_proj.fused.weight, module.down_proj.weight)
    return type(module).forward(module, x)


def use_mlp_kernel(model: nn.Module) -> int:
    """Every gated tanh-GELU MLP (Gemma's) whose gate and up are one fused projection (:func:`fuse_projections`)
    computes a single token with the generate engine's MLP kernels (``llmprofiles.generation.mlp``: gate and up
    with the activation in one kernel, then down), under :func:`mlp_kernels` and where they can run; other inputs,
    other devices, and calls outside :func:`mlp_kernels` keep its own forward. Returns how many MLPs were switched.

    Inductor inlines ``gelu(gate) * up`` into the down projection's reduction, so every program of that kernel
    recomputes the whole activation: ``llm``'s batch-1 step had the same 9 us kernel per layer as generate's had.
    ``compiled.prepare`` switches them where the build's check kept the kernels (bench/NOTES.md, session 19).
    """
    switched = 0
    for module in model.modules():
        gate, up, down = (getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
        if not (isinstance(gate, ProjectionSlice) and isinstance(up, ProjectionSlice) and gate.fused is up.fused):
            continue
        n, whole = gate.out_features, gate.fused
        if (gate.start, up.start, up.stop) != (0, n, 2 * n) or whole.weight.shape[0] != 2 * n or whole.bias is not None:
            continue
        act = getattr(getattr(module, "config", None), "hidden_activation", None)
        if not isinstance(down, (nn.Linear, Projection)) or down.bias is not None or act != "gelu_pytorch_tanh":
            continue
        if "forward" not in vars(module):  # not switched already
            module.forward = _kernel_mlp_forward.__get__(module)
            switched += 1
    return switched


# --- one-row reductions kept in registers ----------------------------------------

# A batch-1 decode step's norms reduce one row of the hidden size (1,152 for gemma-3-1b). Inductor keeps a reduction's row
# in registers ("persistent") up to 1,024 values; past that it loops over the row once per reduction it fused, each
# pass reading it back. The kernel that ends a layer (post-feedforward norm, residual, the next layer's input norm)
# took 4.6 us a layer that way in generate's step, 114.8 us of it (H200, session 18). Under persistent_rows, a compile
# keeps single-row reductions of up to PERSISTENT_ROWS values persistent (0: inductor's rule): that kernel then took
# 2.0 us, and generate's step replayed in 1.118 / 1.104 ms against 1.172 / 1.135 ms, side by side in one process
# (bench/results/2026-12-01-session18-kernels/). generate's batch-1 step and llm's static profiles compile under it.
PERSISTENT_ROWS = 4096


def _persistent_rows_choices(limit: int):
    """Inductor's heuristics, but a reduction of one row of at most ``limit`` values persistent."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.virtualized import V

    class PersistentRows(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction):
            sizes = V.graph.sizevars
            if (not cooperative_reduction and sizes.statically_known_equals(features.numel, 1)
                    and sizes.statically_known_leq(features.reduction_numel, limit)):
                return True
            return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    return PersistentRows()


@contextlib.contextmanager
def persistent_rows(limit: int | None = None):
    """Inside, inductor's compiles keep one-row reductions of up to ``limit`` values persistent (default
    PERSISTENT_ROWS; nothing changes when it is 0). Pair it with :func:`rows_cache_key` in the compile's options."""
    limit = PERSISTENT_ROWS if limit is None else limit
    if not limit:
        yield
        return
    from torch._inductor.virtualized import V

    with V.set_choices_handler(_persistent_rows_choices(limit)):
        yield


def rows_cache_key(limit: int | None = None) -> dict:
    """Inductor options that put :func:`persistent_rows`'s ``limit`` in the compile cache's key: a graph pass that
    changes nothing, named by a uuid. The choice is not in inductor's config, and a cached compile made without it
    must not serve a compile with it, nor the other way. Default PERSISTENT_ROWS; nothing for 0."""
    limit = PERSISTENT_ROWS if limit is None else limit
    if not limit:
        return {}
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class CacheKey(CustomGraphPass):
        def __call__(self, graph) -> None:
            pass

        def uuid(self) -> str:
            return f"llmprofiles-persistent-rows-{limit}"

    return {"post_grad_custom_post_pass": CacheKey()}


# --- single-query attention -----------------------------------------------------

SINGLE_QUERY_ATTENTION = "llmprofiles_single_query"


def single_query_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """HF attention function: one query token as multiply-and-reduce ops, anything else through SDPA.

    With one query token the attention is two small reductions (scores over the
    head dim, output over the keys), which inductor fuses with the norms and
    rotary embedding around them; SDPA is an opaque kernel per layer. The math is
    the same: fp32 scores, softmax over every key the mask allows, fp32 sums.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or dropout or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query.reshape(batch, kv_heads, heads // kv_heads, 1, dim).float()  # query heads grouped by their KV head
    scores = (q * key.float()[:, :, None]).sum(-1) * (dim ** -0.5 if scaling is None else scaling)  # [b, kv, group, keys]
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, -kv_len:]  # [b, 1, 1, keys] over [b, kv, group, keys]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(-1)
    out = (probs[..., None] * value.float()[:, :, None]).sum(-2)  # [b, kv, group, dim]
    return out.to(query.dtype).reshape(batch, 1, heads, dim), None


def use_single_query_attention(model: nn.Module) -> bool:
    """A model on SDPA attention computes one query token with :func:`single_query_attention`; masks stay SDPA's.

    Returns whether the model was switched (models on other attention implementations are left alone).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    if config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(SINGLE_QUERY_ATTENTION, single_query_attention)
    AttentionMaskInterface.register(SINGLE_QUERY_ATTENTION, sdpa_mask)
    config._attn_implementation = SINGLE_QUERY_ATTENTION
    return True


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return type(value).__name__, str(value)  # the same expression over the same symbols
    return value


class DedupeProducts(CustomGraphPass):
    """Post-grad pass: merge identical matrix products and the views that feed them.

    Only views and matmuls are merged: both are pure, and the post-grad graph is
    still functional when custom pre-passes run.
    """

    def __call__(self, graph: torch.fx.Graph) -> None:
        seen: dict[tuple, torch.fx.Node] = {}
        for node in list(graph.nodes):
            target = node.target
            if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
                continue
            if not (target.is_view or target in MATMULS):
                continue
            key = (target, _frozen(node.args), _frozen(node.kwargs))
            try:
                hash(key)
            except TypeError:  # e.g. a symbolic size in the args
                continue
            if key in seen:
                node.replace_all_uses_with(seen[key])
                graph.erase_node(node)
            else:
                seen[key] = node

    def uuid(self) -> bytes:  # lets the FX graph cache (and `make build`'s saved artifacts) cover this pass
        return get_hash_for_files((__file__,))


def compile_options() -> dict[str, Any]:
    return {"post_grad_custom_pre_pass": DedupeProducts()}
