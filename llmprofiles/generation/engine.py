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

import torch

from llmprofiles.generation.forward import KVForward, ModelShape, fuse_weights, kv_pool_bytes
from llmprofiles.generation.kvcache import SlotPool, allocate_pool
from llmprofiles.profiles.generation import GenerationSpec
from llmprofiles.manifest import EngineLoadError, read_manifest
from llmprofiles.profiles.selection import SelectionError, select_profile

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "model_config.json"


class StepInputs:
    """Static input buffers of one profile: ``[B, S]`` tokens, positions, write slots/positions; ``[B]`` rows."""

    def __init__(self, batch: int, seq: int, device: torch.device):
        z = dict(dtype=torch.int64, device=device)
        self.tokens = torch.zeros((batch, seq), **z)
        self.positions = torch.zeros((batch, seq), **z)
        self.write_slots = torch.zeros((batch, seq), **z)
        self.write_pos = torch.zeros((batch, seq), **z)
        self.slots = torch.zeros((batch,), **z)
        self.last = torch.zeros((batch,), **z)

    def fill(self, host: StepInputs) -> None:
        for name in ("tokens", "positions", "write_slots", "write_pos", "slots", "last"):
            getattr(self, name).copy_(getattr(host, name), non_blocking=True)


class GenerationEngine:
    """Steps of a causal LM over a KV slot pool; ``profiles[i]`` is step profile ``i``."""

    def __init__(self, shape: ModelShape, weights: dict[str, torch.Tensor], spec: GenerationSpec,
                 device: torch.device, cuda_graphs: bool | None = None):
        self.shape, self.spec, self.device = shape, spec, torch.device(device)
        self.profiles = spec.profiles()
        self.vocab_size = shape.vocab_size
        self.dtype = weights["embed"].dtype
        k_pool, v_pool = allocate_pool(shape.num_layers, spec.slots, spec.max_context, shape.num_kv_heads,
                                       shape.head_dim, self.dtype, self.device)
        self.forward = KVForward(shape, weights, k_pool, v_pool)
        self.pool = SlotPool(spec.slots)
        self.kv_bytes = kv_pool_bytes(shape, spec.slots, spec.max_context, self.dtype)
        self.step_shapes = [r.max for r in (self.profiles.ranges(i)["input_ids"] for i in range(len(self.profiles)))]
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.graphs: list[tuple[torch.cuda.CUDAGraph, StepInputs, torch.Tensor] | None] = [None] * len(self.profiles)

    # --- profile choice --------------------------------------------------------

    def select(self, batch: int, seq: int, choice: object = "auto") -> int:
        """Ordered first-fit over the step profiles (or a checked explicit choice)."""
        shape = (batch, seq)
        return select_profile(self.profiles, {"input_ids": shape, "position_ids": shape}, choice)

    # --- steps -----------------------------------------------------------------

    def prefill(self, slot: int, tokens: list[int], start: int) -> tuple[torch.Tensor, int]:
        """Write ``tokens`` at positions ``start..`` of ``slot``; logits of the last one, and the profile used."""
        index = self.select(1, len(tokens))
        return self._run(index, [tokens], [slot], [start]), index

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> tuple[torch.Tensor, int]:
        """One token for each of ``slots`` at its position; logits ``[len(slots), vocab]`` and the profile used."""
        index = self.select(len(slots), 1)
        return self._run(index, [[t] for t in tokens], slots, positions), index

    def _check(self, rows: list[list[int]], slots: list[int], starts: list[int]) -> None:
        ctx = self.spec.max_context
        for row, slot, start in zip(rows, slots, starts):
            if not 0 <= slot < self.spec.slots:
                raise SelectionError(f"slot {slot} is out of range [0, {self.spec.slots - 1}]")
            if start < 0 or start + len(row) > ctx:
                raise SelectionError(f"positions {start}..{start + len(row) - 1} exceed the context [0, {ctx - 1}]")
            bad = [t for t in row if not 0 <= t < self.vocab_size]
            if bad:
                raise SelectionError(f"token id {bad[0]} is out of range [0, {self.vocab_size - 1}]")

    def _host_inputs(self, index: int, rows: list[list[int]], slots: list[int], starts: list[int]) -> StepInputs:
        batch, seq = self.step_shapes[index]
        scratch, ctx = self.pool.scratch, self.spec.max_context
        x = StepInputs(batch, seq, torch.device("cpu"))
        x.slots.fill_(scratch)
        x.write_slots.fill_(scratch)
        steps = torch.arange(seq)
        for b, (row, slot, start) in enumerate(zip(rows, slots, starts)):
            n = len(row)
            x.tokens[b, :n] = torch.tensor(row)
            x.positions[b] = start + steps
            x.slots[b] = slot
            x.write_slots[b, :n] = slot
            x.last[b] = n - 1
        # Padding writes go to the scratch slot, at a position inside the pool.
        x.write_pos.copy_(torch.where(x.write_slots == scratch, x.positions.clamp(max=ctx - 1), x.positions))
        return x

    def _run(self, index: int, rows: list[list[int]], slots: list[int], starts: list[int]) -> torch.Tensor:
        self._check(rows, slots, starts)
        host = self._host_inputs(index, rows, slots, starts)
        n = len(rows)
        if self.cuda_graphs:
            graph, buffers, out = self._graph(index)
            buffers.fill(host)
            graph.replay()
            return out[:n].clone()  # the next replay overwrites out
        kv_len = max(s + len(r) for r, s in zip(rows, starts))
        with torch.inference_mode():
            x = StepInputs(*self.step_shapes[index], self.device)
            x.fill(host)
            return self._forward(x, kv_len)[:n]

    def _forward(self, x: StepInputs, kv_len: int) -> torch.Tensor:
        return self.forward(x.tokens, x.positions, x.slots, x.write_slots, x.write_pos, x.last, kv_len)

    def _graph(self, index: int):
        if self.graphs[index] is None:
            t0 = time.perf_counter()
            buffers = StepInputs(*self.step_shapes[index], self.device)
            buffers.slots.fill_(self.pool.scratch)
            buffers.write_slots.fill_(self.pool.scratch)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(2):
                    self._forward(buffers, self.spec.max_context)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                out = self._forward(buffers, self.spec.max_context)
            self.graphs[index] = (graph, buffers, out)
            log.info("profile %d %r captured as a CUDA graph in %.1f s", index, self.profiles.names[index],
                     time.perf_counter() - t0)
        return self.graphs[index]

    def warm_up(self) -> list[float]:
        """Run every profile once on scratch rows (captures its graph on CUDA); seconds per profile."""
        times = []
        for i, (batch, seq) in enumerate(self.step_shapes):
            t0 = time.perf_counter()
            host_rows = [[0] * seq]
            x = self._host_inputs(i, host_rows, [self.pool.scratch], [0])
            x.slots.fill_(self.pool.scratch)
            x.write_slots.fill_(self.pool.scratch)
            if self.cuda_graphs:
                graph, buffers, _ = self._graph(i)
                buffers.fill(x)
                graph.replay()
                torch.cuda.synchronize(self.device)
            else:
                with torch.inference_mode():
                    self._forward(x, seq)
            times.append(time.perf_counter() - t0)
        return times


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
    weights = {k: v.to(dtype) for k, v in load_file(str(version_dir / WEIGHTS), device=str(device)).items()}
    engine = GenerationEngine(shape, fuse_weights(shape, weights), spec, device)
    log.info("generate engine: %d profiles %s, %d slots x %d context, KV pool %.1f MiB on %s",
             len(engine.profiles), list(engine.profiles.names), spec.slots, spec.max_context,
             engine.kv_bytes / 2**20, device)
    return engine
