"""The Engine boundary refuses anything it cannot run exactly as asked."""

from __future__ import annotations

import json

import pytest
import torch

from llmprofiles.manifest import EngineLoadError, write_manifest
from llmprofiles.profiles.selection import SelectionError
from llmprofiles.profiles.sets import MULTI
from llmprofiles.runtimes.load import load_engine

from test_serving import FakeEngine


def ids(seq: int) -> torch.Tensor:
    return torch.zeros(1, seq, dtype=torch.int64)


@pytest.mark.parametrize("index", [True, 1.0, "1"])
def test_non_int_profile_index_raises_type_error(index):
    engine = FakeEngine()
    with pytest.raises(TypeError, match="profile index must be an int"):
        engine.run(index, ids(2), ids(2))
    assert engine.calls == []


def test_mismatched_input_shapes_never_reach_the_engine():
    engine = FakeEngine()
    with pytest.raises(SelectionError):
        engine.run(1, ids(4), ids(5))
    assert engine.calls == []


def test_manifest_without_runtime_fails_load_saying_make_build(tmp_path):
    write_manifest(tmp_path, {"profiles": MULTI.to_dict()}, [])
    with pytest.raises(EngineLoadError, match="unknown runtime None.*make build"):
        load_engine(tmp_path)


def test_manifest_fields_cannot_override_the_format_version(tmp_path):
    write_manifest(tmp_path, {"profiles": MULTI.to_dict(), "format_version": 99}, [])
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == 1


def test_inputs_go_to_the_device_without_a_stream_sync_unless_the_gpu_would_read_them_later():
    """Pageable host memory is staged before the copy returns (safe without a sync); pinned memory is read
    by the GPU later, after the caller may have reused it, so that copy blocks."""
    from types import SimpleNamespace

    from llmprofiles.engine import copy_in, to_device

    calls = []
    dst = SimpleNamespace(copy_=lambda src, non_blocking: calls.append((src.name, non_blocking)) or dst)
    for name, pinned, cuda in (("pageable", False, False), ("pinned", True, False), ("device", False, True)):
        copy_in(dst, SimpleNamespace(name=name, is_pinned=lambda p=pinned: p, is_cuda=cuda))
    assert calls == [("pageable", True), ("pinned", False), ("device", True)]
    t = torch.arange(3)
    assert to_device(t, "cpu") is t and to_device(t, torch.device("cpu")) is t  # already there: no copy
