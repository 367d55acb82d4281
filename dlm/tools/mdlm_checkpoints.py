"""Write random-weight checkpoints in MDLM's and DiDi-Instruct's released layouts, with a tiny GPT-2-style
byte-level BPE tokenizer (made with the ``tokenizers`` library; nothing is downloaded).

Two layouts of one network (the DiT of ``models/dit.py``, :mod:`dlm.models.dit`):

- ``layout="mdlm"``: ``kuleshov-group/mdlm-owt``: a transformers ``config.json`` (``model_type: mdlm``,
  ``hidden_dim``, ``cond_dim``, ``n_blocks``, ``n_heads``, ``model_length``, ``vocab_size``,
  ``time_conditioning``) and ``model.safetensors`` with the DiT's tensors under ``backbone.``;
- ``layout="didi"``: ``haoyangzheng/didi-instruct-small`` as ``DIT.from_pretrained`` reads it
  (huggingface_hub's ``PyTorchModelHubMixin``): ``config.json`` holding ``DIT``'s arguments, ``{"config": the
  training config (``model.hidden_size``, ``cond_dim``, ``length``, ``n_blocks``, ``n_heads``;
  ``algo.time_conditioning``, ``causal_attention``, ...), "vocab_size": ...}``, and the tensors without prefix.

The vocabulary is GPT-2's structure at a tiny size: the 256 byte symbols (GPT-2's order), a few merges, then
``<|endoftext|>`` (GPT-2's id 50256 is its last token); the model's vocabulary adds MASK after it (MDLM's
``mask_index = tokenizer.vocab_size``). Tokenizer files: ``tokenizer.json`` (``tokenizer="json"``), or GPT-2's
older ``vocab.json`` + ``merges.txt`` (``tokenizer="vocab"``), or none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dlm.tools.checkpoints import save_tensors

END = "<|endoftext|>"
# a few byte-level merges (Ġ is GPT-2's symbol for a space), enough to exercise BPE merging
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
          ("r", "e"), ("a", "t"), ("e", "n"), ("Ġ", "w"), ("o", "r"), ("Ġ", "o"), ("i", "s"), ("Ġ", "c"))


def byte_symbols() -> list[str]:
    """GPT-2's 256 byte symbols in its vocabulary order (``bytes_to_unicode``: printable bytes as themselves,
    the others shifted above 255)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def gpt2_vocab() -> dict[str, int]:
    """Token -> id: the byte symbols, the merged tokens, ``<|endoftext|>`` last."""
    vocab = {s: i for i, s in enumerate(byte_symbols())}
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    vocab[END] = len(vocab)
    return vocab


