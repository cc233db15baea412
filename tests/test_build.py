"""The build step on CPU without compiling: local HF dirs, rebuild-only-on-change, artifacts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmprofiles.build import build
from llmprofiles.manifest import read_manifest
from llmprofiles.models import load_model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A real Hugging Face model directory (the tiny preset saved with save_pretrained)."""
    path = tmp_path_factory.mktemp("hf") / "tiny-gemma3"
    load_model("tiny", torch.float32).save_pretrained(path)
    return path


def build_from(source, model_dir, **kw):
    # torch-compile artifacts on CPU are weights + config: no compile at build time.
    return build(str(source), "multi", "torch-compile", "cpu", "float32", model_dir, **kw)


def test_local_hf_dir_builds_its_own_weights(hf_dir, tmp_path):
    manifest = build_from(hf_dir, tmp_path / "llm")
    assert manifest["model"] == str(hf_dir)
    saved = load_file(str(tmp_path / "llm" / "1" / "weights.safetensors"))
    source = load_model(str(hf_dir), torch.float32)
    w = "model.model.layers.0.mlp.down_proj.weight"
    assert torch.equal(saved[w], source.state_dict()[w.removeprefix("model.")])
    assert manifest["profiles"]["names"] == ["decode", "prefill"]
    assert set(manifest["files"]) == {"weights.safetensors", "model_config.json"}


def test_unchanged_inputs_skip_the_rebuild(hf_dir, tmp_path, capsys):
    first = build_from(hf_dir, tmp_path / "llm")
    stamp = (tmp_path / "llm" / "1" / "weights.safetensors").stat().st_mtime_ns
    second = build_from(hf_dir, tmp_path / "llm")
    assert "up to date" in capsys.readouterr().out
    assert second["content_hash"] == first["content_hash"]
    assert (tmp_path / "llm" / "1" / "weights.safetensors").stat().st_mtime_ns == stamp


def test_changed_model_dir_triggers_a_rebuild(hf_dir, tmp_path, capsys):
    build_from(hf_dir, tmp_path / "llm")
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps(config, indent=1))  # same model, new file: must rebuild
    capsys.readouterr()
    build_from(hf_dir, tmp_path / "llm")
    assert "building" in capsys.readouterr().out


def test_build_writes_triton_config_and_a_verifiable_manifest(tmp_path):
    build("tiny", "single", "torch-compile", "cpu", "float32", tmp_path / "llm_single")
    assert read_manifest(tmp_path / "llm_single" / "1")["profile_set"] == "single"
    config = (tmp_path / "llm_single" / "config.pbtxt").read_text()
    assert "KIND_CPU" in config and 'string_value: "prefill"' in config


def test_a_generate_build_cut_short_is_not_up_to_date(tmp_path, monkeypatch, capsys):
    """On CUDA the build warms every step profile (minutes) after writing the manifest the engine loads from; cut
    there, the next build must build again, not call the half-built version up to date (the server would then
    compile at start-up). Cut here where the CPU build does its last step."""
    from llmprofiles.generation import build as gen_build
    from llmprofiles.profiles.sets import GENERATE

    spec = GENERATE["tiny"].replace(slots=2, max_context=64, decode_buckets=(1, 2), prefill_buckets=(32,))
    args = ("tiny", spec, "cpu", "float32", tmp_path / "generate", 4)
    real = gen_build.write_triton_config

    def cut(*a, **kw):
        raise KeyboardInterrupt("make was stopped")

    monkeypatch.setattr(gen_build, "write_triton_config", cut)
    with pytest.raises(KeyboardInterrupt):
        gen_build.build_generate(*args)
    assert (tmp_path / "generate" / "1" / "manifest.json").is_file()  # written, the build not done
    monkeypatch.setattr(gen_build, "write_triton_config", real)
    capsys.readouterr()
    done = gen_build.build_generate(*args)
    out = capsys.readouterr().out
    assert "up to date" not in out and "building generate engine" in out
    gen_build.build_generate(*args)
    assert "up to date" in capsys.readouterr().out
    assert read_manifest(tmp_path / "generate" / "1")["inputs_hash"] == done["inputs_hash"]


@pytest.mark.parametrize("argv, batches", [
    (["--device", "cuda"], (1, 2, 4)),                              # several prompts per prefill step on a GPU
    (["--device", "cuda", "--slots", "2", "--decode-buckets", "1,2"], (1, 2)),  # within the slots
    (["--device", "cuda", "--prefill-batches", "1"], (1,)),          # GEN_PREFILL_BATCHES=1 turns it off
    (["--device", "cpu"], (1,)),                                     # a CPU's batch costs its prompts' sum
])
def test_generate_build_prefill_batches_default_by_device(monkeypatch, tmp_path, argv, batches):
    from llmprofiles.generation import build as gen_build

    seen = {}
    monkeypatch.setattr(gen_build, "build_generate", lambda source, spec, *a: seen.setdefault("spec", spec))
    gen_build.main(["--model", "tiny", "--out", str(tmp_path / "generate"), *argv])
    assert seen["spec"].prefill_batches == batches


def test_a_preset_built_without_the_initial_draws_is_the_model_hf_builds():
    """load_model skips torch's and HF's initial weight draws (models.skipped_init) and draws every matrix itself:
    the result must still be the model HF builds, tied embedding, norm weights and rotary buffers included, and
    the same weights on every load."""
    from transformers import Gemma3ForCausalLM

    from llmprofiles.models import preset_config

    model = load_model("tiny", torch.float32)
    hf = Gemma3ForCausalLM(preset_config("tiny"))  # HF's own init, as load_model did before session 21
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in hf.named_parameters()]
    for (name, ours), (_, theirs) in zip(model.named_parameters(), hf.named_parameters()):
        if ours.dim() < 2:
            assert torch.equal(ours, theirs), name
        else:
            assert abs(ours.std().item() - 0.02) < 0.002 and abs(ours.mean().item()) < 0.002, name
    for (name, ours), (_, theirs) in zip(model.named_buffers(), hf.named_buffers()):
        assert torch.equal(ours, theirs), name
    again = load_model("tiny", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
