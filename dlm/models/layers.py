"""A compact decoder-style transformer shared by the model families (RMSNorm, RoPE, SwiGLU, GQA, SDPA).

Attention is never causal by itself: the caller passes the attention mask it needs (bidirectional with
padding, or block-causal), and optionally a :class:`~dlm.models.kv.KVBuffer` to write fresh keys/values
into and read cached ones from. Families differ in sizes, biases, tensor names and a few switches of the
spec: a head size of its own (``head_size``, not ``dim / n_heads``; Qwen3), per-head RMSNorm of queries and
keys before RoPE (``qk_norm``; OLMoE, LLaDA-MoE, Qwen3: Yang et al., 2025, arXiv 2505.09388, §2), partial
rotary, clipped q/k/v, one fused q/k/v projection (Bailing), and a sparse mixture-of-experts feed-forward
(:mod:`dlm.models.moe`) in the layers that have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.models.first_layer import MIN_EXACT_ROWS, TokenProjections
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
    # RoPE in float32 when the model runs in bfloat16/float16 (LLaDA's `rope_full_precision`, on by default in its
    # config; HF Llama/Qwen2 rotate in the model dtype). float32 and float64 models rotate in their own dtype.
    rope_full_precision: bool = False
    o_bias: bool = False  # a bias on the attention output projection (OLMoE-style attention_bias)
    qk_norm: bool = False  # RMSNorm over each head's query and key before RoPE (OLMoE, LLaDA-MoE, Qwen3)
    clip_qkv: float | None = None  # q, k, v clamped to [-clip, clip] after the projections (and QK norm)
    rotary_dim: int | None = None  # RoPE on the first rotary_dim dims of each head; None: the whole head
    fused_qkv: bool = False  # one projection to q, k, v stacked (rows: q heads, then k heads, then v heads; Bailing)
    moe: MoESpec | None = None  # sparse mixture-of-experts feed-forward in the layers it names
    head_size: int | None = None  # per-head width when it is not dim // n_heads (Qwen3: 128 for d 2560, 32 heads)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

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


Rows = slice | Tensor  # query rows to keep: a slice of offsets, or per-row offsets [b, n]


def pick_rows(x: Tensor, keep: Rows) -> Tensor:
    """Rows ``keep`` of ``x`` [b or 1, q, ...] along dim 1 (a slice, or per-row offsets [b, n])."""
    if isinstance(keep, slice):
        return x[:, keep]
    x = x.expand(keep.shape[0], *x.shape[1:])
    index = keep.view(*keep.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


def pick_mask_rows(mask: Tensor | None, keep: Rows | None) -> Tensor | None:
    """The query rows ``keep`` of an attention mask [b|1, 1, q|1, K] (a mask shared by all queries stays)."""
    if mask is None or keep is None or mask.shape[-2] == 1:
        return mask
    if isinstance(keep, slice):
        return mask[:, :, keep]
    b, _, q, k = mask.shape
    mask = mask.expand(keep.shape[0], 1, q, k)
    return mask.gather(2, keep[:, None, :, None].expand(-1, 1, -1, k))


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
        keep: Rows | None = None,  # only these query rows need the output (keys/values: every row)
        raw: Tensor | None = None,  # [b, q, width]: the products of x already made (:meth:`raw`); x is then unused
    ) -> Tensor:
        q, k, v = self.projections(x, cos, sin, raw)
        if keep is not None:  # the last layer: only these rows go on (every row wrote its keys and values)
            x = None if x is None else pick_rows(x, keep)
            cos, sin = pick_rows(cos, keep), pick_rows(sin, keep)
            mask = pick_mask_rows(mask, keep)
            q = None if q is None else pick_rows(q, keep)
        q = self.queries(x, cos, sin, q)
        if kv is not None:
            if columns is None:
                kv.write(layer, rows, start, k, v)
            else:
                kv.write_columns(layer, rows, columns, k, v)
            k, v = kv.read(layer, rows, key_end)
        return self.attend(q, k, v, mask)

    def raw(self, x: Tensor) -> Tensor:
        """The products of ``x`` [b, q, dim] before any norm, clipping or RoPE, side by side: queries, keys, values
        [b, q, (n_heads + 2 · n_kv_heads) · head_dim] (one product for a fused layout, three otherwise, each row
        as :meth:`projections` makes it)."""
        if self.fused:
            return self.qkv(x)
        return torch.cat((self.q(x), self.k(x), self.v(x)), dim=-1)

    def projections(self, x: Tensor | None, cos: Tensor, sin: Tensor,
                    raw: Tensor | None = None) -> tuple[Tensor | None, Tensor, Tensor]:
        """The keys (normed, clipped, rotated) and values of ``x`` [b, q, dim], [b, n_kv_heads, q, head_dim] each, and
        for a fused layout, or given ``raw`` (:meth:`raw`'s products of ``x``, made earlier), the unrotated queries
        [b, q, n_heads, head_dim] of the same product (else None)."""
        b, q_len = (x if raw is None else raw).shape[:2]
        q = None
        if raw is None and self.fused:
            raw = self.qkv(x)
        if raw is not None:  # one product gives q, k and v (the query rows are cut by the caller like the others)
            qkv = raw.view(b, q_len, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
            q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        else:
            k = self.k(x).view(b, q_len, self.n_kv_heads, self.head_dim)
            v = self.v(x).view(b, q_len, self.n_kv_heads, self.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.clip is not None:
            k, v = k.clamp(-self.clip, self.clip), v.clamp(-self.clip, self.clip)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        k = apply_rope(k.to(cos.dtype), cos, sin).to(v.dtype)  # cos/sin may be float32 (rope_full_precision)
        return q, k, v

    def values(self, x: Tensor) -> Tensor:
        """The values of ``x`` [b, m, dim] alone: [b, n_kv_heads, m, head_dim] (as :meth:`projections` gives them)."""
        b, m, _ = x.shape
        if self.fused:
            v = self.qkv(x).view(b, m, self.n_heads + 2 * self.n_kv_heads, self.head_dim)[:, :, -self.n_kv_heads:]
        else:
            v = self.v(x).view(b, m, self.n_kv_heads, self.head_dim)
        if self.clip is not None:
            v = v.clamp(-self.clip, self.clip)
        return v.transpose(1, 2)

    def queries(self, x: Tensor | None, cos: Tensor, sin: Tensor, q: Tensor | None = None) -> Tensor:
        """The rotated queries of ``x`` [b, q, dim]: [b, n_heads, q, head_dim] (``q``: a fused product's, unrotated;
        ``x`` is then unused)."""
        if q is None:
            b, q_len = x.shape[0], x.shape[1]
            q = self.q(x).view(b, q_len, self.n_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.clip is not None:
            q = q.clamp(-self.clip, self.clip)
        return apply_rope(q.transpose(1, 2).to(cos.dtype), cos, sin).to(q.dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """The attention output [b, q, dim] of queries ``q`` over keys/values ``k``/``v`` (KV heads repeated)."""
        b, _, q_len, _ = q.shape
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.training:
            out = explicit_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.o(out.transpose(1, 2).reshape(b, q_len, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the dense feed-forward, and each expert of a sparse one. A gated feed-forward
    with another activation subclasses it and sets :meth:`act` (DiffusionGemma's GeGLU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    @staticmethod
    def act(x: Tensor) -> Tensor:
        return F.silu(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


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

    def forward(self, x: Tensor, cos, sin, mask, kv, layer, rows, start, key_end, columns=None, keep=None,
                raw=None) -> Tensor:
        """``keep``: only those rows of the output are needed (the last layer, where only the rows whose logits are
        read go on): every row still writes its keys and values, the rest of the block runs on ``keep``. ``raw``:
        the attention's products of the normed ``x`` made already (:class:`~dlm.models.first_layer.TokenProjections`
        in layer 0)."""
        hidden = self.attn_norm(x) if raw is None else None
        attended = self.attn(hidden, cos, sin, mask, kv, layer, rows, start, key_end, columns, keep, raw)
        x = (x if keep is None else pick_rows(x, keep)) + attended
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Embedding, pre-norm blocks, final norm and output head. Logits only where asked for.

    Less work for the same logits: in the last layer only the query rows whose logits are read need the
    attention output, the MLP and the head; the other rows contribute their keys and values (which a cache
    may keep) and stop there (``prune_outputs``, on by default; tests/test_pruned_outputs.py proves the logits
    and the tokens equal the unpruned forward's). A forward that reads every row's logits is unchanged.
    """

    prune_outputs: bool = True
    memo_first_layer: bool = True  # layer 0's q/k/v products once per token id (dlm.models.first_layer)

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_in, spec.dim)
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.n_layers))
        self.norm = RMSNorm(spec.dim, spec.norm_eps)
        self.head = None if spec.tied else nn.Linear(spec.dim, spec.vocab_out, bias=False)
        self._rope: tuple[Tensor, Tensor] | None = None
        self.first_layer = TokenProjections()

    def output_rows(self, q: int, logits_from: int, logits_to: int | None, logits_index: Tensor | None) -> Rows | None:
        """The rows the last layer has to finish, or None when that is every row (or pruning is off).

        Fewer than :data:`MIN_EXACT_ROWS` rows are not pruned: a float32 matrix product of 1–3 rows takes
        another kernel (gemv-like) that sums in another order, while at the benchmark's shapes (d_model 512,
        docs/benchmarks.md) the rows of a product of 4 or more rows equal, bit for bit, the same rows of a larger
        product (MKL's sgemm and the CPU SDPA kernel, measured there), so the pruned logits are the unpruned
        ones exactly. Tiny widths take other kernels again; the property tests compare in float64.
        """
        if not self.prune_outputs or self.training:
            return None
        if logits_index is not None:
            return logits_index if logits_index.shape[1] >= min(MIN_EXACT_ROWS, q) else None
        lo, hi, _ = slice(logits_from, logits_to).indices(q)
        if (lo, hi) == (0, q) or hi - lo < MIN_EXACT_ROWS:
            return None
        return slice(lo, hi)

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
        embeds: Tensor | None = None,
    ) -> Tensor:
        """Run the query tokens ``ids`` (canvas columns ``[start, start+q)``, or ``columns`` [b, q] per row);
        return logits of query offsets ``[logits_from, logits_to)``, or of the offsets ``logits_index``
        [b, n], as [b, n, vocab_out]. ``embeds`` [b, q, dim]: the input embeddings to use instead of
        ``embed(ids)`` (soft inputs, :class:`~dlm.messages.SoftInputs`)."""
        x, cos, sin = self.inputs(ids, positions)
        if embeds is not None:
            x = embeds
        key_end = start + ids.shape[1] if key_end is None else key_end
        keep = self.output_rows(ids.shape[1], logits_from, logits_to, logits_index)
        raw = None
        if self.memo_first_layer and TokenProjections.applies(self, ids, embeds):
            raw = self.first_layer.raw(self.embed, self.blocks[0], ids)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, kv, i, rows, start, key_end, columns, keep if i == last else None,
                      raw if i == 0 else None)
        if keep is None or last < 0:
            x = pick_rows(x, logits_index if logits_index is not None else slice(logits_from, logits_to))
        return self.logits(x)

    def inputs(self, ids: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The embedded tokens [b, q, dim] and their RoPE cos/sin [b, q, rope_dim]."""
        cos_t, sin_t = self.rope(ids.device)
        dtype = self.embed.weight.dtype
        if self.spec.rope_full_precision and dtype in (torch.bfloat16, torch.float16):
            dtype = torch.float32
        return self.embed(ids), cos_t[positions].to(dtype), sin_t[positions].to(dtype)

    def logits(self, x: Tensor) -> Tensor:
        """The head's logits [b, n, vocab_out] of the last layer's outputs ``x`` [b, n, dim]."""
        weight = self.embed.weight if self.head is None else self.head.weight
        return F.linear(self.norm(x), weight)