def write_gpt2_tokenizer(directory: Path, *, files: str = "json", model_max_length: int = 1024) -> int:
    """Write the tiny tokenizer (``files``: ``"json"`` for ``tokenizer.json``, ``"vocab"`` for ``vocab.json`` +
    ``merges.txt``); return its vocabulary size (``<|endoftext|>`` included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = gpt2_vocab()
    if files == "vocab":
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
        return len(vocab)
    if files != "json":
        raise ValueError(f"files={files!r}: write 'json' (tokenizer.json) or 'vocab' (vocab.json + merges.txt)")
    tok = Tokenizer(models.BPE(vocab={k: v for k, v in vocab.items() if k != END}, merges=list(MERGES)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([END])
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": END, "bos_token": END, "unk_token": END,
              "model_max_length": model_max_length}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(vocab)


def mdlm_config(*, vocab_size: int, hidden_dim: int, cond_dim: int, n_blocks: int, n_heads: int,
                model_length: int, time_conditioning: bool = False) -> dict:
    """``config.json`` of ``kuleshov-group/mdlm-owt`` (its keys; the released values are 768, 128, 12, 12, 1024,
    50258, false)."""
    return {
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "model_type": "mdlm",
        "vocab_size": vocab_size,
        "model_length": model_length,
        "hidden_dim": hidden_dim,
        "cond_dim": cond_dim,
        "n_blocks": n_blocks,
        "n_heads": n_heads,
        "dropout": 0.1,
        "time_conditioning": time_conditioning,
        "return_dict": False,
        "torch_dtype": "float32",
    }


def didi_config(*, vocab_size: int, hidden_dim: int, cond_dim: int, n_blocks: int, n_heads: int,
                model_length: int, time_conditioning: bool = False) -> dict:
    """``config.json`` of a ``DIT`` saved by ``PyTorchModelHubMixin`` (DiDi-Instruct): ``DIT(config,
    vocab_size)``'s arguments, the config being the training config (``configs/model/small.yaml``,
    ``configs/algo/didi_instruct.yaml``)."""
    return {
        "config": {
            "model": {"name": "small", "type": "ddit", "hidden_size": hidden_dim, "cond_dim": cond_dim,
                      "length": model_length, "n_blocks": n_blocks, "n_heads": n_heads, "scale_by_sigma": True,
                      "dropout": 0.1, "tie_word_embeddings": False, "vocab_lookup": True},
            "algo": {"name": "didi_instruct", "backbone": "dit", "parameterization": "subs",
                     "time_conditioning": time_conditioning, "subs_masking": False, "causal_attention": False,
                     "ignore_bos": False, "T": 0},
            "noise": {"type": "log-linear", "eps": 0},
        },
        "vocab_size": vocab_size,
    }


def random_dit_tensors(*, vocab_size: int, hidden_dim: int, cond_dim: int, n_blocks: int, n_heads: int,
                       seed: int = 0, dtype: torch.dtype = torch.float32, prefix: str = "",
                       time_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random weights with the DiT's tensor names (``prefix``: ``backbone.`` for MDLM's layout), scaled so the
    activations stay O(1); the modulations are random (not zero as at MDLM's initialisation), so the time
    embedding changes the logits. ``time_scale`` multiplies the time MLP's first weights (a larger value makes
    the logits depend more on the noise level)."""
    g = torch.Generator().manual_seed(seed)
    d, c, v = hidden_dim, cond_dim, vocab_size

    def w(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale / math.sqrt(shape[-1])).to(dtype)

    def norm() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(d, generator=g)).to(dtype)

    head_dim = d // n_heads
    t = {
        "vocab_embed.embedding": torch.randn(v, d, generator=g).to(dtype),
        "sigma_map.mlp.0.weight": w(c, 256, scale=time_scale * 4), "sigma_map.mlp.0.bias": w(c, 1)[:, 0],
        "sigma_map.mlp.2.weight": w(c, c), "sigma_map.mlp.2.bias": w(c, 1)[:, 0],
        "rotary_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)),
        "output_layer.norm_final.weight": norm(),
        "output_layer.linear.weight": w(v, d, scale=3.0), "output_layer.linear.bias": w(v, 1)[:, 0],
        "output_layer.adaLN_modulation.weight": w(2 * d, c, scale=0.3),
        "output_layer.adaLN_modulation.bias": w(2 * d, 1, scale=0.3)[:, 0],
    }
    for i in range(n_blocks):
        b = f"blocks.{i}."
        t.update({
            b + "norm1.weight": norm(), b + "attn_qkv.weight": w(3 * d, d, scale=1.5), b + "attn_out.weight": w(d, d),
            b + "norm2.weight": norm(), b + "mlp.0.weight": w(4 * d, d), b + "mlp.0.bias": w(4 * d, 1)[:, 0],
            b + "mlp.2.weight": w(d, 4 * d), b + "mlp.2.bias": w(d, 1)[:, 0],
            b + "adaLN_modulation.weight": w(6 * d, c, scale=0.3),
            b + "adaLN_modulation.bias": w(6 * d, 1, scale=0.3)[:, 0],
        })
    return {prefix + k: x.contiguous() for k, x in t.items()}


def make_mdlm_checkpoint(
    directory: Path,
    *,
    layout: str = "mdlm",
    hidden_dim: int = 32,
    cond_dim: int = 16,
    n_blocks: int = 2,
    n_heads: int = 4,
    model_length: int = 64,
    time_conditioning: bool = False,
    tokenizer: str | None = "json",
    extra_vocab: int = 0,
    seed: int = 0,
    time_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
) -> Path:
    """Write a random MDLM-family checkpoint (``layout``: ``"mdlm"`` or ``"didi"``) to ``directory``; return it.

    The model's vocabulary is the tokenizer's, ``extra_vocab`` ids without text, then MASK (its last id)."""
    if layout not in ("mdlm", "didi"):
        raise ValueError(f"layout={layout!r}: write 'mdlm' (kuleshov-group/mdlm-owt) or 'didi' (DiDi-Instruct)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        words = write_gpt2_tokenizer(directory, files=tokenizer, model_max_length=model_length)
    else:
        words = len(gpt2_vocab())
    sizes = dict(vocab_size=words + extra_vocab + 1, hidden_dim=hidden_dim, cond_dim=cond_dim, n_blocks=n_blocks,
                 n_heads=n_heads)
    write = mdlm_config if layout == "mdlm" else didi_config
    cfg = write(model_length=model_length, time_conditioning=time_conditioning, **sizes)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = random_dit_tensors(seed=seed, dtype=dtype, prefix="backbone." if layout == "mdlm" else "",
                                 time_scale=time_scale, **sizes)
    save_tensors(directory, tensors, shards=shards)
    return directory
