"""Next-token choice for a batch of rows, on the logits' device.

Greedy rows (temperature 0) take the argmax of all rows at once. Sampled rows
apply temperature, top-k and top-p, then draw from their own seeded generator,
so a seed gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of the sampler; validated by the serving layer."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row's logits with tokens outside top-k and outside the top-p nucleus set to -inf."""
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first one always stays.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def device_ints(values: list, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values)`` (int64) on ``device``, without waiting for the device.

    ``torch.tensor(values, device="cuda")`` copies from pageable memory and synchronizes the stream, so the
    host waits for every step already launched: decode's overlap of host work with the next step is lost.
    Through pinned memory the copy is queued like the step's other work.
    """
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.int64, device=device)
    return torch.tensor(values, dtype=torch.int64).pin_memory().to(device, non_blocking=True)


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           banned: list[int | None]) -> list[int]:
    """The next token of each row. ``banned[i]``, when set, cannot be chosen (an end id before min_tokens)."""
    return sample_tensor(logits, params, generators, banned).tolist()


def sample_tensor(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                  banned: list[int | None]) -> torch.Tensor:
    """:func:`sample` left on the logits' device (int64 ``[rows]``): on a GPU, nothing waits for it.

    Nothing as large as the logits is allocated for greedy rows. A copy of them per step, sized by the
    batch (which changes as sequences come and go), left the caching allocator holding blocks of every
    size it had seen.
    """
    out = logits.argmax(dim=-1)  # in the logits' own dtype: the same choice as in float32, which holds fp16 exactly
    rows = [i for i, token in enumerate(banned) if token is not None and params[i].greedy]
    if rows:
        # A banned token (an end id before min_tokens) is never chosen: where it is a row's argmax, the row takes
        # its runner-up. The indices reach the GPU through pinned memory and every choice stays there; an
        # indexed write of a Python scalar (`logits[rows, tokens] = -inf`) waited for the stream on each step
        # (the H200's sync-debug test, tests/test_generation_gpu.py, 2026-11-30).
        index = device_ints(rows, logits.device)
        ban = device_ints([banned[i] for i in rows], logits.device)
        top2 = logits.topk(2, dim=-1).indices.index_select(0, index)
        runner_up = torch.where(top2[:, 0] == ban, top2[:, 1], top2[:, 0])
        best = out.index_select(0, index)
        out.index_copy_(0, index, torch.where(best == ban, runner_up, best))
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = logits[i].to(torch.float32, copy=True)  # the caller's logits are left alone
        if banned[i] is not None:
            row[banned[i]] = float("-inf")  # a fill of one element: the value is a kernel argument
        row = filter_logits(row / p.temperature, p.top_k, p.top_p)
        out[i] = torch.multinomial(torch.softmax(row, dim=-1), 1, generator=generators[i])[0]
    return out


def generator_for(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A generator seeded from the request (a fresh random seed when it gives none); None when greedy."""
    if params.greedy:
        return None
    g = torch.Generator(device=device)
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed(params.seed)
    return g
