"""The TensorRT runtime: one engine with N optimization profiles, pinned per call.

Build (``make build RUNTIME=tensorrt``): the project's ProfileSet becomes one
profiled ``torch_tensorrt.Input`` per model input, and the union export is
compiled into one serialized TensorRT engine, ``engine.trt``.

Load: the engine is deserialized with the TensorRT Python API, its profile table
is read back from the engine itself, and loading is refused when that table
disagrees with the manifest. The engine's table drives selection: ordered
first-fit on every call (never Torch-TensorRT's sticky ``"auto"``), then the
chosen index is pinned with ``set_optimization_profile_async`` before any input
shape is set.

Written against torch-tensorrt >= 2.14 and TensorRT 10/11, neither of which can
be installed on the project's machines: this file is exercised by contract tests
with a stand-in (``tests/tensorrt_standin.py``) and, where TensorRT exists, by
``make check-tensorrt``. See docs/TENSORRT.md.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from llmprofiles.engine import Engine
from llmprofiles.manifest import EngineLoadError, profiles_of
from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange

log = logging.getLogger(__name__)

ENGINE_FILE = "engine.trt"
HINT = "see docs/TENSORRT.md: build and serve inside an NGC PyTorch container that ships TensorRT"
REBUILD = "rebuild with `make build RUNTIME=tensorrt DEVICE=cuda`"


class TensorRTUnavailable(EngineLoadError):
    """``tensorrt`` or ``torch_tensorrt`` cannot be imported; the message names which."""


def _import(name: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise TensorRTUnavailable(f"the Python package `{name}` is needed to {purpose} but cannot be "
                                  f"imported ({e}); {HINT}") from e


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, imported on use (tests place a stand-in in ``sys.modules``)."""
    return _import("tensorrt", "run a TensorRT engine")


def import_torch_tensorrt() -> ModuleType:
    return _import("torch_tensorrt", "build a TensorRT engine")


# --- build ---------------------------------------------------------------------

def trt_input_kwargs(profiles: ProfileSet) -> list[dict[str, Any]]:
    """Keyword arguments for one ``torch_tensorrt.Input`` per model input, in forward order.

    A profiled input declares every profile, in index order; an input without
    profiles gives its single range (or static shape), which Torch-TensorRT reuses
    in every profile. Needs no torch_tensorrt, so it is tested on any machine.

    >>> from llmprofiles.profiles.sets import MULTI
    >>> [(kw["name"], len(kw["profiles"])) for kw in trt_input_kwargs(MULTI)]
    [('input_ids', 2), ('position_ids', 2)]
    """
    out = []
    for spec in profiles.inputs:
        kw: dict[str, Any] = {"name": spec.name, "dtype": getattr(torch, spec.dtype)}
        if spec.profiles is not None:
            kw["profiles"] = [{"min_shape": r.min, "opt_shape": r.opt, "max_shape": r.max} for r in spec.profiles]
        elif spec.shape.is_static:
            kw["shape"] = spec.shape.min
        else:
            kw |= {"min_shape": spec.shape.min, "opt_shape": spec.shape.opt, "max_shape": spec.shape.max}
        out.append(kw)
    return out


def trt_inputs(profiles: ProfileSet) -> list[Any]:
    """The profiled ``torch_tensorrt.Input`` objects for ``profiles``."""
    torch_tensorrt = import_torch_tensorrt()
    # torch-tensorrt >= 2.14: Input(profiles=[{min_shape, opt_shape, max_shape}, ...]).
    return [torch_tensorrt.Input(**kw) for kw in trt_input_kwargs(profiles)]


def attention_bias_is_causal(config: Any, max_seq: int) -> bool:
    """Whether every attention mask the model builds up to ``max_seq`` tokens is plain causal.

    Requests carry no padding mask, so full-attention layers are causal. A
    sliding-window layer differs from causal only once a query is ``sliding_window``
    positions past a key, which cannot happen when ``max_seq <= sliding_window``.
    """
    window = getattr(config, "sliding_window", None)
    return window is None or max_seq <= window


