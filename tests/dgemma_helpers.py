"""Tiny random DiffusionGemma checkpoints written by transformers' own classes (the reference), for the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.13")  # DiffusionGemma is native since 5.13
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion  # noqa: E402

VOCAB, CANVAS = 64, 8
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"], num_experts=4, top_k_experts=2,
            moe_intermediate_size=16, max_position_embeddings=256, global_head_dim=16, num_global_key_value_heads=1)
VISION = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
              head_dim=8, position_embedding_size=16, patch_size=2)


def write_checkpoint(directory: Path, seed: int = 0, generation: dict | None = None) -> Path:
    """A random DiffusionGemma (norm weights, router scales and layer scalars moved off their init, so each one
    matters) saved with ``save_pretrained`` (safetensors): the released layout."""
    torch.manual_seed(seed)
    config = DiffusionGemmaConfig(text_config=TEXT, vision_config=VISION, canvas_length=CANVAS)
    model = DiffusionGemmaForBlockDiffusion(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "scale" in name:
                p.add_(torch.randn_like(p) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(0.5 + torch.rand(1).item())
    if generation:
        for key, value in generation.items():
            setattr(model.generation_config, key, value)
    model.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def reference(directory: Path, dtype: torch.dtype) -> DiffusionGemmaForBlockDiffusion:
    """transformers' model from the same directory; float64 needs the eager experts (grouped_mm has no float64)."""
    return DiffusionGemmaForBlockDiffusion.from_pretrained(
        directory, dtype=dtype, attn_implementation="sdpa", experts_implementation="eager").eval()
