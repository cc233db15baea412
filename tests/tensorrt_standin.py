"""A stand-in for the small part of TensorRT (and Torch-TensorRT) that llmprofiles uses.

Tests only: put :func:`tensorrt_module` into ``sys.modules["tensorrt"]``. It
follows the TensorRT 10/11 Python API by name and signature, and enforces the
rules the runtime relies on, raising :class:`RuleBroken` (where TensorRT would
log an error and return False, or fail later) so that a broken rule fails a test:

- a profile index must be in ``[0, num_optimization_profiles)``;
- the profile must be set before input shapes. Stricter than TensorRT, whose
  fresh context starts on profile 0: the project never relies on that default.
  Switching profile invalidates the input shapes, so they are set after it;
- an input shape must lie inside the active profile's ``[min, max]``;
- every input shape and every tensor address is set before ``execute_async_v3``.

Runs on CPU: tensor addresses are host pointers, read and written with ctypes.
The "engine" writes a deterministic function of its inputs (:func:`expected_logits`)
so tests can check that the right data reached the right tensor.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
from types import ModuleType, SimpleNamespace

import torch

VERSION = "11.1.0.standin"
MAGIC = b"STANDIN-TRT-PLAN\n"


class RuleBroken(RuntimeError):
    """The code under test broke a rule of the TensorRT API."""


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    BF16 = "bfloat16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = WARNING):
        self.min_severity = min_severity


def expected_logits(input_ids: torch.Tensor, position_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """What the stand-in engine computes: exact in float32 for small ids and seq <= 512."""
    weights = torch.arange(1, input_ids.shape[1] + 1, dtype=torch.float64)
    row = (input_ids.double() * weights).sum(1) + 0.5 * position_ids.double().sum(1)
    return row[:, None] + torch.arange(vocab_size, dtype=torch.float64)


def serialize_engine(inputs: dict[str, list[tuple]], vocab_size: int, input_dtype: str = "INT64",
                     output_dtype: str = "FLOAT", output_name: str = "output0") -> bytes:
    """A stand-in plan: ``inputs`` maps each input name to its ``(min, opt, max)`` per profile."""
    plan = {"inputs": {n: [[list(s) for s in r] for r in ranges] for n, ranges in inputs.items()},
            "vocab_size": vocab_size, "input_dtype": input_dtype, "output_dtype": output_dtype, "output": output_name}
    return MAGIC + json.dumps(plan).encode()


class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, serialized: bytes) -> CudaEngine | None:
        if not serialized.startswith(MAGIC):
            return None  # TensorRT returns None for a plan it cannot read
        return CudaEngine(json.loads(serialized[len(MAGIC):]))


class CudaEngine:
    def __init__(self, plan: dict):
        self.plan = plan
        self.inputs = {n: [[tuple(s) for s in r] for r in ranges] for n, ranges in plan["inputs"].items()}
        counts = {len(r) for r in self.inputs.values()}
        assert len(counts) == 1, f"stand-in plan declares different profile counts per input: {counts}"
        self.num_optimization_profiles = counts.pop()
        self.output = plan["output"]
        self.names = [*self.inputs, self.output]
        self.num_io_tensors = len(self.names)
        self.profile_shape_queries: list[tuple[str, int]] = []
        self.contexts: list[ExecutionContext] = []

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.OUTPUT if name == self.output else TensorIOMode.INPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.plan["output_dtype"] if name == self.output else self.plan["input_dtype"]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if name not in self.inputs:
            raise RuleBroken(f"get_tensor_profile_shape: {name!r} is not an input of this engine")
        self.check_profile_index(profile_index)
        self.profile_shape_queries.append((name, profile_index))
        return list(self.inputs[name][profile_index])

    def check_profile_index(self, index: int) -> None:
        if not isinstance(index, int) or not 0 <= index < self.num_optimization_profiles:
            raise RuleBroken(f"profile index {index!r} is outside [0, {self.num_optimization_profiles})")

    def create_execution_context(self) -> ExecutionContext:
        self.contexts.append(ExecutionContext(self))
        return self.contexts[-1]


class ExecutionContext:
    def __init__(self, engine: CudaEngine):
        self.engine = engine
        self.profile: int | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[tuple] = []  # every API call, in order
        self.executed_profiles: list[int] = []

    @property
    def active_optimization_profile(self) -> int:
        return -1 if self.profile is None else self.profile

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        self.calls.append(("set_optimization_profile_async", profile_index))
        self.engine.check_profile_index(profile_index)
        check_stream(stream_handle)
        self.profile = profile_index
        self.shapes.clear()  # shapes must be set again for the new profile
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("set_input_shape", name, tuple(shape)))
        if self.profile is None:
            raise RuleBroken(f"set_input_shape({name!r}) before any set_optimization_profile_async")
        if name not in self.engine.inputs:
            raise RuleBroken(f"set_input_shape: {name!r} is not an input of this engine")
        lo, _, hi = self.engine.inputs[name][self.profile]
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise RuleBroken(f"shape {list(shape)} for {name!r} is outside profile {self.profile} "
                             f"(min {list(lo)}, max {list(hi)})")
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.calls.append(("set_tensor_address", name))
        if name not in self.engine.names:
            raise RuleBroken(f"set_tensor_address: {name!r} is not a tensor of this engine")
        if not isinstance(address, int) or address == 0:
            raise RuleBroken(f"set_tensor_address({name!r}): {address!r} is not a device address")
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.engine.output:
            batch = {s[0] for s in self.shapes.values()}
            if len(self.shapes) < len(self.engine.inputs) or len(batch) != 1:
                return (-1, -1)  # TensorRT reports unknown dims as -1
            return (batch.pop(), self.engine.plan["vocab_size"])
        return self.shapes.get(name, (-1,) * len(self.engine.inputs[name][0][0]))

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.calls.append(("execute_async_v3",))
        check_stream(stream_handle)
        if self.profile is None:
            raise RuleBroken("execute_async_v3 before any set_optimization_profile_async")
        missing = [n for n in self.engine.inputs if n not in self.shapes]
        if missing:
            raise RuleBroken(f"execute_async_v3 with no shape set for {missing} on profile {self.profile}")
        missing = [n for n in self.engine.names if n not in self.addresses]
        if missing:
            raise RuleBroken(f"execute_async_v3 with no address set for {missing}")
        feeds = {n: read(self.addresses[n], self.shapes[n], self.engine.get_tensor_dtype(n)) for n in self.engine.inputs}
        out = expected_logits(feeds["input_ids"], feeds["position_ids"], self.engine.plan["vocab_size"])
        write(self.addresses[self.engine.output], out.to(getattr(torch, self.engine.get_tensor_dtype(self.engine.output).value)))
        self.executed_profiles.append(self.profile)
        return True


def check_stream(handle: object) -> None:
    if not isinstance(handle, int):
        raise RuleBroken(f"stream handle must be an int (cudaStream_t), got {type(handle).__name__}")


def read(address: int, shape: tuple[int, ...], dtype: DataType) -> torch.Tensor:
    t = getattr(torch, dtype.value)
    nbytes = math.prod(shape) * t.itemsize
    return torch.frombuffer(bytearray(ctypes.string_at(address, nbytes)), dtype=t).reshape(shape)


def write(address: int, tensor: torch.Tensor) -> None:
    tensor = tensor.contiguous()
    ctypes.memmove(address, tensor.data_ptr(), tensor.numel() * tensor.element_size())


def tensorrt_module() -> ModuleType:
    """A fresh stand-in ``tensorrt`` module."""
    m = ModuleType("tensorrt")
    m.__version__ = VERSION
    m.Logger, m.Runtime, m.DataType, m.TensorIOMode = Logger, Runtime, DataType, TensorIOMode
    return m


def torch_tensorrt_module(vocab_size: int) -> ModuleType:
    """A stand-in ``torch_tensorrt``: records ``Input`` and compile calls, "compiles" into a stand-in plan.

    The plan's profiles come only from the ``Input`` objects it was given, as in
    Torch-TensorRT: an input without ``profiles`` repeats its single range.
    """
    m = ModuleType("torch_tensorrt")
    m.__version__ = "2.14.0.standin"
    m.calls = []

    class Input(SimpleNamespace):
        def ranges(self, count: int) -> list[tuple]:
            if getattr(self, "profiles", None) is not None:
                return [(p["min_shape"], p["opt_shape"], p["max_shape"]) for p in self.profiles]
            if getattr(self, "shape", None) is not None:
                return [(self.shape,) * 3] * count
            return [(self.min_shape, self.opt_shape, self.max_shape)] * count

    def convert_exported_program_to_serialized_trt_engine(exported_program, *, arg_inputs, **settings):
        m.calls.append({"exported_program": exported_program, "arg_inputs": arg_inputs, **settings})
        count = max(len(getattr(i, "profiles", None) or [None]) for i in arg_inputs)
        return serialize_engine({i.name: i.ranges(count) for i in arg_inputs}, vocab_size, output_dtype="HALF")

    m.Input = Input
    m.dynamo = SimpleNamespace(convert_exported_program_to_serialized_trt_engine=convert_exported_program_to_serialized_trt_engine)
    return m
