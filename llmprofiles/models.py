"""Model presets, loading, and the last-token wrapper every runtime compiles.

A preset is a named architecture (Gemma3 text) built from its config with random
weights and a fixed seed, so no hub access is needed. ``load_model(path)`` builds
real weights from a local Hugging Face directory instead.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    sliding_window: int = 512
    sliding_window_pattern: int = 6  # five sliding layers to one full
    max_position_embeddings: int = 32768


PRESETS = {
    # Small enough to export, compile and serve on 2 CPU cores in seconds.
    "tiny": Preset(
        vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=64,
    ),
    # google/gemma-3-1b shapes, for the GPU.
    "gemma-3-1b": Preset(
        vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
    ),
}

SEED = 0


def preset_config(name: str):
    from transformers import Gemma3TextConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} or MODEL=<local HF dir>")
    p = asdict(PRESETS[name])
    pattern = p.pop("sliding_window_pattern")
    layer_types = [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(p["num_hidden_layers"])
    ]
    return Gemma3TextConfig(**p, layer_types=layer_types, query_pre_attn_scalar=p["head_dim"])


def load_model(source: str, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
    """A causal LM in eval mode: a preset name (random weights, seed 0) or a local HF dir."""
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM

    if source in PRESETS:
        with skipped_init():
            model = Gemma3ForCausalLM(preset_config(source))
        model.tie_weights()  # part of the init skipped: lm_head is the embedding again
        # Random init gives huge logit ranges in low precision; keep them tame
        # so fp16 comparisons against eager stay meaningful. Every matrix is drawn
        # here, on the CPU, so a preset has the same weights on every device; the
        # norms' weights are zeros (Gemma's norm scales by 1 + weight), as HF's init
        # leaves them.
        torch.manual_seed(SEED)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02)
                else:
                    p.zero_()
    else:
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype)
    model.config.use_cache = False
    return model.to(device=device, dtype=dtype).eval()


def skipped_init():
    """A context in which a model is built without drawing its initial weights (torch's and HF's), which
    :func:`load_model` overwrites anyway. HF's tying of ``lm_head`` is skipped with them. gemma-3-1b loads in
    9.3 s this way on the H200's host, against 21.3 s (bench/NOTES.md, session 21). A no-op on a transformers
    without ``initialization.no_init_weights``."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


class LastTokenLM(nn.Module):
    """``(input_ids, position_ids) -> logits[:, -1]``: computes lm_head for the last position only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :]


def default_position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """Each row 0..seq-1, the default when a request carries no position_ids."""
    batch, seq = input_ids.shape
    return torch.arange(seq, device=input_ids.device, dtype=torch.int64).expand(batch, seq)
