"""The diffusion transformer (DiT) of MDLM and DiDi-Instruct, on dlm's own attention.

A DiT block (Peebles & Xie, 2023, "Scalable Diffusion Models with Transformers", arXiv 2212.09748) conditions
every layer on the diffusion time through *adaptive layer norm*: a linear map of the time embedding gives each
block a shift, a scale and a gate for its attention and its MLP (``adaLN``). MDLM's text DiT (Sahoo et al., 2024,
arXiv 2406.07524; ``models/dit.py`` of kuleshov-group/mdlm, the same file in haoyangzheng-ai/didi-instruct) puts
this around a bidirectional transformer with rotary position embeddings:

- ``x = embed(ids)``; ``c = silu(time(sigma))``, the embedding of the total noise ``sigma`` of each row's step
  (sinusoidal features, then an MLP; :class:`TimestepEmbedding`);
- each block: ``x += gate_msa · attn(modulate(norm1(x), shift_msa, scale_msa))`` and
  ``x += gate_mlp · mlp(modulate(norm2(x), shift_mlp, scale_mlp))``, the six vectors from
  ``modulation(c)`` (:class:`AdaLNModulation`), ``modulate(x, shift, scale) = x · (1 + scale) + shift``;
  attention is dlm's :class:`~dlm.models.layers.Attention` (one fused q/k/v projection without bias, NeoX
  rotary embedding of base 10000, SDPA), the MLP ``Linear → GELU(tanh) → Linear`` with biases, the norms
  bias-free layer norms with float32 statistics (:class:`LayerNorm`);
- the output: ``head(modulate(norm(x), shift, scale))``, shift and scale from ``c``.

Dropout is off (inference). The pieces here are general (any adaLN-conditioned transformer can use them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.models.layers import Attention, TransformerSpec


@dataclass(frozen=True)
class DiTSpec:
    """Sizes of a DiT, in family-neutral names."""

    vocab: int  # rows of the embedding and logits per position (MDLM: the tokenizer's ids plus MASK)
    dim: int
    cond_dim: int  # width of the time embedding
    n_layers: int
    n_heads: int
    max_length: int
    mlp_ratio: int = 4
    freq_dim: int = 256  # sinusoidal features of the time
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def attention_spec(self) -> TransformerSpec:
        """The :class:`TransformerSpec` of the attention layers: one fused q/k/v projection, no biases."""
        return TransformerSpec(vocab_in=self.vocab, vocab_out=self.vocab, dim=self.dim, n_layers=self.n_layers,
                               n_heads=self.n_heads, n_kv_heads=self.n_heads, ffn_dim=self.mlp_ratio * self.dim,
                               norm_eps=self.norm_eps, rope_theta=self.rope_theta, max_length=self.max_length,
                               fused_qkv=True)


class LayerNorm(nn.Module):
    """Layer norm without bias, statistics in float32 whatever the model dtype (MDLM's ``LayerNorm``), then the
    weight in the model dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x · (1 + scale) + shift`` (x [b, q, d]; shift, scale [b, 1, d])."""
    return x * (1 + scale) + shift


class TimestepEmbedding(nn.Module):
    """A scalar per row (the diffusion time or noise level) as a vector: sinusoidal features (GLIDE's and DiT's
    ``timestep_embedding``: ``cos(t·f), sin(t·f)`` for ``f = 10000^(-i/half)``, computed in float32) through
    ``Linear → SiLU → Linear``."""

    def __init__(self, dim: int, freq_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def features(self, t: Tensor) -> Tensor:
        """[b, freq_dim] float32 sinusoidal features of ``t`` [b]."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(start=0, end=half, dtype=torch.float32,
                                                                     device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq_dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: Tensor) -> Tensor:
        weight = self.mlp[0].weight
        return self.mlp(self.features(t).to(weight.dtype))


class AdaLNModulation(nn.Linear):
    """``Linear(cond_dim, n · dim)``: ``n`` modulation vectors [b, 1, dim] (shifts, scales, gates) from a
    conditioning vector [b, cond_dim]."""

    def __init__(self, cond_dim: int, dim: int, n: int) -> None:
        super().__init__(cond_dim, n * dim)
        self.n = n

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        return super().forward(c)[:, None].chunk(self.n, dim=2)


class GeluMLP(nn.Module):
    """``down(gelu_tanh(up(x)))`` with biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, spec: DiTSpec) -> None:
        super().__init__()
        self.norm1 = LayerNorm(spec.dim, spec.norm_eps)
        self.attn = Attention(spec.attention_spec())
        self.norm2 = LayerNorm(spec.dim, spec.norm_eps)
        self.mlp = GeluMLP(spec.dim, spec.mlp_ratio * spec.dim)
        self.modulation = AdaLNModulation(spec.cond_dim, spec.dim, 6)

    def forward(self, x: Tensor, c: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + gate_msa * self.attn(h, cos, sin, mask, None, 0, None, 0, x.shape[1])
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiT(nn.Module):
    """Embedding, time embedding, adaLN blocks, modulated final norm and output head (see the module doc)."""

    def __init__(self, spec: DiTSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab, spec.dim)
        self.time = TimestepEmbedding(spec.cond_dim, spec.freq_dim)
        self.blocks = nn.ModuleList(DiTBlock(spec) for _ in range(spec.n_layers))
        self.norm = LayerNorm(spec.dim, spec.norm_eps)
        self.final_modulation = AdaLNModulation(spec.cond_dim, spec.dim, 2)
        self.head = nn.Linear(spec.dim, spec.vocab)
        self._rope: tuple[Tensor, Tensor] | None = None

    def rope(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos/sin tables [max_length, head_dim]: MDLM's ``Rotary`` computes them in its frequency buffer's dtype,
        float32 (the frequencies rounded to float32 as the checkpoint stores them), float64 in a float64 model."""
        dtype = torch.float64 if self.embed.weight.dtype == torch.float64 else torch.float32
        if self._rope is None or self._rope[0].device != device or self._rope[0].dtype != dtype:
            hd = self.spec.dim // self.spec.n_heads
            inv_freq = 1.0 / (self.spec.rope_theta ** (torch.arange(0, hd, 2).float() / hd))  # float32
            pos = torch.arange(self.spec.max_length, device=device).to(dtype)
            freqs = torch.outer(pos, inv_freq.to(device=device, dtype=dtype))
            emb = torch.cat((freqs, freqs), dim=-1)
            self._rope = (emb.cos(), emb.sin())
        return self._rope

    def forward(self, ids: Tensor, positions: Tensor, mask: Tensor | None, sigma: Tensor | None = None, *,
                logits_from: int = 0, logits_to: int | None = None) -> Tensor:
        """Logits [b, n, vocab] of query offsets ``[logits_from, logits_to)`` for tokens ``ids`` [b, q] at RoPE
        ``positions`` [b, q], attention ``mask`` (bool, True = attend; None: every key) and the noise level
        ``sigma`` [b] of each row (None: 0)."""
        x = self.embed(ids)
        if sigma is None:
            sigma = torch.zeros(ids.shape[0], device=ids.device)
        c = F.silu(self.time(sigma))  # [b, cond_dim]
        cos_t, sin_t = self.rope(ids.device)
        cos, sin = cos_t[positions].to(x.dtype), sin_t[positions].to(x.dtype)
        for block in self.blocks:
            x = block(x, c, cos, sin, mask)
        x = x[:, logits_from:logits_to]
        shift, scale = self.final_modulation(c)
        return self.head(modulate(self.norm(x), shift, scale))
