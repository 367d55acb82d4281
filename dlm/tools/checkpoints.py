"""Write random-weight checkpoints in the real LLaDA layout, with a character-level ``tokenizer.json``.

Used by the test suite (tiny models), by ``dlm bench`` (20–50M-parameter models) and by plugin authors.
The files are exactly what the loaders read from a real checkpoint: ``config.json`` with LLaDA's field
names, ``model.safetensors`` (or shards plus ``model.safetensors.index.json``), ``tokenizer.json`` and
``tokenizer_config.json`` with a chat template.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

SPECIAL_TOKENS = (
    "<|endoftext|>",  # EOS
    "<|eot_id|>",  # end of turn
    "<|mdm_mask|>",  # MASK
    "<|startoftext|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
)
EOS_ID, EOT_ID, MASK_ID = 0, 1, 2
CHARS = "0123456789+-*=,.:;?! ()<>[]abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
CHAT_TEMPLATE = (
    "<|startoftext|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>{% endif %}"
)


def write_char_tokenizer(
    directory: Path, chars: str = CHARS, *, chat_template: str | None = CHAT_TEMPLATE, model_max_length: int = 512,
    specials: tuple[str, ...] = SPECIAL_TOKENS,
) -> int:
    """Write a character-level ``tokenizer.json`` + ``tokenizer_config.json``; return the vocabulary size.

    Ids: the special tokens first (EOS 0, EOT 1, MASK 2, ...; ``specials`` names them, in that order), then one
    id per character. ``model_max_length`` is the model's context (its config.json ``max_sequence_length``):
    the two agree.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": specials[EOS_ID],
        "bos_token": specials[3],
        "pad_token": specials[EOS_ID],
        "mask_token": specials[MASK_ID],
        "model_max_length": model_max_length,
    }
    if chat_template:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(vocab)


def llada_config(
    *, vocab_size: int, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int | None = None,
    mlp_hidden_size: int | None = None, max_sequence_length: int = 512, weight_tying: bool = False,
    mask_token_id: int = MASK_ID, eos_token_id: int = EOS_ID, rope_theta: float = 10000.0,
) -> dict:
    """A config.json in LLaDA's own schema (same keys as GSAI-ML/LLaDA-8B-Instruct)."""
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads or n_heads,
        "n_layers": n_layers,
        "mlp_hidden_size": mlp_hidden_size or 2 * d_model,
        "mlp_ratio": 4,
        "vocab_size": vocab_size,
        "embedding_size": vocab_size,
        "mask_token_id": mask_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
        "max_sequence_length": max_sequence_length,
        "activation_type": "silu",
        "block_type": "llama",
        "layer_norm_type": "rms",
        "rms_norm_eps": 1e-5,
        "rope": True,
        "rope_theta": rope_theta,
        "rope_full_precision": True,
        "alibi": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "weight_tying": weight_tying,
        "scale_logits": False,
        "input_emb_norm": False,
        "attention_layer_norm": False,
        "use_cache": False,
    }


def scaled_randn(generator: torch.Generator, dtype: torch.dtype):
    """``w(*shape)``: standard normal weights divided by sqrt(fan-in), so activations stay O(1)."""

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])).to(dtype)

    return w


def random_llada_tensors(cfg: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with LLaDA's tensor names and shapes for ``cfg`` (scaled so activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    d, ffn, vocab = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]
    hd = d // cfg["n_heads"]
    kvd = cfg["n_kv_heads"] * hd

    w = scaled_randn(g, dtype)

    def norm() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(d, generator=g)).to(dtype)

    p = "model.transformer."
    t = {p + "wte.weight": torch.randn(vocab, d, generator=g).to(dtype), p + "ln_f.weight": norm()}
    if not cfg["weight_tying"]:
        t[p + "ff_out.weight"] = w(vocab, d) * 4
    for i in range(cfg["n_layers"]):
        b = f"{p}blocks.{i}."
        t.update({
            b + "q_proj.weight": w(d, d) * 2, b + "k_proj.weight": w(kvd, d) * 2, b + "v_proj.weight": w(kvd, d),
            b + "attn_out.weight": w(d, d), b + "ff_proj.weight": w(ffn, d), b + "up_proj.weight": w(ffn, d),
            b + "ff_out.weight": w(d, ffn), b + "attn_norm.weight": norm(), b + "ff_norm.weight": norm(),
        })
    return t


def save_tensors(directory: Path, tensors: dict[str, torch.Tensor], *, shards: int = 1) -> None:
    """``model.safetensors``, or ``shards`` files plus ``model.safetensors.index.json``."""
    directory = Path(directory)
    if shards <= 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )


def make_llada_checkpoint(
    directory: Path,
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    mlp_hidden_size: int | None = None,
    max_sequence_length: int = 512,
    weight_tying: bool = False,
    seed: int = 0,
    shards: int = 1,
    tokenizer: bool = True,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random LLaDA-layout checkpoint to ``directory`` and return it.

    With ``tokenizer=True`` the vocabulary is the character tokenizer's (MASK id 2, EOS 0, EOT 1);
    ``vocab_size`` may ask for a larger vocabulary (the extra ids have no text).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_char_tokenizer(directory, model_max_length=max_sequence_length) if tokenizer else 0
    vocab = max(vocab, vocab_size or 0) or 64
    cfg = llada_config(
        vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        mlp_hidden_size=mlp_hidden_size, max_sequence_length=max_sequence_length, weight_tying=weight_tying,
    )
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    save_tensors(directory, random_llada_tensors(cfg, seed=seed, dtype=dtype), shards=shards)
    return directory
