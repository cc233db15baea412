"""The batch-1 MLP as two matrix-vector kernels: gate and up with the activation, then down; the attention
projections as the second of them.

At batch 1 every projection is a matrix-vector product, bound by reading its weights. Written as
multiply-and-reduce (:func:`llmprofiles.generation.forward.linear`), inductor fuses each one with the
norm before it, but it also fuses the activation ``gelu(gate) * up`` into the down projection's
reduction: every program of that kernel recomputes the whole 6,912-wide activation for its own rows.
On the H200 the down projection (1152 x 6912, 15.9 MB) took 9.7 us a layer that way, 1.6 TB/s, and
gate/up (31.8 MB) 10.6 us. With the two kernels below the pair takes 16.1 us a layer (3.0 TB/s), and the
batch-1 step's graph replayed in 1.24-1.26 ms against 1.41-1.55 ms, side by side in one process
(bench/results/2026-11-30-session17-mlp/, README). Here:

- one kernel reads the gate and up rows of the fused ``gate_up`` weight side by side, and each program
  finishes its own rows of the activation: ``gelu(h . gate_i) * (h . up_i)``, rounded to the weights'
  dtype where the unfused step rounds (after each projection, after the activation);
- a second kernel, the same code without the activation, multiplies the activation by ``down``.

The same kernel without the activation (:func:`linear_op`) runs the step's attention projections too (q/k/v,
output): inductor's reductions took 3.9 us (with the input norm fused in) and 2.4 us a layer there, and with it
the step replayed in 1.163-1.175 ms against 1.210-1.239 ms, side by side in one process
(bench/results/2026-12-01-session18-kernels/).

Each kernel's block sizes are chosen by Triton's autotuner on its first call (the warm-up, before any
graph is captured), per weight shape. A CUDA build records them in its manifest, and the server pins them
(:func:`pin`): it runs the kernels the build measured, without autotuning again. Off CUDA, or without Triton,
the same arithmetic runs in PyTorch.
With ``TRITON_INTERPRET=1`` set when this module is imported, the kernels run on the CPU in Triton's
interpreter, at one fixed block size (:data:`FIXED`; the tests do, where Triton is installed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmprofiles.generation.attention import INTERPRETED, triton

if triton is not None:
    import triton.language as tl

# (rows per program, weight columns per iteration, warps): tried in turn by the autotuner on the GPU. Each program
# holds two float32 tiles of rows x columns: at most 4,096 values each (16 x 512 spilled registers, and its compile
# and benchmark made the GPU tests' autotuning run past their time at gemma-3-1b's shapes in float32). One or two
# rows per program give the down projection (1,152 rows) more programs than the GPU has processors.
CONFIGS = ([(n, k, w) for n in (4, 8, 16) for k in (128, 256, 512) for w in (4, 8) if n * k <= 4096]
           + [(1, 1024, 4), (1, 2048, 4), (2, 512, 4), (2, 1024, 4)])
# One block size for every shape instead of the autotuner's choice: always in Triton's interpreter (the CPU tests);
# the GPU tests set it for their small odd shapes, whose autotuning (a compile per block size, per shape) would take minutes.
FIXED: tuple[int, int, int] | None = (4, 64, 4) if INTERPRETED else None
# Block sizes per weight shape (N, K, gated) from the build's manifest (pin): used instead of the autotuner.
PINNED: dict[tuple[int, int, bool], tuple[int, int, int]] = {}


def available(device: torch.device) -> bool:
    """Whether the kernels can run for this device."""
    return triton is not None and (device.type == "cuda" or INTERPRETED)


if triton is not None:
    def _gemv(x_ptr, w_ptr, out_ptr, N, K: tl.constexpr, GATED: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        live = rows < N
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            inside = cols < K
            x = tl.load(x_ptr + cols, mask=inside, other=0.0).to(tl.float32)[None, :]
            mask = live[:, None] & inside[None, :]
            w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
            acc += w.to(tl.float32) * x
            if GATED:  # the up rows follow the N gate rows
                u = tl.load(w_ptr + (rows + N)[:, None] * K + cols[None, :], mask=mask, other=0.0)
                acc_up += u.to(tl.float32) * x
        dtype = out_ptr.dtype.element_ty
        y = tl.sum(acc, axis=1)
        if GATED:
            g = y.to(dtype).to(tl.float32)
            up = tl.sum(acc_up, axis=1).to(dtype).to(tl.float32)
            # gelu, tanh form: 0.5 g (1 + tanh(z)), and 1 + tanh(z) = 2 sigmoid(2z)
            gelu = g * tl.sigmoid(2.0 * 0.7978845608028654 * (g + 0.044715 * g * g * g))
            y = gelu.to(dtype).to(tl.float32) * up
        tl.store(out_ptr + rows, y.to(dtype), mask=live)

    _gemv_fixed = triton.jit(_gemv)
    _gemv_tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w) for n, k, w in CONFIGS],
        key=["N", "K", "GATED"])(triton.jit(_gemv))


def chosen() -> list[dict]:
    """The block sizes in effect per weight shape: pinned (:func:`pin`), then the autotuner's choices so far. Each
    ``{"n", "k", "gated", "block_n", "block_k", "warps"}``: what a build records in its manifest."""
    out = {key: config for key, config in PINNED.items()}
    if triton is not None and FIXED is None:
        for key, config in getattr(_gemv_tuned, "cache", {}).items():  # the key: N, K, GATED, then dtypes
            try:
                n, k, gated = key[:3]
                out.setdefault((int(n), int(k), bool(gated)),
                               (config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], config.num_warps))
            except (TypeError, ValueError, KeyError, AttributeError):  # another Triton's layout: not recorded
                continue
    return [{"n": n, "k": k, "gated": gated, "block_n": bn, "block_k": bk, "warps": w}
            for (n, k, gated), (bn, bk, w) in sorted(out.items())]


def pin(entries: list[dict]) -> None:
    """Use these block sizes (as :func:`chosen` gives them) for their weight shapes instead of autotuning: the server
    runs the kernels the build measured, and its start-up skips the autotuner's benchmarks. Raises ValueError,
    naming the entry, for one that is not a shape and power-of-two block sizes."""
    pinned = {}
    for e in entries:
        try:
            key = (int(e["n"]), int(e["k"]), bool(e["gated"]))
            config = (int(e["block_n"]), int(e["block_k"]), int(e["warps"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"MLP kernel block sizes: {e!r} is not {{n, k, gated, block_n, block_k, warps}}") from None
        if min(*key[:2], *config) < 1 or any(v & (v - 1) for v in config):
            raise ValueError(f"MLP kernel block sizes: {e!r} needs positive sizes and power-of-two blocks and warps")
        pinned[key] = config
    PINNED.update(pinned)


def gemv(x: torch.Tensor, w: torch.Tensor, gated: bool) -> torch.Tensor:
    """``w @ x`` for ``x`` ``[K]`` and ``w`` ``[N, K]`` (row-major); with ``gated``, ``w`` is ``[2N, K]`` (gate rows,
    then up rows) and the result ``gelu(gate) * up`` ``[N]``."""
    n, k = w.shape[0] // (2 if gated else 1), w.shape[1]
    if w.stride() != (k, 1) or x.numel() != k:
        raise ValueError(f"gemv needs a row-major weight [N, K] and an input of K={k} values; got weight "
                         f"{tuple(w.shape)} with strides {w.stride()} and an input of {x.numel()}")
    x = x.reshape(k).contiguous()
    out = torch.empty(n, dtype=w.dtype, device=w.device)
    fixed = FIXED if FIXED is not None else PINNED.get((n, k, gated))
    if fixed is not None:
        bn, bk, warps = fixed
        _gemv_fixed[(triton.cdiv(n, bn),)](x, w, out, n, K=k, GATED=gated, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    else:
        _gemv_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](x, w, out, n, K=k, GATED=gated)
    return out


def torch_mlp(h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The same MLP in PyTorch: what the kernels replace, and what a build checks them against."""
    gate, up = F.linear(h, gate_up).chunk(2, dim=-1)
    return F.linear(F.gelu(gate, approximate="tanh") * up, down)


