"""The generate engine: one KV pool, one copy of the weights, one step per profile.

Each step is a ``[batch, seq]`` shape and goes to a profile by ordered first-fit
(:mod:`llmprofiles.profiles.generation`). A profile is a static shape: the step is
padded up to the bucket, padded rows read and write the scratch slot, and padded
tokens of a prompt chunk write the scratch slot too. On CUDA every profile is
captured once as a CUDA graph over static input buffers and then replayed; on CPU
the same padded step runs eagerly.

Load one from a build::

    engine = load_generation_engine("model_repository/generate/1", "cpu")
    logits = engine.prefill(slot=0, tokens=[2, 17, 9], start=0)
    logits = engine.decode(slots=[0], tokens=[int(logits.argmax())], positions=[3])
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmprofiles.generation import mlp
from llmprofiles.generation.forward import KVForward, ModelShape, fuse_weights, kv_pool_bytes
from llmprofiles.generation.kvcache import SlotPool, allocate_pool
from llmprofiles.generation.sampler import greedy_banned
from llmprofiles.manifest import EngineLoadError, read_manifest
from llmprofiles.profiles.generation import GenerationSpec
from llmprofiles.profiles.selection import SelectionError, select_profile

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "model_config.json"
# Pinned input buffers per step profile on CUDA: how many of its steps may be queued at once (a scheduler iteration
# launches decode_steps of them; more than this and the next one waits for the GPU to start the oldest).
HOST_RING = 4


class StepInputs:
    """The inputs of one step, packed in one int64 buffer so a step needs one host-to-device copy.

    Views: ``tokens``, ``positions``, ``write_slots``, ``write_pos`` ``[B, S]``; ``slots``, ``last``, ``banned``
    ``[B]`` (``banned``: a token each row's greedy choice may not take, -1 for none; decode steps only).
    """

    NAMES = ("tokens", "positions", "write_slots", "write_pos", "slots", "last", "banned")

    def __init__(self, batch: int, seq: int, device: torch.device, pin: bool = False):
        n = batch * seq
        self.data = torch.zeros(4 * n + 3 * batch, dtype=torch.int64, device=device, pin_memory=pin)
        self.tokens, self.positions, self.write_slots, self.write_pos = (
            self.data[i * n:(i + 1) * n].view(batch, seq) for i in range(4))
        self.slots, self.last, self.banned = (self.data[4 * n + i * batch:4 * n + (i + 1) * batch] for i in range(3))
        self.banned.fill_(-1)
        self.copied: torch.cuda.Event | None = None  # a pinned buffer's last copy to the device, until it is done
        if self.data.device.type == "cpu":  # numpy views of the same memory: the host fills these per step
            self.np = {name: getattr(self, name).numpy() for name in self.NAMES}

    def fill(self, host: StepInputs) -> None:
        """Queue the copy of ``host``'s inputs into these; from pinned memory it is asynchronous, so ``host`` records
        when it is done (:attr:`copied`), and is rewritten only after."""
        self.data.copy_(host.data, non_blocking=True)
        if host.data.is_pinned():
            host.copied = torch.cuda.Event()
            host.copied.record()

    @classmethod
    def scratch(cls, batch: int, seq: int, device: torch.device, slot: int) -> StepInputs:
        """Inputs whose every row reads and writes ``slot`` (the scratch slot): for warm-up and capture."""
        x = cls(batch, seq, device)
        x.slots.fill_(slot)
        x.write_slots.fill_(slot)
        x.positions.copy_(torch.arange(seq))
        x.write_pos.copy_(torch.arange(seq))
        return x


def kv_buckets(max_context: int, smallest: int = 128) -> tuple[int, ...]:
    """Attention lengths a captured step may read: powers of two from ``smallest``, capped at the context."""
    out, n = [], smallest
    while n < max_context:
        out.append(n)
        n *= 2
    return (*out, max_context)


class GenerationEngine:
    """Steps of a causal LM over a KV slot pool; ``profiles[i]`` is step profile ``i``.

    On CUDA each profile is captured as CUDA graphs, one per attention length in :func:`kv_buckets`
    (a prefill reads only as many pool positions as its longest sequence needs, rounded up), all in
    one memory pool. A decode step compiled whole reads each row's own context whatever the length,
    so each decode bucket has one graph (:meth:`graph_key`). ``compile`` compiles the steps first (default: on CUDA;
    see :class:`llmprofiles.generation.forward.KVForward`, which takes ``pdl``).
    """

    def __init__(self, shape: ModelShape, weights: dict[str, torch.Tensor], spec: GenerationSpec,
                 device: torch.device, cuda_graphs: bool | None = None, compile: bool | None = None,
                 decode_kernel: bool | None = None, pdl: bool = False, fresh_prefill: bool = False,
                 mlp_kernel: bool | None = None):
        self.shape, self.spec, self.device = shape, spec, torch.device(device)
        self.profiles = spec.profiles()
        self.vocab_size = shape.vocab_size
        self.dtype = weights["embed"].dtype
        on_cuda = self.device.type == "cuda"
        k_pool, v_pool = allocate_pool(shape.num_layers, spec.slots, spec.max_context, shape.num_kv_heads,
                                       shape.head_dim, self.dtype, self.device)
        self.forward = KVForward(shape, weights, k_pool, v_pool, compile=on_cuda if compile is None else compile,
                                 decode_kernel=decode_kernel, pdl=pdl, fresh_prefill=fresh_prefill,
                                 mlp_kernel=mlp_kernel)
        self.pool = SlotPool(spec.slots)
        self.kv_bytes = kv_pool_bytes(shape, spec.slots, spec.max_context, self.dtype)
        self.step_shapes = [r.max for r in (self.profiles.ranges(i)["input_ids"] for i in range(len(self.profiles)))]
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        self.kv_lengths = kv_buckets(spec.max_context)
        # A ring of pinned host buffers per profile: a buffer is rewritten only once its copy to the device is
        # done, so with one buffer the host waited for the GPU to reach the profile's last step, and could not
        # launch the next decode step of an iteration (decode_steps > 1) before the one before had started.
        self.host = [[StepInputs(b, s, torch.device("cpu"), pin=on_cuda) for _ in range(HOST_RING if on_cuda else 1)]
                     for b, s in self.step_shapes]
        self._turn = [0] * len(self.step_shapes)  # per profile: the ring's next buffer
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, StepInputs, torch.Tensor]] = {}
        self.compile_s: dict[str, float] = {}  # after warm_up: compile_seconds()
        self.graph_pool = None
        self.capture_stream = None  # one for every capture: each stream holds its own cuBLAS workspace
        self.graph_out: dict[int, torch.Tensor] = {}  # per profile: the logits its graphs write, whatever kv_len
        self.graph_tokens: dict[int, torch.Tensor] = {}  # per decode profile: its rows' greedy tokens (decode_greedy)
        self._selected: dict[tuple[int, int], int] = {}

    # --- profile choice --------------------------------------------------------

    def select(self, batch: int, seq: int, choice: object = "auto") -> int:
        """Ordered first-fit over the step profiles (or a checked explicit choice)."""
        if choice == "auto" and (batch, seq) in self._selected:  # the same answer every step: asked once
            return self._selected[batch, seq]
        shape = (batch, seq)
        index = select_profile(self.profiles, {"input_ids": shape, "position_ids": shape}, choice)
        if choice == "auto":
            self._selected[batch, seq] = index
        return index

    # --- steps -----------------------------------------------------------------

    def prefill(self, slot: int, tokens: list[int], start: int) -> tuple[torch.Tensor, int]:
        """Write ``tokens`` at positions ``start..`` of ``slot``; logits of the last one, and the profile used."""
        index = self.select(1, len(tokens))
        return self._run(index, [tokens], [slot], [start]), index

    def prefill_many(self, slots: list[int], prompts: list[list[int]]) -> tuple[torch.Tensor, int]:
        """Whole prompts, one per slot, from position 0 in one step (a batched prefill profile, for more than one);
        logits ``[len(prompts), vocab]`` of each prompt's last token, and the profile used."""
        index = self.select(len(prompts), max(len(p) for p in prompts))
        return self._run(index, prompts, slots, [0] * len(prompts)), index

    def decode(self, slots: list[int], tokens: list[int] | torch.Tensor, positions: list[int]) -> tuple[torch.Tensor, int]:
        """One token for each of ``slots`` at its position; logits ``[len(slots), vocab]`` and the profile used.

        ``tokens`` may be an int64 tensor on the engine's device (the sampler's output of the previous
        step): it is copied into the step's inputs on the device, and nothing waits for its values.
        """
        return self._decode(slots, tokens, positions, None)

    def decode_greedy(self, slots: list[int], tokens: list[int] | torch.Tensor, positions: list[int],
                      banned: list[int | None]) -> tuple[torch.Tensor, int]:
        """:meth:`decode` for rows that all choose greedily: each row's argmax token (int64 ``[len(slots)]``, on the
        device), never its ``banned`` token (an end id before min_tokens; None for none), and the profile used.

        On CUDA the choice is part of the step's captured graph (:func:`greedy_banned` on its logits), so the host
        launches nothing after the replay but a copy of the tokens; the logits stay in the graph's buffer. The
        same tokens as :func:`llmprofiles.generation.sampler.sample_tensor` over :meth:`decode`'s logits.
        """
        return self._decode(slots, tokens, positions, [-1 if b is None else b for b in banned])

    def _decode(self, slots: list[int], tokens: list[int] | torch.Tensor, positions: list[int],
                banned: list[int] | None) -> tuple[torch.Tensor, int]:
        index = self.select(len(slots), 1)
        if isinstance(tokens, torch.Tensor):
            return self._run(index, [[0]] * len(slots), slots, positions, device_tokens=tokens, banned=banned), index
        return self._run(index, [[t] for t in tokens], slots, positions, banned=banned), index

    def _check(self, rows: list[list[int]], slots: list[int], starts: list[int]) -> None:
        # Whole-batch bounds first (a few builtins over the step), the row at fault only when one fails.
        ctx = self.spec.max_context
        if min(slots) < 0 or max(slots) >= self.spec.slots:
            slot = next(s for s in slots if not 0 <= s < self.spec.slots)
            raise SelectionError(f"slot {slot} is out of range [0, {self.spec.slots - 1}]")
        if min(starts) < 0 or max(s + len(r) for r, s in zip(rows, starts)) > ctx:
            row, start = next((r, s) for r, s in zip(rows, starts) if s < 0 or s + len(r) > ctx)
            raise SelectionError(f"positions {start}..{start + len(row) - 1} exceed the context [0, {ctx - 1}]")
        tokens = [t for row in rows for t in row]
        if min(tokens) < 0 or max(tokens) >= self.vocab_size:
            bad = next(t for t in tokens if not 0 <= t < self.vocab_size)
            raise SelectionError(f"token id {bad} is out of range [0, {self.vocab_size - 1}]")

    def _host_inputs(self, index: int, rows: list[list[int]], slots: list[int], starts: list[int],
                     banned: list[int] | None = None) -> StepInputs:
        """The profile's padded inputs, written into the next (pinned, reused) host buffer of its ring.

        Through numpy views of the buffer: a dozen small torch ops cost ~0.4 ms per step on the CPU
        machine, the step's whole host share on the GPU (bench/NOTES.md, session 6).
        """
        _, seq = self.step_shapes[index]
        scratch, ctx, n = self.pool.scratch, self.spec.max_context, len(rows)
        ring = self.host[index]
        turn = self._turn[index]
        self._turn[index] = (turn + 1) % len(ring)
        x = ring[turn]
        if x.copied is not None:  # the last copy out of this buffer must be done before it is rewritten
            x.copied.synchronize()
            x.copied = None
        a = x.np
        tokens, positions = a["tokens"], a["positions"]
        tokens.fill(0)
        if seq == 1:  # a decode step: one token per row
            tokens[:n, 0] = [r[0] for r in rows]
        else:
            for i, r in enumerate(rows):
                tokens[i, :len(r)] = r
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
        positions[:] = np.arange(seq)
        positions[:n] += np.asarray(starts, dtype=np.int64)[:, None]
        a["slots"].fill(scratch)
        a["slots"][:n] = slots
        write_slots = a["write_slots"]
        write_slots.fill(scratch)
        write_slots[:n] = np.where(np.arange(seq)[None, :] < lengths[:, None], a["slots"][:n, None], scratch)
        a["last"].fill(0)
        a["last"][:n] = lengths - 1
        # Padding writes go to the scratch slot, at a position inside the pool.
        np.copyto(a["write_pos"], np.where(write_slots == scratch, np.minimum(positions, ctx - 1), positions))
        a["banned"].fill(-1)
        if banned is not None:
            a["banned"][:n] = banned
        return x

    def _run(self, index: int, rows: list[list[int]], slots: list[int], starts: list[int],
             device_tokens: torch.Tensor | None = None, banned: list[int] | None = None) -> torch.Tensor:
        """One step; ``device_tokens`` (one per row, decode only) replace the rows' tokens on the device. The step's
        logits; with ``banned`` (decode only, :meth:`decode_greedy`) each row's greedy token instead."""
        self._check(rows, slots, starts)
        if banned is not None and (max(banned) >= self.vocab_size or min(banned) < -1):  # from decode_greedy only
            raise SelectionError(f"banned tokens {banned} go with decode steps only, each in [-1, {self.vocab_size - 1}]")
        host = self._host_inputs(index, rows, slots, starts, banned)
        n = len(rows)
        needed = max(s + len(r) for r, s in zip(rows, starts))
        if self.fresh_chunk(index, starts):
            needed = 0  # the chunk attends only to itself (KVForward.fresh_prefill)
        if self.cuda_graphs:
            graph, buffers, out = self._graph(*self.graph_key(index, needed))
            buffers.fill(host)
            if device_tokens is not None:
                buffers.tokens[:n, 0].copy_(device_tokens, non_blocking=True)
            graph.replay()
            # The next replay overwrites out. The whole bucket is copied: one block size per profile for the caching
            # allocator to reuse, where a copy of n rows made a new size whenever the batch changed.
            if banned is not None:
                return self.graph_tokens[index].clone()[:n]
            return out.clone()[:n]
        x = host
        if self.device.type != "cpu":  # eager on a GPU (tests): one copy to the device
            x = StepInputs(*self.step_shapes[index], self.device)
            x.fill(host)
        if device_tokens is not None:
            x.tokens[:n, 0] = device_tokens
        with torch.inference_mode():
            logits = self._forward(x, needed)
            return greedy_banned(logits, x.banned)[:n] if banned is not None else logits[:n]

    def fresh_chunk(self, index: int, starts: list[int]) -> bool:
        """Whether a prefill step of profile ``index`` from ``starts`` is a prompt's first chunk that attends only
        to itself: with ``fresh_prefill``, from position 0, and no longer than the sliding window (local layers
        then see the whole chunk, as global ones do)."""
        seq = self.step_shapes[index][1]
        return (self.forward.fresh and seq > 1 and max(starts) == 0
                and (seq <= self.shape.sliding_window or not any(self.shape.layer_sliding)))

    def graph_key(self, index: int, needed: int) -> tuple[int, int]:
        """``(profile, attention length)`` of the graph that runs a step reading ``needed`` pool positions
        (0: a prompt's first chunk, which reads none, :meth:`fresh_chunk`).

        A decode step compiled whole reads each row's own context, whatever the length: one graph per decode
        bucket serves them all (keyed by the whole context).
        """
        if self.step_shapes[index][1] == 1 and self.forward.decode_kernel and self.forward.whole_decode:
            return index, self.kv_lengths[-1]
        if needed == 0:
            return index, 0
        return index, next(k for k in self.kv_lengths if k >= needed)

    def _forward(self, x: StepInputs, kv_len: int) -> torch.Tensor:
        return self.forward(x.tokens, x.positions, x.slots, x.write_slots, x.write_pos, x.last, kv_len)

    def _graph(self, index: int, kv_len: int):
        key = (index, kv_len)
        if key not in self.graphs:
            # Captured on scratch rows: no live slot is touched.
            buffers = StepInputs.scratch(*self.step_shapes[index], self.device, self.pool.scratch)
            if self.capture_stream is None:
                self.capture_stream = torch.cuda.Stream(self.device)
                self.graph_pool = torch.cuda.graph_pool_handle()
            stream = self.capture_stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            decode = self.step_shapes[index][1] == 1
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(2):  # compile (first time only) and settle allocations before capture
                    logits = self._forward(buffers, kv_len)
                    if decode:  # what the graph runs after the step, run once before it is captured
                        greedy_banned(logits.clone(), buffers.banned)
                if index not in self.graph_out:  # outside the graphs' pool: it outlives every capture
                    self.graph_out[index] = torch.empty_like(logits)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            out = self.graph_out[index]
            graph = torch.cuda.CUDAGraph()
            # One pool for every graph: they never run at once. Each writes its logits into its profile's
            # buffer, so what it allocated inside is free for the next capture; a step clones the buffer.
            if decode and index not in self.graph_tokens:
                self.graph_tokens[index] = torch.empty(out.shape[0], dtype=torch.int64, device=self.device)
            with torch.cuda.graph(graph, pool=self.graph_pool, stream=stream), torch.inference_mode():
                out.copy_(self._forward(buffers, kv_len))
                if decode:  # each row's greedy token too, for decode_greedy (bans written into out: -1 bans none)
                    self.graph_tokens[index].copy_(greedy_banned(out, buffers.banned))
            self.graphs[key] = (graph, buffers, out)
        return self.graphs[key]

    def warm_up(self, reuse_tuned: bool = True) -> list[float]:
        """Run every profile once on the scratch slot (on CUDA: capture all its graphs); seconds per profile.

        On CUDA, with ``reuse_tuned``, compiles restored from the inductor cache keep the launch configs the build
        tuned (:func:`llmprofiles.runtimes.compiled.cached_configs_final`): a kernel with programmatic dependent
        launch is otherwise tuned again at every load, from scratch each time.
        """
        if self.device.type == "cuda" and reuse_tuned:
            from llmprofiles.runtimes.compiled import cached_configs_final

            with cached_configs_final():
                return self.warm_up(reuse_tuned=False)
        times = []
        for i, (batch, seq) in enumerate(self.step_shapes):
            t0 = time.perf_counter()
            if self.cuda_graphs:
                lengths = [kv_len for kv_len in self.kv_lengths if kv_len >= seq]
                if self.fresh_chunk(i, [0]):  # a batched prefill is whole prompts from position 0 (prefill_many)
                    lengths = [0] if batch > 1 else [*lengths, 0]
                for key in sorted({self.graph_key(i, kv_len) for kv_len in lengths}):
                    graph, buffers, _ = self._graph(*key)
                    graph.replay()
                torch.cuda.synchronize(self.device)
            else:
                x = StepInputs.scratch(batch, seq, self.device, self.pool.scratch)
                with torch.inference_mode():
                    self._forward(x, seq)
            times.append(time.perf_counter() - t0)
            log.info("profile %d %r warm in %.1f s", i, self.profiles.names[i], times[-1])
        self.compile_s = compile_seconds()
        log.info("compile seconds in this process, by stage: %s", self.compile_s)
        if block_sizes := mlp.chosen():
            log.info("the batch-1 matrix-vector kernels' block sizes (pinned by the build, or autotuned): %s", block_sizes)
        return times


# torch.compile's stages (torch._dynamo.utils.compile_times), where a warm-up's time goes: tracing the Python, AOT
# dispatch, inductor (lowering, code generation, kernel compiles and loads, cache hits included); "retrace": second
# attempts, Dynamo's restarts of a trace it threw away (see forward.compile_dynamic). The rest of a
# warm-up is running the steps: launch-config benchmarks (autotuning, coordinate descent) and graph captures.
COMPILE_STAGES = {"compile": "_compile.compile_inner", "retrace": "compile_attempt_1", "trace": "bytecode_tracing",
                  "aot": "create_aot_dispatcher_function", "inductor": "compile_fx_inner",
                  "kernel_wait": "async_compile.wait", "module_load": "PyCodeCache.load_by_key_path"}


def compile_seconds() -> dict[str, float]:
    """Seconds spent so far in this process in each of COMPILE_STAGES (0 for a stage that never ran)."""
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    spent = dict(zip(names, (float(v) for v in values)))
    return {stage: round(spent.get(name, 0.0), 1) for stage, name in COMPILE_STAGES.items()}


def weights_to_device(weights: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Each tensor on ``device`` once: names that share a tensor (a tied lm_head) still share it there."""
    moved: dict[int, torch.Tensor] = {}
    return {k: moved.setdefault(id(v), v.to(device)) for k, v in weights.items()}


def check_decode_kernel(hf: torch.nn.Module, device: torch.device, steps: int = 4) -> dict:
    """Whether the decode attention kernel runs here and matches the batched matmuls, for the build's manifest.

    Two small engines on ``device`` (eager, the model's weights and dtype), one with the kernel: prompts of 20
    and 600 tokens prefilled into two slots (the longer one is cut into parts on a GPU), then decode steps of
    both rows, fed the matmul engine's greedy tokens. The kernel is kept when every step's logits agree
    within the dtype's rounding, with the largest difference; else the reason it was refused, and the
    engine serves decode with the batched matmuls.
    """
    shape = ModelShape.from_config(hf.config.to_dict())
    spec = GenerationSpec(slots=2, max_context=1024, decode_buckets=(2,), prefill_buckets=(128,))
    weights = fuse_weights(shape, {k: v.detach() for k, v in hf.state_dict().items()})
    try:
        engines = [GenerationEngine(shape, weights_to_device(weights, device), spec, device, cuda_graphs=False,
                                    compile=False, decode_kernel=use) for use in (True, False)]
        prompts = [[4 + i % 200 for i in range(n)] for n in (20, 600)]
        for e in engines:
            for slot, prompt in enumerate(prompts):
                for start in range(0, len(prompt), spec.max_chunk):
                    e.prefill(slot, prompt[start:start + spec.max_chunk], start)
        tokens, positions, worst = [5, 6], [len(p) for p in prompts], 0.0
        for _ in range(steps):
            got, want = (e.decode([0, 1], tokens, positions)[0].float() for e in engines)
            worst = max(worst, (got - want).abs().max().item())
            tokens, positions = want.argmax(-1).tolist(), [p + 1 for p in positions]
    except Exception as e:  # noqa: BLE001 - any failure means the kernel is not used; the manifest says why
        return {"use": "matmuls", "reason": f"the kernel failed: {type(e).__name__}: {str(e)[:300]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # The two forms round differently: in fp16 on the H200 (gemma-3-1b shapes, 2026-11-30) they differed by 0.0087;
    # in float32 by about 1e-6. Attending one stale key too many moved the tiny float32 model's logits by 0.056.
    limit = 1e-3 if engines[1].dtype == torch.float32 else 1e-1
    if not worst <= limit:
        return {"use": "matmuls", "reason": f"logits differ by {worst:.4g} from the batched matmuls (limit {limit:g})",
                "max_abs_diff": worst}
    return {"use": "kernel", "max_abs_diff": worst}


def check_mlp_kernel(hf: torch.nn.Module, device: torch.device, tokens: int = 4) -> dict:
    """Whether the batch-1 matrix-vector kernels (the MLP's, and the attention projections') run here and match
    PyTorch, for the build's manifest (``mlp_kernel``).

    Every layer's MLP weights in the model's dtype on ``device``, each fed ``tokens`` random inputs of the
    hidden size, through :func:`llmprofiles.generation.mlp.mlp_op` (its kernels, autotuned at the first call)
    and through ``F.linear``; the attention projections (q/k/v, output) likewise through
    :func:`llmprofiles.generation.mlp.linear_op`, which the step runs with them (forward.PROJ_KERNEL). The kernels
    are kept when every output agrees within the dtype's rounding, with the largest difference relative to the
    output's scale; else the reason they were refused, and the batch-1 step keeps inductor's form.
    """
    if not mlp.available(device):
        return {"use": "pytorch", "reason": f"the kernels cannot run on {device} (they need Triton and CUDA)"}
    shape = ModelShape.from_config(hf.config.to_dict())
    weights = fuse_weights(shape, {k: v.detach() for k, v in hf.state_dict().items()})
    worst = 0.0
    try:
        g = torch.Generator().manual_seed(0)
        for i in range(shape.num_layers):
            gate_up, down = (weights[f"{i}.{n}"].to(device) for n in ("gate_up", "down"))
            qkv, o = (weights[f"{i}.{n}"].to(device) for n in ("qkv", "o"))
            for _ in range(tokens):
                h = torch.randn(1, 1, shape.hidden_size, generator=g).to(device, gate_up.dtype)
                a = torch.randn(1, 1, o.shape[1], generator=g).to(device, o.dtype)
                for got, want in ((mlp.mlp_op(h, gate_up, down), mlp.torch_mlp(h, gate_up, down)),
                                  (mlp.linear_op(h, qkv), F.linear(h, qkv)), (mlp.linear_op(a, o), F.linear(a, o))):
                    got, want = got.float(), want.float()
                    worst = max(worst, ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item())
    except Exception as e:  # noqa: BLE001 - any failure means the kernels are not used; the manifest says why
        return {"use": "pytorch", "reason": f"the kernels failed: {type(e).__name__}: {str(e)[:300]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # Relative to the output's largest value: fp16 rounds at 1e-3 of it, and the two sum in different orders.
    limit = 1e-4 if weights["embed"].dtype == torch.float32 else 2e-2
    if not worst <= limit:
        return {"use": "pytorch", "reason": f"outputs differ by {worst:.4g} of their scale from PyTorch's "
                                            f"(limit {limit:g})", "max_rel_diff": worst}
    return {"use": "kernel", "max_rel_diff": worst, "block_sizes": mlp.chosen()}


def served_mlp_kernel(manifest: dict, device: torch.device) -> bool | None:
    """Whether the batch-1 matrix-vector kernels serve, as the build's check decided (``mlp_kernel`` in its manifest): kept
    (True, and their block sizes pinned: the kernels the build measured, no autotuning at start-up), refused
    (False: inductor's form), or not checked (None: the default, forward.MLP_KERNEL). Off CUDA, not checked."""
    checked = manifest.get("mlp_kernel", {}) if device.type == "cuda" else {}
    if checked.get("use") != "kernel":
        return None if not checked else False
    try:
        mlp.pin(checked.get("block_sizes", []))
    except ValueError as e:  # a tuning record is not worth refusing to serve: the kernels autotune again
        log.warning("%s in the manifest: the MLP kernels autotune at the warm-up instead", e)
    return True


def load_generation_engine(version_dir: str | Path, device: str | torch.device = "cpu") -> GenerationEngine:
    """The engine built into ``version_dir`` (weights, config and generation spec from its manifest)."""
    from safetensors.torch import load_file

    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    if manifest.get("runtime") != "kv-portable" or "generation" not in manifest:
        raise EngineLoadError(f"{version_dir} does not hold a generate engine (runtime "
                              f"{manifest.get('runtime')!r}); run `make build`")
    spec = GenerationSpec.from_dict(manifest["generation"])
    if spec.profiles().to_dict() != manifest["profiles"]:
        raise EngineLoadError(f"profiles in {version_dir}/manifest.json disagree with its generation spec; run `make build`")
    shape = ModelShape.from_config(json.loads((version_dir / MODEL_CONFIG).read_text()))
    device = torch.device(device)
    dtype = getattr(torch, manifest["dtype"])
    # Fused on the host, then moved: fusing on the GPU left the unfused copies' freed blocks reserved by the
    # allocator for good (about 0.9 GiB of fused matrices for gemma-3-1b, by their sizes), where neither the KV pool
    # nor the graphs could use them.
    weights = fuse_weights(shape, {k: v.to(dtype) for k, v in load_file(str(version_dir / WEIGHTS)).items()})
    # The build checked the decode attention kernel on its GPU: kept, refused (the matmuls serve), or not checked.
    checked = manifest.get("decode_attention", {}).get("use") if device.type == "cuda" else None
    engine = GenerationEngine(shape, weights_to_device(weights, device), spec, device,
                              decode_kernel=None if checked is None else checked == "kernel",
                              mlp_kernel=served_mlp_kernel(manifest, device),
                              pdl=device.type == "cuda" and manifest.get("decode_pdl", False),
                              fresh_prefill=device.type == "cuda" and manifest.get("fresh_prefill", False))
    log.info("generate engine: %d profiles %s, %d slots x %d context, KV pool %.1f MiB on %s",
             len(engine.profiles), list(engine.profiles.names), spec.slots, spec.max_context,
             engine.kv_bytes / 2**20, device)
    return engine
