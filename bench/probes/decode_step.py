"""The generate engine's decode step on the GPU, compiled by layer against compiled whole, side by side.

gemma-3-1b shapes in fp16 with random weights (the preset's config, the declared generate spec), the KV
pool filled with random keys and values. For each form, every decode bucket of interest is captured and
timed at a short and a long context (the engine call, synchronised, and the graph replay alone):

- ``matmuls``: layer by layer, attention as batched matmuls over the gathered slots (two compiles per layer);
- ``kernel``: layer by layer, attention with the decode kernel;
- ``whole``: the step compiled whole around the kernel (``KVForward.decode_step``), batch 1 with each of
  the batch-1 variants below (``--b1-variants cdt+gemv+mlp,cdt+gemv+mlp+proj,cdt+gemv+mlp,cdt+gemv+mlp+proj``:
  the attention projections' kernel against inductor's reductions, twice each, each a compile of its own), batches of 2 or more in one compile over the batch with each batch variant.

Every row also gives the largest difference of its logits from the first form's at the same batch and
context (``max_abs_diff``): a variant that is fast and wrong (programmatic dependent launch reading what
the kernel before it has not written yet) shows there.

Run on the GPU machine::

    python3 -m bench.probes.decode_step --out $OUT/decode_step.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.generate_bench import sync_fn, time_decode
from llmprofiles import models
from llmprofiles.generation import forward
from llmprofiles.generation.engine import GenerationEngine
from llmprofiles.runtimes import fusion
from llmprofiles.profiles.sets import generate_spec

# name: (inductor options over the defaults, projections as multiply-and-reduce, the MLP kernels (forward.MLP_KERNEL),
# the attention projections' kernel with them (forward.PROJ_KERNEL), fusion.PERSISTENT_ROWS)
CDT = {"coordinate_descent_tuning": True}
B1_VARIANTS = {
    "cdt+gemv": (CDT, True, False, False, 0),
    "cdt+gemv+mlp": (CDT, True, True, False, 0),
    "cdt+gemv+mlp+proj": (CDT, True, True, True, 0),
    "cdt+gemv+mlp+proj+rows": (CDT, True, True, True, 4096),
    # Inductor's own answer: persistent and looped forms of each reduction, the faster chosen at the first call (its
    # second compile in one process failed inside Triton in session 18).
    "cdt+gemv+mlp+proj+mk": ({**CDT, "triton.multi_kernel": 1}, True, True, True, 0),
    "gemv": ({}, True, False, False, 0),
    "cdt": (CDT, False, False, False, 0),
    "cdt+gemv+pdl": ({**CDT, "triton.enable_pdl": True}, True, False, False, 0),
}
# name: inductor options of the compile for batches of 2 or more
BATCH_VARIANTS = {"default": {}, "pdl": {"triton.enable_pdl": True}}


def random_engine(model_name: str, device: torch.device, **kw) -> GenerationEngine:
    """A generate engine over a preset's shapes with its random weights (fp16 on CUDA), its declared spec."""
    model = models.load_model(model_name, torch.float16 if device.type == "cuda" else torch.float32, device)
    shape = forward.ModelShape.from_config(model.config.to_dict())
    weights = forward.fuse_weights(shape, {k: v.detach() for k, v in model.state_dict().items()})
    return GenerationEngine(shape, weights, generate_spec(model_name), device, **kw)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--contexts", default="192,1900")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--b1-variants", default=",".join(B1_VARIANTS))
    p.add_argument("--batch-variants", default=",".join(BATCH_VARIANTS))
    p.add_argument("--forms", default="matmuls,kernel,whole", help="which of the forms above to time")
    p.add_argument("--model", default="gemma-3-1b", help="a preset (tiny, with --device cpu, to try the probe)")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    device = torch.device(a.device)
    spec = generate_spec(a.model)
    engine = random_engine(a.model, device)
    engine.forward.k_pool.normal_()
    engine.forward.v_pool.normal_()
    sync = sync_fn(device)
    batches = [int(b) for b in a.batches.split(",")]
    contexts = [int(c) for c in a.contexts.split(",")]
    forms = a.forms.split(",")
    rows, reference = [], {}

    def run(form: str, only: list[int] | None = None) -> None:
        engine.graphs = {}
        for b in only or batches:
            for c in contexts:
                t0 = time.perf_counter()
                logits = engine.decode(list(range(b)), [5] * b, [c] * b)[0].float()  # compiles (first time), captures
                sync()
                first_s = time.perf_counter() - t0
                diff = (logits - reference.setdefault((b, c), logits)).abs().max().item()
                r = time_decode(engine, b, c, a.iters, 20, sync)
                row = {"form": form, "batch": b, "context": c, "first_call_s": first_s, "max_abs_diff": diff,
                       "call_p50_ms": r["call_ms"]["p50_ms"], "replay_p50_ms": (r["replay_ms"] or {}).get("p50_ms")}
                print(json.dumps(row), flush=True)
                rows.append(row)

    f = engine.forward
    f.decode_kernel, f.whole_decode = False, False
    if "matmuls" in forms:
        run("matmuls")
    f.decode_kernel = True
    if "kernel" in forms:
        run("kernel")
    if "whole" not in forms:
        return save(a, spec, rows)
    f.whole_decode = True
    for name in filter(None, a.b1_variants.split(",")):  # a name given twice runs twice (a compile of its own)
        options, gemv, forward.MLP_KERNEL, forward.PROJ_KERNEL, fusion.PERSISTENT_ROWS = B1_VARIANTS[name]
        forward.WHOLE_B1_GEMV = gemv
        options = {**options, **fusion.rows_cache_key()}  # forward's dispatch sets the rows
        f.decode_b1 = torch.compile(f._decode_b1, fullgraph=True, dynamic=False, options=options)
        torch._dynamo.reset()
        run(f"whole {name}", [1])
    for name in filter(None, a.batch_variants.split(",")):
        f.decode_batch = torch.compile(f._decode_batch, fullgraph=True, options=BATCH_VARIANTS[name])
        torch._dynamo.reset()
        run(f"whole {name}", [b for b in batches if b > 1])
    save(a, spec, rows)


def save(a, spec, rows: list[dict]) -> None:
    a.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
                                 "spec": spec.to_dict(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
