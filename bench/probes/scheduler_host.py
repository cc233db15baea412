"""The scheduler thread's own host work per decode step, without a model: where "host" goes.

Through Triton on the H200 at 64 streams the scheduler's parts other than the engine, sampling and sending
took 1.1-1.35 ms per decode step (``llm_generate_scheduler_seconds_total``, bench/NOTES.md, session 11). This
runs the real Scheduler over an engine that returns fixed logits at once (no model, no GPU), the build's real
tokenizer and a no-op emit, so what is left is that host work: detokenizing, end checks, queueing responses,
scheduling. It prints the scheduler's parts in ms per decode step and, with ``--profile``, the costliest
functions. Needs a generate build (``make build``; the tiny one will do)::

    python -m bench.probes.scheduler_host --streams 64
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import numpy as np
import torch

from bench.generate_bench import with_host
from llmprofiles.generation.kvcache import SlotPool
from llmprofiles.generation.sampler import greedy_banned
from llmprofiles.generation.scheduler import TIME_PARTS, GenerateRequest, Observer, Scheduler
from llmprofiles.generation.tokenizer import Tokenizer
from llmprofiles.profiles.generation import GenerationSpec


class InstantEngine:
    """What the Scheduler reads of an engine; each step returns logits whose argmax is a fixed ordinary token."""

    def __init__(self, vocab: int, eos: int, slots: int, device: str = "cpu"):
        self.device, self.vocab_size = torch.device(device), vocab
        self.spec = GenerationSpec(slots=slots, max_context=2048, decode_buckets=(slots,), prefill_buckets=(128,))
        self.profiles = self.spec.profiles()
        self.pool = SlotPool(slots)
        self.shape = type("Shape", (), {"eos_token_id": eos})()
        rng = np.random.default_rng(0)
        self.logits = torch.zeros(slots, vocab)
        for row in range(slots):  # a different token per row, never the end token
            self.logits[row, int(rng.integers(eos + 1, vocab))] = 1.0

    def decode(self, slots, tokens, positions):
        return self.logits[:len(slots)], 0

    def decode_greedy(self, slots, tokens, positions, banned):  # as GenerationEngine's: the step's own choice
        bans = torch.tensor([-1 if b is None else b for b in banned])
        return greedy_banned(self.logits[:len(slots)].clone(), bans), 0

    def prefill(self, slot, tokens, start):
        return self.logits[:1], len(self.spec.decode_buckets)


class Parts(Observer):
    def __init__(self):
        self.spent, self.steps = dict.fromkeys(TIME_PARTS, 0.0), 0

    def step(self, profile_index, tokens):
        self.steps += profile_index == 0

    def scheduler_time(self, seconds, responses):
        for k, v in seconds.items():
            self.spent[k] += v


def run(engine: InstantEngine, tokenizer: Tokenizer, streams: int, prompt_len: int, tokens: int,
        decode_steps: int = 1, send_budget_ms: float = 0.0, emit_ms: float = 0.0) -> Parts:
    parts = Parts()

    def emit(out) -> None:  # a response's round trip through the server, as long as --emit-ms
        if emit_ms:
            time.sleep(emit_ms / 1e3)

    sched = Scheduler(engine, tokenizer, emit, max_queue=streams, observer=parts, overlap=True,
                      decode_steps=decode_steps, send_budget_s=send_budget_ms / 1e3)
    rng = np.random.default_rng(1)
    for _ in range(streams):
        prompt = rng.integers(4, engine.vocab_size, prompt_len).tolist()
        sched.submit(GenerateRequest(prompt, max_tokens=tokens, min_tokens=tokens, stream=True))
    while sched.run_once():
        pass
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--version-dir", type=Path, default=Path("model_repository/generate/1"),
                   help="a generate build: its tokenizer and vocabulary")
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one untimed); the median is printed")
    p.add_argument("--profile", action="store_true", help="also print the costliest functions of one round")
    p.add_argument("--decode-steps", type=int, default=1, help="decode steps per iteration (config.pbtxt's)")
    p.add_argument("--send-budget-ms", type=float, default=0.0, help="send budget per step (config.pbtxt's)")
    p.add_argument("--emit-ms", type=float, default=0.0,
                   help="each response's send, slept (0.34 ms per response through Triton on the H200, session 13)")
    a = p.parse_args()
    manifest = json.loads((a.version_dir / "manifest.json").read_text())
    tokenizer = Tokenizer(a.version_dir)
    config = json.loads((a.version_dir / "model_config.json").read_text())
    eos = config["eos_token_id"][0] if isinstance(config["eos_token_id"], list) else config["eos_token_id"]
    engine = InstantEngine(manifest["vocab_size"], eos, a.streams)
    run(engine, tokenizer, a.streams, a.prompt_len, a.tokens, a.decode_steps, a.send_budget_ms, a.emit_ms)  # untimed
    rounds = []
    for _ in range(a.rounds):
        parts = run(engine, tokenizer, a.streams, a.prompt_len, a.tokens, a.decode_steps, a.send_budget_ms, a.emit_ms)
        rounds.append(with_host({k: v * 1e3 / parts.steps for k, v in parts.spent.items()}))
    median = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    print("ms per decode step (median of rounds): " + ", ".join(f"{k} {v:.3f}" for k, v in median.items()))
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(engine, tokenizer, a.streams, a.prompt_len, a.tokens, a.decode_steps, a.send_budget_ms, a.emit_ms)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    print(json.dumps({"streams": a.streams, "ms_per_decode_step": median}))


if __name__ == "__main__":
    main()
