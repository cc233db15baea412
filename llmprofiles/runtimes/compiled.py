"""The torch.compile runtime (CUDA; also runs on CPU): one compile per profile.

Every profile is a ``torch.compile`` of the same module, so the weights exist
once. A fully static profile (decode, seq == 1) is compiled for that exact shape
(matmuls autotuned for it) and replayed as a CUDA graph, which removes
per-kernel host overhead; a dynamic profile is compiled for its range and warmed
at its opt. Before compiling, sibling projections (q/k/v, gate/up) are fused
into one GEMM each, single-token inputs (decode, and the last-token lm_head) are
computed as tuned reductions, and so is the attention of a single query token,
instead of an SDPA kernel (``fusion.py``). ``make build`` saves the compiler's
cache artifacts so serving starts warm.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from llmprofiles import models
from llmprofiles.engine import Engine
from llmprofiles.manifest import EngineLoadError, profiles_of
from llmprofiles.profiles.spec import ProfileSet
from llmprofiles.runtimes import fusion
from llmprofiles.runtimes.weights import load_weights

log = logging.getLogger(__name__)

COMPILE_CACHE = "compile_cache.bin"


# Dynamo settings while a profile is compiled (Dynamo traces on the first calls).
# Float attributes of the model (norm eps, embedding and attention scales) become
# constants: as symbolic floats they make Dynamo restart and trace the model twice.
# A warm gemma-3-1b prefill compile on CPU went from 74-80 s to 21-24 s (bench/NOTES.md).
# Calls after the warm-up need no patch (entering one costs ~40 us): they hit the
# compiled graphs.
COMPILE_CONFIG = {"specialize_float": True}


class StaticGraphRunner:
    """A static-shape profile compiled for its exact shape and replayed as a CUDA graph."""

    def __init__(self, fn: Callable, shape: tuple[int, ...], device: torch.device):
        self.ids = torch.zeros(shape, dtype=torch.int64, device=device)
        self.pos = models.default_position_ids(self.ids).contiguous()
        self.graph = None
        if device.type == "cuda":
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream), torch.no_grad(), torch._dynamo.config.patch(**COMPILE_CONFIG):
                for _ in range(3):  # compile, autotune and settle allocations before capture
                    fn(self.ids, self.pos)
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.out = fn(self.ids, self.pos)
        self.fn = fn

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            with torch.no_grad():
                return self.fn(input_ids, position_ids)
        self.ids.copy_(input_ids, non_blocking=True)
        self.pos.copy_(position_ids, non_blocking=True)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites self.out


class DynamicRunner:
    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(input_ids, position_ids)


# A static profile is tuned for its one shape: matmul templates (max_autotune) and
# the launch configs of reductions and pointwise kernels (coordinate descent), which
# is where the single-token projections go (fusion.use_gemv). The CUDA graph is
# captured by StaticGraphRunner, not by inductor. Measured variants: bench/NOTES.md.
STATIC_OPTIONS = {"max_autotune": True, "coordinate_descent_tuning": True, "triton.cudagraphs": False}


class CompiledEngine(Engine):
    """All profiles are compiled views of one module, so the weights exist once.

    The module is changed in place (projections fused, single tokens as GEMVs, single-query attention)
    and owned by the engine.
    """

    def __init__(self, wrapper: torch.nn.Module, profiles: ProfileSet, device: torch.device,
                 cuda_graphs: bool = True):
        super().__init__(profiles, wrapper.model.config.vocab_size, device)
        fusion.fuse_projections(wrapper)
        fusion.use_gemv(wrapper)
        fusion.use_single_query_attention(wrapper.model)
        self.wrapper = wrapper
        self.runners = []
        for i, name in enumerate(profiles.names):
            r = profiles.ranges(i)["input_ids"]
            t0 = time.perf_counter()
            if r.is_static:
                fn = torch.compile(wrapper, dynamic=False, fullgraph=True,
                                   options={**STATIC_OPTIONS, **fusion.compile_options()})
                runner = StaticGraphRunner(fn, r.min, device) if cuda_graphs else DynamicRunner(fn)
            else:
                runner = DynamicRunner(torch.compile(wrapper, dynamic=True, fullgraph=True,
                                                     options=fusion.compile_options()))
            # Warm at the profile's opt first (the size hint the kernels are tuned
            # for), then at its ends: torch.compile specialises size 1 on its own.
            with torch._dynamo.config.patch(**COMPILE_CONFIG):
                for shape in dict.fromkeys((r.opt, r.min, r.max)):
                    ids = torch.zeros(shape, dtype=torch.int64, device=device)
                    runner(ids, models.default_position_ids(ids))
            log.info("profile %d %r ready in %.1f s (%s)", i, name, time.perf_counter() - t0,
                     "static, CUDA graph" if isinstance(runner, StaticGraphRunner) and runner.graph else "compiled")
            self.runners.append(runner)

    def _forward(self, profile_index, input_ids, position_ids):
        return self.runners[profile_index](input_ids, position_ids)


def wrapper_from_artifacts(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads((version_dir / "model_config.json").read_text())
    config = AutoConfig.for_model(**cfg)
    dtype = getattr(torch, manifest["dtype"])
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    wrapper = models.LastTokenLM(hf)
    weights = load_weights(version_dir, manifest, device)
    params = dict(wrapper.named_parameters())
    missing = [k for k in params if k not in weights]
    if missing:
        raise EngineLoadError(f"weights.safetensors in {version_dir} lacks {missing[:3]}; run `make build`")
    wrapper.load_state_dict({k: weights[k] for k in wrapper.state_dict() if k in weights}, strict=False, assign=True)
    wrapper.model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: rebuild them on the device.
    for name, buf in list(wrapper.named_buffers()):
        if buf.is_meta:
            if name not in weights:
                raise EngineLoadError(f"buffer {name} missing from weights.safetensors in {version_dir}; run `make build`")
            mod_name, _, attr = name.rpartition(".")
            wrapper.get_submodule(mod_name)._buffers[attr] = weights[name]
    hf.config.use_cache = False
    return wrapper.to(device).eval()


def load_compiled(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> CompiledEngine:
    """Rebuild the module from weights + config and compile its profiles (warm from the saved cache)."""
    cache = version_dir / COMPILE_CACHE
    if cache.is_file() and device.type == "cuda":
        t0 = time.perf_counter()
        torch.compiler.load_cache_artifacts(cache.read_bytes())
        log.info("loaded compile cache artifacts in %.1f s", time.perf_counter() - t0)
    wrapper = wrapper_from_artifacts(version_dir, manifest, device)
    engine = CompiledEngine(wrapper, profiles_of(manifest), device, cuda_graphs=device.type == "cuda")
    engine.version_dir = version_dir
    return engine


def build_compiled(ctx, step) -> tuple[list[str], dict]:
    if ctx.device.type != "cuda":
        return [], {}
    with step("compile every profile on the GPU and save the compiler's cache artifacts"):
        CompiledEngine(ctx.wrapper, ctx.profiles, ctx.device)
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            return [], {}
        (ctx.version_dir / COMPILE_CACHE).write_bytes(artifacts[0])
    return [COMPILE_CACHE], {}
