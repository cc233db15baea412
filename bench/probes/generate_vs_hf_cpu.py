"""CPU, side by side in one process: HF ``generate`` against the generate engine's scheduler.

    python -m bench.probes.generate_vs_hf_cpu

The tiny preset in fp32, 64-token prompts, greedy, batches 1 and 8. Time per decoded token step
from the difference between 40 and 8 new tokens (the better of two tries), so prefill and set-up
cancel out. HF uses its default dynamic cache; the engine runs its padded step profiles eagerly.
"""

import time

import torch

from llmprofiles import models
from llmprofiles.generation.engine import load_generation_engine
from llmprofiles.generation.scheduler import GenerateRequest, Scheduler


class NoText:
    def decode(self, ids, skip_special_tokens=True):
        return ""

    def decode_batch(self, batch, skip_special_tokens=True):
        return [""] * len(batch)


def main() -> None:
    hf = models.load_model("tiny", torch.float32)
    hf.config.use_cache = True
    engine = load_generation_engine("model_repository/generate/1", "cpu")

    def hf_seconds(batch: int, n: int) -> float:
        ids = torch.randint(3, 32000, (batch, 64), generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t0

    def engine_seconds(batch: int, n: int) -> float:
        sched = Scheduler(engine, NoText(), lambda out: None)
        for i in range(batch):
            sched.submit(GenerateRequest([3 + i] * 64, max_tokens=n, min_tokens=n))
        t0 = time.perf_counter()
        while sched.run_once():
            pass
        return time.perf_counter() - t0

    for batch in (1, 8):
        for name, fn in (("HF generate", hf_seconds), ("generate engine", engine_seconds)):
            fn(batch, 4)
            step = min((fn(batch, 40) - fn(batch, 8)) / 32 for _ in range(2))
            print(f"{name:16s} batch {batch}: {step * 1e3:.2f} ms per token step, {batch / step:,.0f} tokens/s",
                  flush=True)


if __name__ == "__main__":
    main()
