"""Does programmatic dependent launch work here? Run as ``python -m llmprofiles.runtimes.pdl_probe``.

The build tries PDL (``compiled.TUNE_VARIANTS``) only if this probe exits 0. It runs in a child
process because a kernel fault poisons the CUDA context of the process that ran it: a build that
tried PDL in-process on a driver or Triton without it could not go on with the other attempts.

The probe compiles a chain of dependent reductions (the shape of a decode step: norm, GEMV, norm,
GEMV) with ``triton.enable_pdl``, captures it in a CUDA graph as the engine does, replays it and
compares the result with eager. Exit status: 0 works; 1 no PDL code generated, a wrong result or
an error; 2 no CUDA GPU of compute capability 9 or later.
"""

from __future__ import annotations

import sys

import torch
from torch._inductor.utils import run_and_get_code

TOLERANCE = 0.05  # relative to the largest output; fp16 inputs, fp32 accumulation


def chain(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    for _ in range(4):
        h = (x * torch.rsqrt(x.float().pow(2).mean() + 1e-6)).to(x.dtype)
        h = (h * w1).sum(-1)
        h = h * torch.rsqrt(h.float().pow(2).mean() + 1e-6).to(h.dtype)
        x = (h * w2).sum(-1)
    return x


def main() -> int:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        print("pdl probe: needs a CUDA GPU of compute capability 9 or later", file=sys.stderr)
        return 2
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1024, device="cuda", generator=g).half()
    w1 = (torch.randn(2048, 1024, device="cuda", generator=g) / 32).half()
    w2 = (torch.randn(1024, 2048, device="cuda", generator=g) / 45).half()
    fn = torch.compile(chain, fullgraph=True, options={"triton.enable_pdl": True, "triton.cudagraphs": False})
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _, code = run_and_get_code(fn, x, w1, w2)
        for _ in range(2):
            fn(x, w1, w2)
    if not any("gdc_wait" in c for c in code):
        print("pdl probe: inductor generated no PDL code (triton.enable_pdl ignored)", file=sys.stderr)
        return 1
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x, w1, w2)
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    ref = chain(x, w1, w2).float()
    diff = (out.float() - ref).abs().max().item()
    bound = TOLERANCE * max(1.0, ref.abs().max().item())
    ok = diff <= bound
    print(f"pdl probe: max abs diff {diff:.4g} (allowed {bound:.4g}): {'ok' if ok else 'WRONG'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