@torch.library.custom_op("llmprofiles::mlp_gemv", mutates_args=())
def mlp_op(h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """``down @ (gelu(gate) * up)`` of one token ``h`` ``[..., hidden]`` (one token in all): the two kernels above,
    as one operator that ``torch.compile`` keeps whole; off CUDA, without Triton, the same in PyTorch."""
    if not available(h.device):
        return torch_mlp(h, gate_up, down)
    act = gemv(h, gate_up, gated=True)
    return gemv(act, down, gated=False).reshape(*h.shape[:-1], down.shape[0])


@mlp_op.register_fake
def _(h, gate_up, down):
    return h.new_empty(*h.shape[:-1], down.shape[0])


@torch.library.custom_op("llmprofiles::linear_gemv", mutates_args=())
def linear_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` of one token ``x`` ``[..., K]`` (one token in all): the kernel above without the activation, for
    the batch-1 step's attention projections (q/k/v, output). Inductor's reduction for q/k/v (1536 x 1152) took
    3.9 us a layer, 0.9 TB/s, and for the output projection 2.4 us (H200, step_kernels_mlp.json, session 17). Off
    CUDA, without Triton, ``F.linear``."""
    if not available(x.device):
        return F.linear(x, w)
    return gemv(x, w, gated=False).reshape(*x.shape[:-1], w.shape[0])


@linear_op.register_fake
def _(x, w):
    return x.new_empty(*x.shape[:-1], w.shape[0])