def build_tensorrt(ctx, step) -> tuple[list[str], dict]:
    """Compile ``ctx.exported`` (the union export) into one engine with every profile of ``ctx.profiles``."""
    torch_tensorrt = import_torch_tensorrt()
    trt = import_tensorrt()
    if ctx.device.type != "cuda":
        raise SystemExit("RUNTIME=tensorrt builds on a GPU only; use DEVICE=cuda")
    if ctx.dtype != torch.float16:
        # torch-tensorrt >= 2.13 removed `enabled_precisions`: an engine keeps the
        # exported program's dtypes, so fp16 comes from exporting in fp16.
        raise SystemExit(f"RUNTIME=tensorrt builds fp16 engines; got DTYPE={str(ctx.dtype).removeprefix('torch.')}, "
                         f"use DTYPE=float16")
    max_seq = ctx.profiles.envelope()["input_ids"].max[-1]
    causal = attention_bias_is_causal(ctx.wrapper.model.config, max_seq)
    path = ctx.version_dir / ENGINE_FILE
    with step(f"TensorRT engine with {len(ctx.profiles)} optimization profiles {list(ctx.profiles.names)}, fp16"):
        # torch-tensorrt >= 2.14 dynamo API; returns the serialized engine as bytes.
        # HF's SDPA attention lowers through Torch-TensorRT's own attention
        # converters; attn_bias_is_causal (>= 2.11) says HF's mask is causal.
        engine_bytes = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            ctx.exported,
            arg_inputs=trt_inputs(ctx.profiles),
            device=ctx.device,
            min_block_size=1,
            require_full_compilation=True,  # one engine, no graph breaks
            use_fp32_acc=True,  # fp16 in and out, fp32 matmul accumulation (2.14)
            attn_bias_is_causal=causal,
            offload_module_to_cpu=False,  # 2.14: incompatible with Input(profiles=...)
        )
        path.write_bytes(engine_bytes)
    with step("read the profile table back from the engine"):
        with on_device(ctx.device):
            # TensorRT 10/11: IRuntime.deserialize_cuda_engine.
            cuda_engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
            table = read_profile_table(trt, cuda_engine, ctx.profiles.names)
        check_profiles_agree(table, ctx.profiles, path)
    return [ENGINE_FILE], {"tensorrt_version": trt.__version__, "torch_tensorrt_version": torch_tensorrt.__version__,
                           "attn_bias_is_causal": causal}


# --- load and run ----------------------------------------------------------------

def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current, so TensorRT allocates on the model instance's GPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def stream_handle(stream: torch.cuda.Stream | None) -> int:
    """The raw CUDA stream handle TensorRT takes; 0 on CPU (only the test stand-in runs there)."""
    return 0 if stream is None else stream.cuda_stream


def torch_dtypes(trt: ModuleType) -> dict[Any, torch.dtype]:
    pairs = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
    # TensorRT 10/11: trt.DataType members.
    return {getattr(trt.DataType, n): t for n, t in pairs.items() if hasattr(trt.DataType, n)}


def io_names(trt: ModuleType, cuda_engine: Any, mode_name: str) -> list[str]:
    mode = getattr(trt.TensorIOMode, mode_name)
    # TensorRT 10/11: name-based I/O (num_io_tensors, get_tensor_name, get_tensor_mode).
    names = [cuda_engine.get_tensor_name(i) for i in range(cuda_engine.num_io_tensors)]
    return [n for n in names if cuda_engine.get_tensor_mode(n) == mode]


def read_profile_table(trt: ModuleType, cuda_engine: Any, names: tuple[str, ...]) -> ProfileSet:
    """The engine's own optimization profiles as a ProfileSet, labelled with ``names``.

    The engine stores no profile names; ``names`` (from the manifest) only label
    the indices. Every number comes from the engine.
    """
    count = cuda_engine.num_optimization_profiles  # TensorRT 10/11
    if count != len(names):
        raise EngineLoadError(f"the TensorRT engine has {count} optimization profile(s) but the manifest declares "
                              f"{len(names)} {list(names)}; the engine and manifest disagree, {REBUILD}")
    dtypes = torch_dtypes(trt)
    specs = []
    for name in io_names(trt, cuda_engine, "INPUT"):
        ranges = []
        for i in range(count):
            # TensorRT 10/11: get_tensor_profile_shape(name, profile_index) -> [min, opt, max].
            lo, opt, hi = (tuple(int(d) for d in dims) for dims in cuda_engine.get_tensor_profile_shape(name, i))
            ranges.append(ShapeRange(lo, opt, hi))
        dtype = str(dtypes[cuda_engine.get_tensor_dtype(name)]).removeprefix("torch.")  # TensorRT 10/11
        specs.append(InputSpec(name, profiles=tuple(ranges), dtype=dtype))
    return ProfileSet(tuple(names), tuple(specs))


def profile_mismatches(engine: ProfileSet, manifest: ProfileSet) -> list[str]:
    """Every way the engine's table differs from the manifest's, as readable lines."""
    if len(engine) != len(manifest):
        return [f"engine has {len(engine)} profile(s), manifest declares {len(manifest)} {list(manifest.names)}"]
    if sorted(engine.input_names) != sorted(manifest.input_names):
        return [f"engine inputs {sorted(engine.input_names)} differ from manifest inputs {sorted(manifest.input_names)}"]
    out = []
    for i in range(len(manifest)):
        theirs, ours = engine.ranges(i), manifest.ranges(i)
        for name in manifest.input_names:
            for field in ("min", "opt", "max"):
                a, b = getattr(theirs[name], field), getattr(ours[name], field)
                if a != b:
                    out.append(f"profile {i} ({manifest.names[i]}), input {name!r}: engine {field}_shape "
                               f"{list(a)} != manifest {field}_shape {list(b)}")
    return out


def check_profiles_agree(engine: ProfileSet, manifest: ProfileSet, path: Path) -> None:
    problems = profile_mismatches(engine, manifest)
    if problems:
        raise EngineLoadError(f"the optimization profiles of TensorRT engine {path} disagree with its manifest: "
                              f"{'; '.join(problems)}; {REBUILD}")


