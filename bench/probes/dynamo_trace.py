"""Warm-compile time of the dynamic prefill graph, with and without specialised floats (CPU is enough).

Run each variant twice with its own inductor cache; the second run is the warm
one (inductor is a cache hit, Dynamo and AOTAutograd still run), as when the
server loads a built engine. bench/NOTES.md has the results.

    TORCHINDUCTOR_CACHE_DIR=/tmp/c0 .venv/bin/python bench/probes/dynamo_trace.py gemma-3-1b 0   # twice
    TORCHINDUCTOR_CACHE_DIR=/tmp/c1 .venv/bin/python bench/probes/dynamo_trace.py gemma-3-1b 1   # twice
"""

import sys
import time

import torch
from torch._dynamo.utils import compile_times

from llmprofiles import models
from llmprofiles.runtimes import fusion

model, specialize = sys.argv[1], sys.argv[2] == "1"
wrapper = models.LastTokenLM(models.load_model(model, torch.float32)).eval()
fusion.fuse_projections(wrapper)
fusion.use_gemv(wrapper)
ids = torch.randint(0, wrapper.model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
pos = models.default_position_ids(ids)
with torch.no_grad():
    ref = wrapper(ids, pos)
fn = torch.compile(wrapper, dynamic=True, fullgraph=True, options=fusion.compile_options())
t0 = time.perf_counter()
with torch.no_grad(), torch._dynamo.config.patch(specialize_float=specialize):
    out = fn(ids, pos)
print(f"{model} specialize_float={specialize}: compile + first call {time.perf_counter() - t0:.1f} s, "
      f"max diff vs eager {(out - ref).abs().max().item():.2g}")
print([line for line in compile_times(repr="str", aggregate=True).splitlines()
       if line.startswith(("compile_attempt", "bytecode_tracing"))])
