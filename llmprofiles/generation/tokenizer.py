"""The tokenizer the generate model serves with, and how a build makes one.

A local Hugging Face model folder brings its own ``tokenizer.json``; the build
copies it. The presets have random weights and no tokenizer, so the build trains
a byte-level BPE with the ``tokenizers`` library on the Python standard library's
sources (deterministic for one Python version), with the model's special ids
(pad 0, eos 1, bos 2 for Gemma3). Ids past what the corpus can merge are filled
with ``<unused_N>`` entries: no text encodes to them, but every id the model can
emit decodes. The folder loads with ``transformers.AutoTokenizer`` too, so
genai-perf's ``--tokenizer`` can point at it.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

TOKENIZER = "tokenizer.json"
FILES = (TOKENIZER, "tokenizer_config.json", "special_tokens_map.json")
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as Gemma3's pad/eos/bos ids
CORPUS_BYTES = 6 << 20


def corpus_files(limit_bytes: int = CORPUS_BYTES) -> list[str]:
    """Standard-library sources, sorted, up to ``limit_bytes``."""
    files, total = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        files.append(str(f))
        total += f.stat().st_size
        if total >= limit_bytes:
            break
    return files


def train_bpe(vocab_size: int, out_dir: Path, model_max_length: int) -> list[str]:
    """Train a byte-level BPE of exactly ``vocab_size`` ids into ``out_dir``; the files written."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(corpus_files(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if len(vocab) > vocab_size:
        raise ValueError(f"trained vocabulary has {len(vocab)} ids, more than the model's {vocab_size}")
    for i in range(len(vocab), vocab_size):  # decodable, never produced by encoding
        vocab[f"<unused_{i}>"] = i
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TOKENIZER).write_text(json.dumps(spec, ensure_ascii=False))
    special = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length, **special}, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return list(FILES)


def copy_tokenizer(source: Path, out_dir: Path) -> list[str]:
    """Copy a local model folder's tokenizer files; a ``tokenizer.json`` is required."""
    if not (source / TOKENIZER).is_file():
        raise SystemExit(f"{source} has no {TOKENIZER}; the generate model needs a fast (tokenizers) tokenizer")
    copied = []
    for name in FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)
            copied.append(name)
    return copied


class Tokenizer:
    """What serving needs of a tokenizer: encode a prompt, decode ids. Uses ``tokenizers`` only."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer as Fast

        self.fast = Fast.from_file(str(Path(folder) / TOKENIZER))
        self.vocab_size = self.fast.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.fast.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.fast.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.fast.decode_batch(batch, skip_special_tokens=skip_special_tokens)
