"""Next-token choice for a batch of rows, on the logits' device.

Greedy rows (temperature 0) take the argmax of all rows at once. Sampled rows
apply temperature, top-k and top-p, then draw from their own seeded generator,
so a seed gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import functools
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
    """The next token of each row. ``banned[i]``, when set, cannot be chosen (an end id before min_tokens).

    The caller's logits are left alone (:func:`sample_tensor` writes its bans into them).
    """
    return sample_tensor(logits.clone(), params, generators, banned).tolist()


@functools.lru_cache(maxsize=256)
def _device_index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """:func:`device_ints` of ``values``, made once: the same rows ban the same token step after step."""
    return device_ints(list(values), device)


@functools.lru_cache(maxsize=16)
def _minus_inf(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((), float("-inf"), dtype=dtype, device=device)


def ban(logits: torch.Tensor, banned: list[int | None]) -> None:
    """Set ``logits[i, banned[i]]`` to -inf in place, for every row with a ban, without waiting for the device.

    When every row bans one token (an end id, while every sequence is under its min_tokens) that is one fill
    of a column. Else one indexed write, its row and token indices on the device from a cache. Before, a
    greedy row's ban was a dozen small launches per step (top-2, gathers, two copies from pinned memory);
    at batch 1 sampling took 0.53 ms of the H200 server's host time per step (bench/NOTES.md, session 11).
    """
    rows = [i for i, token in enumerate(banned) if token is not None]
    if not rows:
        return
    first = banned[rows[0]]
    with torch.inference_mode():  # logits made under inference mode (an eager step) are written only there
        if len(rows) == logits.shape[0] and all(banned[i] == first for i in rows):
            logits[:, first] = float("-inf")  # a view and a fill: the index is a kernel argument
            return
        index = _device_index(tuple(rows), logits.device)
        tokens = _device_index(tuple(banned[i] for i in rows), logits.device)
        # With a Python float (`logits[index, tokens] = -inf`) the value went to the GPU from pageable memory,
        # which waits for the stream (the H200's sync-debug test, session 12): a -inf made once on the device.
        logits.index_put_((index, tokens), _minus_inf(logits.dtype, logits.device))


def sample_tensor(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                  banned: list[int | None]) -> torch.Tensor:
    """:func:`sample` left on the logits' device (int64 ``[rows]``): on a GPU, nothing waits for it.

    ``logits`` are the caller's scratch: its banned tokens are set to -inf in them (:func:`ban`). Nothing as
    large as the logits is allocated for greedy rows. A copy of them per step, sized by the batch (which
    changes as sequences come and go), left the caching allocator holding blocks of every size it had seen.
    """
    ban(logits, banned)
    out = logits.argmax(dim=-1)  # in the logits' own dtype: the same choice as in float32, which holds fp16 exactly
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = logits[i].to(torch.float32)
        row = filter_logits(row / p.temperature, p.top_k, p.top_p)
        out[i] = torch.multinomial(torch.softmax(row, dim=-1), 1, generator=generators[i])[0]
    return out


def greedy_banned(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """Each row's argmax (int64 ``[rows]``), never its ``banned`` token (``banned[i]`` -1: none): :func:`ban` then
    argmax in a fixed number of kernels whatever the bans, so a captured decode graph can hold it. The bans are
    written into ``logits`` (the caller's scratch, as :func:`sample_tensor`'s)."""
    index = banned.clamp(min=0)[:, None]
    # masked_fill's value is a kernel argument: nothing is made on the device (a capture would own it).
    logits.scatter_(1, index, logits.gather(1, index).masked_fill(banned[:, None] >= 0, float("-inf")))
    return logits.argmax(dim=-1)


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