class TensorRTEngine(Engine):
    """One deserialized engine and one execution context, on one device.

    The profile table is read from ``cuda_engine``; :meth:`Engine.select` runs
    ordered first-fit over it and :meth:`Engine.run` checks shapes against it
    before :meth:`_forward` pins the profile and enqueues the engine.
    """

    def __init__(self, trt: ModuleType, cuda_engine: Any, names: tuple[str, ...], vocab_size: int,
                 device: torch.device):
        super().__init__(read_profile_table(trt, cuda_engine, names), vocab_size, device)
        self.trt = trt
        self.cuda_engine = cuda_engine
        outputs = io_names(trt, cuda_engine, "OUTPUT")
        if len(outputs) != 1:
            raise EngineLoadError(f"the TensorRT engine has outputs {outputs}; expected exactly one (logits), {REBUILD}")
        self.output = outputs[0]
        dtypes = torch_dtypes(trt)
        # TensorRT 10/11: get_tensor_dtype(name).
        self.dtypes = {n: dtypes[cuda_engine.get_tensor_dtype(n)] for n in (*self.profiles.input_names, self.output)}
        self.context = cuda_engine.create_execution_context()  # TensorRT 10/11
        if self.context is None:
            raise EngineLoadError(f"TensorRT could not create an execution context on {device} (out of memory?)")
        # A stream of our own: enqueueing on the legacy default stream makes TensorRT synchronise.
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.active_profile: int | None = None  # none pinned yet: the first call always pins
        self.runtime = None  # load_tensorrt keeps the TensorRT runtime alive here

    def pin(self, profile_index: int, stream: int) -> None:
        """Make ``profile_index`` the context's optimization profile; a no-op when it already is."""
        if profile_index == self.active_profile:
            return
        # TensorRT 10/11: set_optimization_profile_async(profile_index, stream_handle) -> bool.
        if not self.context.set_optimization_profile_async(profile_index, stream):
            raise RuntimeError(f"TensorRT refused to switch to optimization profile {profile_index}")
        self.active_profile = profile_index
        log.debug("pinned optimization profile %s", self.profiles.describe(profile_index))

    def _forward(self, profile_index: int, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids, "position_ids": position_ids}
        with on_device(self.device):
            if self.stream is not None:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
            handle = stream_handle(self.stream)
            # Profile first: input shapes are checked against the active profile.
            self.pin(profile_index, handle)
            bound = []  # keeps the converted inputs alive until the engine has run
            for name in self.profiles.input_names:
                t = feeds[name].to(self.dtypes[name]).contiguous()
                # TensorRT 10/11: set_input_shape(name, shape) -> bool, set_tensor_address(name, ptr).
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise RuntimeError(f"TensorRT rejected shape {list(t.shape)} for {name!r} "
                                       f"in profile {self.profiles.describe(profile_index)}")
                self.context.set_tensor_address(name, t.data_ptr())
                bound.append(t)
            shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output))  # TensorRT 10/11
            if any(d < 0 for d in shape):
                raise RuntimeError(f"TensorRT could not infer the shape of {self.output!r} (got {list(shape)})")
            logits = torch.empty(shape, dtype=self.dtypes[self.output], device=self.device)
            self.context.set_tensor_address(self.output, logits.data_ptr())
            if not self.context.execute_async_v3(handle):  # TensorRT 10/11
                raise RuntimeError(f"TensorRT execution failed on profile {profile_index}")
            if self.stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return logits


def load_tensorrt(version_dir: str | Path, manifest: dict[str, Any], device: torch.device) -> TensorRTEngine:
    """Deserialize ``engine.trt`` on ``device``; refuse it unless its profiles match the manifest."""
    trt = import_tensorrt()
    version_dir = Path(version_dir)
    path = version_dir / ENGINE_FILE
    if manifest.get("device") != device.type:
        raise EngineLoadError(f"the TensorRT engine in {version_dir} was built for {manifest.get('device')!r}, "
                              f"not for {device}; {REBUILD}")
    built_with = manifest.get("tensorrt_version")
    if built_with is not None and built_with != trt.__version__:
        # A plan file only loads in the TensorRT version that built it.
        raise EngineLoadError(f"the TensorRT engine in {version_dir} was built with TensorRT {built_with}, "
                              f"this process has TensorRT {trt.__version__}; {REBUILD} here")
    expected = profiles_of(manifest)
    with on_device(device):
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # TensorRT 10/11
        cuda_engine = runtime.deserialize_cuda_engine(path.read_bytes())  # TensorRT 10/11: None on failure
        if cuda_engine is None:
            raise EngineLoadError(f"TensorRT could not deserialize {path} (other GPU or TensorRT version?); {REBUILD}")
        engine = TensorRTEngine(trt, cuda_engine, expected.names, manifest["vocab_size"], device)
    check_profiles_agree(engine.profiles, expected, path)
    engine.runtime = runtime  # the runtime must outlive the engine it deserialized
    log.info("TensorRT %s engine %s on %s: profiles %s", trt.__version__, path, device,
             "; ".join(engine.profiles.describe(i) for i in range(len(engine.profiles))))
    return engine
