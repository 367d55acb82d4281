"""A compact decoder-style transformer shared by the model families (RMSNorm, RoPE, SwiGLU, GQA, SDPA).

Attention is never causal by itself: the caller passes the attention mask it needs (bidirectional with
padding, or block-causal), and optionally a :class:`~dlm.models.kv.KVBuffer` to write fresh keys/values
into and read cached ones from. Families differ in sizes, biases, tensor names and a few switches of the
spec: per-head QK norm, partial rotary, clipped q/k/v, one fused q/k/v projection, and a sparse
mixture-of-experts feed-forward (:mod:`dlm.models.moe`) in the layers that have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.models.kv import KVBuffer

if TYPE_CHECKING:
    from dlm.models.moe import MoESpec


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
    o_bias: bool = False  # a bias on the attention output projection (OLMoE-style attention_bias)
    qk_norm: bool = False  # RMSNorm over each head's query and key before RoPE (OLMoE, LLaDA-MoE, Qwen3)
    clip_qkv: float | None = None  # q, k, v clamped to [-clip, clip] after the projections (and QK norm)
    rotary_dim: int | None = None  # RoPE on the first rotary_dim dims of each head; None: the whole head
    fused_qkv: bool = False  # one projection to q, k, v stacked (rows: q heads, then k heads, then v heads; Bailing)
    moe: MoESpec | None = None  # sparse mixture-of-experts feed-forward in the layers it names

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def rope_dim(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim


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
    """x: [b, H, q, D]; cos/sin: [b, q, R] in x's dtype, R <= D: the first R dims of each head are rotated
    (partial rotary, as transformers' ``partial_rotary_factor``), the rest pass through."""
    if cos.shape[-1] < x.shape[-1]:
        r = cos.shape[-1]
        return torch.cat((apply_rope(x[..., :r], cos, sin), x[..., r:]), dim=-1)
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
        if spec.fused_qkv:  # one product, split by heads: the released fused layout computes it so
            self.qkv = nn.Linear(spec.dim, (spec.n_heads + 2 * spec.n_kv_heads) * hd, bias=spec.qkv_bias)
        else:
            self.q = nn.Linear(spec.dim, spec.n_heads * hd, bias=spec.qkv_bias)
            self.k = nn.Linear(spec.dim, spec.n_kv_heads * hd, bias=spec.qkv_bias)
            self.v = nn.Linear(spec.dim, spec.n_kv_heads * hd, bias=spec.qkv_bias)
        self.fused = spec.fused_qkv
        self.o = nn.Linear(spec.n_heads * hd, spec.dim, bias=spec.o_bias)
        self.q_norm = RMSNorm(hd, spec.norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(hd, spec.norm_eps) if spec.qk_norm else None
        self.clip = spec.clip_qkv

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
        if self.fused:
            qkv = self.qkv(x).view(b, q_len, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
            q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        else:
            q = self.q(x).view(b, q_len, self.n_heads, self.head_dim)
            k = self.k(x).view(b, q_len, self.n_kv_heads, self.head_dim)
            v = self.v(x).view(b, q_len, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip is not None:
            q, k, v = (t.clamp(-self.clip, self.clip) for t in (q, k, v))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
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
    """down(silu(gate(x)) * up(x)): the dense feed-forward, and each expert of a sparse one."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, spec: TransformerSpec, layer: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(spec.dim, spec.norm_eps)
        self.attn = Attention(spec)
        self.ffn_norm = RMSNorm(spec.dim, spec.norm_eps)
        if spec.moe is not None:
            self.ffn = spec.moe.ffn(spec.dim, spec.ffn_dim, layer)  # sparse MoE, or dense where it says so
        else:
            self.ffn = SwiGLU(spec.dim, spec.ffn_dim)

    def forward(self, x: Tensor, cos, sin, mask, kv, layer, rows, start, key_end, columns=None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, kv, layer, rows, start, key_end, columns)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Embedding, pre-norm blocks, final norm and output head. Logits only where asked for."""

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_in, spec.dim)
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.n_layers))
        self.norm = RMSNorm(spec.dim, spec.norm_eps)
        self.head = None if spec.tied else nn.Linear(spec.dim, spec.vocab_out, bias=False)
        self._rope: tuple[Tensor, Tensor] | None = None

    def rope(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._rope is None or self._rope[0].device != device:
            self._rope = rope_tables(self.spec.rope_dim, self.spec.rope_theta, self.spec.max_length, device)
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
