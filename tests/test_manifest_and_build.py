"""The engine manifest and the build's pure helpers (example shapes, export Dims, config.pbtxt).

Nothing is exported or compiled here. Pure logic, no Triton or GPU:
``python -m pytest tests/test_manifest_and_build.py -q``.
"""

import hashlib
import json

import pytest
import torch

from llmprofiles import build, export
from llmprofiles.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    EngineLoadError,
    profiles_of,
    read_manifest,
    sha256_json,
    write_manifest,
)
from llmprofiles.profiles.sets import MULTI, SINGLE
from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange

CPU = torch.device("cpu")


@pytest.fixture
def version_dir(tmp_path):
    d = tmp_path / "llm" / "1"
    d.mkdir(parents=True)
    (d / "weights.safetensors").write_bytes(b"weights-bytes")
    (d / "profile_0_decode.pt2").write_bytes(b"decode-package")
    return d


@pytest.fixture
def written(version_dir):
    fields = {"profiles": MULTI.to_dict(), "runtime": "aoti", "vocab_size": 32000}
    return write_manifest(version_dir, fields, ["weights.safetensors", "profile_0_decode.pt2"])


# --- manifest ------------------------------------------------------------------------------


def test_write_then_read_round_trips(version_dir, written):
    back = read_manifest(version_dir)
    assert back == written
    assert back["format_version"] == FORMAT_VERSION
    assert back["runtime"] == "aoti" and back["vocab_size"] == 32000
    assert profiles_of(back) == MULTI


def test_manifest_records_sha256_of_every_artifact(version_dir, written):
    assert written["files"] == {
        "weights.safetensors": hashlib.sha256(b"weights-bytes").hexdigest(),
        "profile_0_decode.pt2": hashlib.sha256(b"decode-package").hexdigest(),
    }
    assert written["content_hash"] == sha256_json(written["files"])
    assert json.loads((version_dir / MANIFEST).read_text()) == written
    assert not (version_dir / (MANIFEST + ".tmp")).exists()


def test_missing_manifest_raises_with_make_build_hint(tmp_path):
    with pytest.raises(EngineLoadError) as e:
        read_manifest(tmp_path)
    assert f"no engine manifest at {tmp_path / MANIFEST}" in str(e.value)
    assert "make build" in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "", "[]", '{"files": {}}', '{"profiles": {}, "files": {}}'])
def test_corrupt_manifest_raises_with_make_build_hint(version_dir, text):
    (version_dir / MANIFEST).write_text(text)
    with pytest.raises(EngineLoadError) as e:
        read_manifest(version_dir)
    assert f"engine manifest {version_dir / MANIFEST} is corrupt" in str(e.value)
    assert "make build" in str(e.value)


def test_manifest_with_invalid_profiles_is_corrupt(version_dir, written):
    written["profiles"]["inputs"][0]["profiles"][1]["max_shape"] = [1, 0]
    (version_dir / MANIFEST).write_text(json.dumps(written))
    with pytest.raises(EngineLoadError, match=r"is corrupt \(input 'input_ids', profile 1: .*\); run `make build`"):
        read_manifest(version_dir)


def test_manifest_with_non_mapping_files_is_corrupt(version_dir, written):
    written["files"] = ["weights.safetensors"]
    (version_dir / MANIFEST).write_text(json.dumps(written))
    with pytest.raises(EngineLoadError, match=r"is corrupt .*make build"):
        read_manifest(version_dir)


def test_manifest_with_non_string_profile_names_is_corrupt(version_dir, written):
    written["profiles"]["names"] = [0, 1]
    (version_dir / MANIFEST).write_text(json.dumps(written))
    with pytest.raises(EngineLoadError, match=r"is corrupt .*make build"):
        read_manifest(version_dir)


def test_other_format_version_raises(version_dir, written):
    written["format_version"] = FORMAT_VERSION + 1
    (version_dir / MANIFEST).write_text(json.dumps(written))
    with pytest.raises(EngineLoadError, match=rf"has format {FORMAT_VERSION + 1}, expected {FORMAT_VERSION}; "
                                              r"run `make build`"):
        read_manifest(version_dir)


def test_missing_artifact_raises_naming_it(version_dir, written):
    (version_dir / "profile_0_decode.pt2").unlink()
    with pytest.raises(EngineLoadError) as e:
        read_manifest(version_dir)
    assert f"engine artifact {version_dir / 'profile_0_decode.pt2'} is missing" in str(e.value)
    assert "make build" in str(e.value)


def test_changed_artifact_bytes_raise_hash_mismatch(version_dir, written):
    (version_dir / "weights.safetensors").write_bytes(b"weights-bytez")  # same size, one byte differs
    with pytest.raises(EngineLoadError) as e:
        read_manifest(version_dir)
    assert f"engine artifact {version_dir / 'weights.safetensors'} does not match its manifest hash" in str(e.value)
    assert "make build" in str(e.value)


def test_verify_false_skips_artifact_checks(version_dir, written):
    (version_dir / "weights.safetensors").unlink()
    assert read_manifest(version_dir, verify=False) == written


# --- export: example shapes and export Dims ---------------------------------------------------


