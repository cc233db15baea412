"""What ``serving.validate`` costs per decode request, on the CPU (the built ``llm`` engine; no GPU needed).

    .venv/bin/python bench/probes/validate_cost.py   # after `make build`
"""

import time

import torch

from llmprofiles.runtimes.load import load_engine
from llmprofiles.serving.llm import validate

engine = load_engine("model_repository/llm/1", "cpu")
ids, pos = torch.tensor([[5]]), torch.tensor([[7]])
for _ in range(200):
    validate(engine, ids, pos)
n = 2000
t0 = time.perf_counter()
for _ in range(n):
    validate(engine, ids, pos)
print(f"validate: {(time.perf_counter() - t0) / n * 1e6:.1f} us per decode request")
