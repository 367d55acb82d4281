"""A compact decoder-style transformer shared by the model families (RMSNorm, RoPE, SwiGLU, GQA, SDPA).

Attention is never causal by itself: the caller passes the attention mask it needs (bidirectional with
padding, or block-causal), and optionally a :class:`~dlm.models.kv.KVBuffer` to write fresh keys/values
into and read cached ones from. Families differ only in sizes, biases, tensor names and two Qwen3 options:
a head size of its own (``head_size``, not ``dim / n_heads``) and per-head RMSNorm of queries and keys
before RoPE (``qk_norm``; Qwen3 Technical Report, Yang et al., 2025, arXiv 2505.09388, §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.models.kv import KVBuffer


@dataclass(frozen=True)
class TransformerSpec:
    """Sizes of a transformer, in family-neutral names."""

    vocab_in: int  # rows of the input embedding
    vocab_out: int  # logits per position
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    norm_eps: float
    rope_theta: float
    max_length: int
    qkv_bias: bool = False
    tied: bool = False
    head_size: int | None = None  # per-head width when it is not dim // n_heads (Qwen3: 128 for d 2560, 32 heads)
    qk_norm: bool = False  # RMSNorm over each head's query and key (weights [head_dim]) before RoPE (Qwen3)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalised in float32 whatever the model dtype, as LLaDA's RMSLayerNorm and HF's LlamaRMSNorm do
        # (float64 runs included), so logits match those implementations bit for bit
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(head_dim: int, theta: float, length: int, device=None) -> tuple[Tensor, Tensor]:
    """cos/sin tables [length, head_dim] in float32, NeoX ``rotate_half`` layout (as LLaDA and HF Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    pos = torch.arange(length, dtype=torch.int64, device=device).float()
    freqs = torch.outer(pos, inv_freq)  # [L, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [b, H, q, D]; cos/sin: [b, q, D] in x's dtype."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d), masked) v written out, used in training mode.

    Same function as SDPA, but for the short sequences of CPU training (~22 tokens) the fused CPU kernel's
    backward is ~3x slower than these three ops, and ``torch.compile`` fuses them further (docs/demo.md).
    Inference keeps SDPA, whose logits the fidelity tests pin down.
    """
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


class Attention(nn.Module):
    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        hd = spec.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = spec.n_heads, spec.n_kv_heads, hd
        self.q = nn.Linear(spec.dim, spec.n_heads * hd, bias=spec.qkv_bias)
        self.k = nn.Linear(spec.dim, spec.n_kv_heads * hd, bias=spec.qkv_bias)
        self.v = nn.Linear(spec.dim, spec.n_kv_heads * hd, bias=spec.qkv_bias)
        self.o = nn.Linear(spec.n_heads * hd, spec.dim, bias=False)
        # Qwen3's per-head QK norm (absent, not identity, otherwise: other families' parameter names stay theirs)
        self.q_norm = RMSNorm(hd, spec.norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(hd, spec.norm_eps) if spec.qk_norm else None

    def forward(
        self,
        x: Tensor,  # [b, q, dim]
        cos: Tensor,
        sin: Tensor,  # [b, q, head_dim]
        mask: Tensor | None,  # bool, broadcastable to [b, H, q, keys]; True = attend
        kv: KVBuffer | None,
        layer: int,
        rows: Tensor | None,
        start: int,
        key_end: int,
        columns: Tensor | None = None,  # [b, q]: per-row canvas columns of the queries (None: a range)
    ) -> Tensor:
        b, q_len, _ = x.shape
        q = self.q(x).view(b, q_len, self.n_heads, self.head_dim)  # [b, q, H, D]
        k = self.k(x).view(b, q_len, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b, H, q, D]
        v = self.v(x).view(b, q_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            if columns is None:
                kv.write(layer, rows, start, k, v)
            else:
                kv.write_columns(layer, rows, columns, k, v)
            k, v = kv.read(layer, rows, key_end)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.training:
            out = explicit_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.o(out.transpose(1, 2).reshape(b, q_len, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        self.gate = nn.Linear(spec.dim, spec.ffn_dim, bias=False)
        self.up = nn.Linear(spec.dim, spec.ffn_dim, bias=False)
        self.down = nn.Linear(spec.ffn_dim, spec.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(spec.dim, spec.norm_eps)
        self.attn = Attention(spec)
        self.ffn_norm = RMSNorm(spec.dim, spec.norm_eps)
        self.ffn = SwiGLU(spec)

    def forward(self, x: Tensor, cos, sin, mask, kv, layer, rows, start, key_end, columns=None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, kv, layer, rows, start, key_end, columns)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Embedding, pre-norm blocks, final norm and output head. Logits only where asked for."""

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_in, spec.dim)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.n_layers))
        self.norm = RMSNorm(spec.dim, spec.norm_eps)
        self.head = None if spec.tied else nn.Linear(spec.dim, spec.vocab_out, bias=False)
        self._rope: tuple[Tensor, Tensor] | None = None

    def rope(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._rope is None or self._rope[0].device != device:
            self._rope = rope_tables(self.spec.head_dim, self.spec.rope_theta, self.spec.max_length, device)
        return self._rope

    def forward(
        self,
        ids: Tensor,  # [b, q] long
        positions: Tensor,  # [b, q] long: RoPE positions
        mask: Tensor | None,  # bool, broadcastable to [b, H, q, keys]
        *,
        kv: KVBuffer | None = None,
        rows: Tensor | None = None,
        start: int = 0,
        key_end: int | None = None,
        logits_from: int = 0,
        logits_to: int | None = None,
        columns: Tensor | None = None,
        logits_index: Tensor | None = None,
    ) -> Tensor:
        """Run the query tokens ``ids`` (canvas columns ``[start, start+q)``, or ``columns`` [b, q] per row);
        return logits of query offsets ``[logits_from, logits_to)``, or of the offsets ``logits_index``
        [b, n], as [b, n, vocab_out]."""
        cos_t, sin_t = self.rope(ids.device)
        dtype = self.embed.weight.dtype
        cos, sin = cos_t[positions].to(dtype), sin_t[positions].to(dtype)
        key_end = start + ids.shape[1] if key_end is None else key_end
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, kv, i, rows, start, key_end, columns)
        if logits_index is None:
            x = x[:, logits_from:logits_to]
        else:
            x = x.gather(1, logits_index[..., None].expand(-1, -1, x.shape[-1]))
        x = self.norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        return F.linear(x, weight)