@pytest.mark.parametrize("lo,opt,hi,expected", [
    (1, 1, 1, 1),        # static: the only value
    (4, 4, 4, 4),        # static above 1
    (1, 1, 512, 2),      # dynamic from 1: example raised to 2 so export keeps it symbolic
    (1, 256, 512, 256),  # dynamic: the opt point
    (1, 1, 2, 2),
    (3, 5, 8, 5),
])
def test_example_dim(lo, opt, hi, expected):
    assert export.example_dim(lo, opt, hi) == expected


def test_example_inputs_for_multi_envelope_use_seq_2():
    input_ids, position_ids = export.example_inputs(MULTI.envelope(), 50, CPU)
    assert input_ids.shape == (1, 2) and input_ids.dtype == torch.int64
    assert int(input_ids.min()) >= 0 and int(input_ids.max()) < 50
    assert position_ids.tolist() == [[0, 1]]
    assert position_ids.is_contiguous()


@pytest.mark.parametrize("index,shape", [(0, (1, 1)), (1, (1, 256))])
def test_example_inputs_per_profile(index, shape):
    input_ids, position_ids = export.example_inputs(MULTI.ranges(index), 50, CPU)
    assert tuple(input_ids.shape) == shape
    assert tuple(position_ids.shape) == shape
    assert position_ids[0].tolist() == list(range(shape[1]))


def assert_seq_dim(dims, lo, hi):
    assert set(dims) == {1}
    seq = dims[1]
    assert (seq.__name__, seq.min, seq.max) == ("seq", lo, hi)


def test_dynamic_shapes_for_multi_envelope_is_one_shared_seq_dim():
    ids_dims, pos_dims = export.dynamic_shapes(MULTI.envelope())
    assert_seq_dim(ids_dims, 1, 512)
    assert_seq_dim(pos_dims, 1, 512)
    assert ids_dims[1] is pos_dims[1]  # the two inputs share one symbol
    assert ids_dims is not pos_dims


def test_dynamic_shapes_for_static_decode_profile_has_no_dim():
    assert export.dynamic_shapes(MULTI.ranges(0)) == ({}, {})


def test_dynamic_shapes_for_prefill_profile_has_seq_dim():
    ids_dims, pos_dims = export.dynamic_shapes(MULTI.ranges(1))
    assert_seq_dim(ids_dims, 1, 512)
    assert_seq_dim(pos_dims, 1, 512)


def test_dynamic_shapes_for_single_set_match_prefill():
    ids_dims, _ = export.dynamic_shapes(SINGLE.envelope())
    assert_seq_dim(ids_dims, 1, 512)
    inputs, _ = export.example_inputs(SINGLE.envelope(), 50, CPU)
    assert inputs.shape == (1, 256)


def test_dynamic_shapes_name_a_dynamic_batch():
    r = ShapeRange((1, 1), (4, 1), (8, 1))
    ps = ProfileSet(("decode",), (InputSpec("input_ids", profiles=(r,)), InputSpec("position_ids", profiles=(r,))))
    ids_dims, _ = export.dynamic_shapes(ps.envelope())
    assert set(ids_dims) == {0}
    assert (ids_dims[0].__name__, ids_dims[0].min, ids_dims[0].max) == ("batch", 1, 8)
    assert export.example_inputs(ps.envelope(), 10, CPU)[0].shape == (4, 1)


# --- build: config.pbtxt -----------------------------------------------------------------


def read_config(model_dir, profiles, dtype, device):
    build.write_triton_config(model_dir, profiles, dtype, torch.device(device))
    return (model_dir / "config.pbtxt").read_text()


def test_triton_config_for_cpu_float32(tmp_path):
    text = read_config(tmp_path, MULTI, torch.float32, "cpu")
    assert 'backend: "python"' in text
    assert "kind: KIND_CPU" in text and "KIND_GPU" not in text
    assert '{ name: "logits", data_type: TYPE_FP32, dims: [ -1, -1 ] }' in text
    assert '{ name: "input_ids", data_type: TYPE_INT64, dims: [ -1, -1 ] }' in text
    assert '{ name: "position_ids", data_type: TYPE_INT64, dims: [ -1, -1 ], optional: true }' in text
    assert '{ name: "profile_index", data_type: TYPE_INT32, dims: [ 1 ] }' in text
    assert 'string_value: "decode,prefill"' in text
    assert "max_batch_size: 0" in text


def test_triton_config_for_cuda_float16(tmp_path):
    text = read_config(tmp_path, MULTI, torch.float16, "cuda")
    assert "kind: KIND_GPU" in text and "KIND_CPU" not in text
    assert "data_type: TYPE_FP16" in text and "TYPE_FP32" not in text


def test_triton_config_for_bfloat16(tmp_path):
    assert "data_type: TYPE_BF16" in read_config(tmp_path, MULTI, torch.bfloat16, "cuda")


def test_triton_config_for_single_set_names_one_profile(tmp_path):
    assert 'string_value: "prefill" }' in read_config(tmp_path, SINGLE, torch.float32, "cpu")


def test_triton_config_is_overwritten(tmp_path):
    read_config(tmp_path, MULTI, torch.float16, "cuda")
    text = read_config(tmp_path, MULTI, torch.float32, "cpu")
    assert "KIND_CPU" in text and "KIND_GPU" not in text
