"""DiffusionGemma's network on dlm's own layers: an encoder and a decoder sharing one stack of Gemma-4 blocks.

DiffusionGemma (transformers >= 5.13, ``models/diffusion_gemma/modeling_diffusion_gemma.py``; checkpoint
``google/diffusiongemma-26B-A4B-it``) reads the prompt and every finished canvas with a *causal encoder* whose
keys and values are cached, and refines the current canvas with a *bidirectional decoder* that attends to that
cache and to the whole canvas. The two share every weight (transformers' ``_tied_weights_keys``) but the
per-layer ``layer_scalar`` buffers and the decoder's self-conditioning block. What one block computes (Gemma 4's
block, as transformers writes it):

- attention: q/k/v projections, RMSNorm over each head's query and key (learned scale) and value (no scale),
  RoPE, scores **not** scaled (``scaling = 1.0``), GQA; a *sliding* layer (``layer_types``) has head size
  ``head_dim``, ``num_key_value_heads`` and its own v projection, a *full* layer has ``global_head_dim`` and
  ``num_global_key_value_heads`` and uses its (un-normed) keys as values (no ``v_proj``); RoPE per layer type
  (sliding: default RoPE, ``rope_theta`` 10k; full: "proportional" RoPE, the first
  ``partial_rotary_factor · head/2`` frequency pairs rotating at ``theta^(-2i/head)``, the rest not at all);
- sandwich norms (``input``/``post_attention``/``pre_feedforward``/``post_feedforward`` layernorms), and a feed
  forward that is a dense GeGLU (``gelu_pytorch_tanh``) **plus** a sparse MoE of GeGLU experts, each normed
  (``post_feedforward_layernorm_1``/``_2``, the experts' input by ``pre_feedforward_layernorm_2``), routed from
  the block's pre-norm residual by :class:`~dlm.models.moe.ScaledSoftmaxTopK`; the block's output is multiplied
  by ``layer_scalar``;
- embeddings scaled by ``sqrt(hidden_size)`` (cast to the model dtype first, as transformers does), the output
  head tied to them, and the logits soft-capped: ``30 · tanh(logits / 30)``, in float32.

Attention masks: the encoder is causal, a sliding layer seeing the last ``sliding_window`` positions (itself
included); the decoder sees the whole canvas and, in a sliding layer, only the last ``sliding_window - 1``
cached positions (what transformers' ``DynamicSlidingWindowLayer`` keeps), in a full layer every cached one.

Self-conditioning (the decoder's ``self_conditioning`` block): the previous step's logits, softmaxed (float32)
and multiplied by the embedding matrix and the embedding scale, go through a pre-norm GeGLU; the result is added
to the canvas' embeddings and the sum RMS-normed (no scale). Without a previous step the soft embedding is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.models.layers import SwiGLU, apply_rope
from dlm.models.moe import Routing, ScaledSoftmaxTopK, dispatch


@dataclass(frozen=True)
class GemmaSpec:
    """Sizes of a DiffusionGemma text stack (config.json's ``text_config``, in family-neutral names)."""

    vocab: int
    dim: int
    n_layers: int
    n_heads: int
    sliding: tuple[bool, ...]  # per layer: sliding-window attention (else full)
    head_dim: int  # sliding layers
    kv_heads: int
    global_head_dim: int  # full layers
    global_kv_heads: int
    ffn_dim: int  # dense GeGLU and self-conditioning block
    n_experts: int
    top_k: int
    expert_dim: int
    norm_eps: float
    window: int  # sliding_window: positions a sliding encoder layer sees, itself included
    theta_local: float
    theta_global: float
    global_rotary_factor: float
    softcap: float | None
    max_length: int

    def layer_heads(self, layer: int) -> tuple[int, int]:
        """(kv heads, head size) of ``layer``."""
        return (self.kv_heads, self.head_dim) if self.sliding[layer] else (self.global_kv_heads, self.global_head_dim)


def gemma_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """Gemma's RMSNorm: in float32 whatever the dtype (``x · (mean(x²) + eps)^-0.5``, the weight in float32 too)."""
    x32 = x.float()
    out = x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        out = out * weight.float()
    return out.to(x.dtype)


class GemmaNorm(nn.Module):
    def __init__(self, dim: int, eps: float, scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None

    def forward(self, x: Tensor) -> Tensor:
        return gemma_norm(x, self.weight, self.eps)


class GeGLU(SwiGLU):
    """down(gelu_tanh(gate(x)) * up(x)): dlm's gated feed-forward with Gemma's activation."""

    @staticmethod
    def act(x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


class FusedExperts(nn.Module):
    """The experts as the checkpoint stores them: ``gate_up`` [E, 2I, dim] (gate rows, then up rows) and ``down``
    [E, dim, I]; :func:`~dlm.models.moe.dispatch` runs each on the rows routed to it."""

    def __init__(self, n: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Parameter(torch.empty(n, 2 * hidden, dim))
        self.down = nn.Parameter(torch.empty(n, dim, hidden))

    def expert(self, e: int):
        def run(x: Tensor) -> Tensor:
            gate, up = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)
            return F.linear(F.gelu(gate, approximate="tanh") * up, self.down[e])
        return run

    def __len__(self) -> int:
        return self.gate_up.shape[0]


class GemmaAttention(nn.Module):
    def __init__(self, spec: GemmaSpec, layer: int) -> None:
        super().__init__()
        self.kv_heads, self.head_dim = spec.layer_heads(layer)
        self.n_heads = spec.n_heads
        hd = self.head_dim
        self.q = nn.Linear(spec.dim, spec.n_heads * hd, bias=False)
        self.k = nn.Linear(spec.dim, self.kv_heads * hd, bias=False)
        self.v = nn.Linear(spec.dim, self.kv_heads * hd, bias=False) if spec.sliding[layer] else None
        self.o = nn.Linear(spec.n_heads * hd, spec.dim, bias=False)
        self.q_norm = GemmaNorm(hd, spec.norm_eps)
        self.k_norm = GemmaNorm(hd, spec.norm_eps)
        self.eps = spec.norm_eps

    def kv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [b, kv_heads, q, hd] of the rows ``x`` [b, q, dim]."""
        b, q, _ = x.shape
        k = self.k(x).view(b, q, self.kv_heads, self.head_dim)
        v = k if self.v is None else self.v(x).view(b, q, self.kv_heads, self.head_dim)
        k = apply_rope(self.k_norm(k).transpose(1, 2), cos, sin)
        v = gemma_norm(v, None, self.eps).transpose(1, 2)
        return k, v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """Queries of ``x`` [b, q, dim] over ``keys``/``values`` [b, kv_heads, K, hd]; ``mask`` [b|1, 1, q|1, K]."""
        b, q, _ = x.shape
        query = self.q(x).view(b, q, self.n_heads, self.head_dim)
        query = apply_rope(self.q_norm(query).transpose(1, 2), cos, sin)
        rep = self.n_heads // self.kv_heads
        if rep > 1:
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, q, -1))


class GemmaBlock(nn.Module):
    def __init__(self, spec: GemmaSpec, layer: int) -> None:
        super().__init__()
        dim, eps = spec.dim, spec.norm_eps
        self.attn = GemmaAttention(spec, layer)
        self.input_norm, self.post_attn_norm = GemmaNorm(dim, eps), GemmaNorm(dim, eps)
        self.pre_ffn_norm, self.post_ffn_norm = GemmaNorm(dim, eps), GemmaNorm(dim, eps)
        self.post_ffn_norm_1, self.post_ffn_norm_2 = GemmaNorm(dim, eps), GemmaNorm(dim, eps)
        self.pre_ffn_norm_2 = GemmaNorm(dim, eps)
        self.mlp = GeGLU(dim, spec.ffn_dim)
        self.router = ScaledSoftmaxTopK(spec.top_k, eps).router(dim, spec.n_experts)
        self.experts = FusedExperts(spec.n_experts, dim, spec.expert_dim)
        # the encoder's and the decoder's layer scalars are separate checkpoint buffers
        self.register_buffer("encoder_scalar", torch.ones(1))
        self.register_buffer("decoder_scalar", torch.ones(1))

    def forward(self, x: Tensor, attended: Tensor, encoder: bool) -> Tensor:
        """The block after attention: ``attended`` is the attention output for the rows ``x`` [b, q, dim]."""
        x = x + self.post_attn_norm(attended)
        dense = self.post_ffn_norm_1(self.mlp(self.pre_ffn_norm(x)))
        flat = x.reshape(-1, x.shape[-1])
        routing: Routing = self.router(flat)
        experts = [self.experts.expert(e) for e in range(len(self.experts))]
        sparse = dispatch(self.pre_ffn_norm_2(flat), routing, experts).view(x.shape)
        x = x + self.post_ffn_norm(dense + self.post_ffn_norm_2(sparse))
        return x * (self.encoder_scalar if encoder else self.decoder_scalar)


class SelfConditioning(nn.Module):
    """The decoder's self-conditioning block (transformers' ``DiffusionGemmaSelfConditioning``)."""

    def __init__(self, spec: GemmaSpec) -> None:
        super().__init__()
        self.pre_norm = GemmaNorm(spec.dim, spec.norm_eps)
        self.ffn = GeGLU(spec.dim, spec.ffn_dim)
        self.eps = spec.norm_eps

    def forward(self, embeds: Tensor, soft: Tensor) -> Tensor:
        return gemma_norm(embeds + self.ffn(self.pre_norm(soft)), None, self.eps)


def gemma_rope(spec: GemmaSpec, sliding: bool, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin [b, q, head] (float32 products, cast to ``dtype``) of one layer type at ``positions`` [b, q]."""
    device = positions.device
    if sliding:
        head = spec.head_dim
        inv = 1.0 / (spec.theta_local ** (torch.arange(0, head, 2, dtype=torch.float, device=device) / head))
    else:  # transformers' "proportional" RoPE: frequencies over the whole head, the first pairs only
        head = spec.global_head_dim
        pairs = int(spec.global_rotary_factor * head // 2)
        inv = 1.0 / (spec.theta_global ** (torch.arange(0, 2 * pairs, 2, dtype=torch.int64, device=device)
                                           .float() / head))
        inv = torch.cat((inv, torch.zeros(head // 2 - pairs, device=device)))
    freqs = positions[..., None].float() * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class EncoderCache:
    """The encoder's keys and values of every layer, per canvas column: ``keys[l]`` [B, kv_heads, L, hd]."""

    def __init__(self, keys: list[Tensor], values: list[Tensor]) -> None:
        self.keys, self.values = keys, values

    @staticmethod
    def empty(spec: GemmaSpec, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> "EncoderCache":
        shapes = [spec.layer_heads(i) for i in range(spec.n_layers)]
        make = lambda: [torch.zeros(batch, h, length, d, dtype=dtype, device=device) for h, d in shapes]  # noqa: E731
        return EncoderCache(make(), make())

    def take(self, rows: Tensor) -> "EncoderCache":
        return EncoderCache([k[rows] for k in self.keys], [v[rows] for v in self.values])

    def cat(self, other: "EncoderCache") -> "EncoderCache":
        return EncoderCache([torch.cat(p) for p in zip(self.keys, other.keys)],
                            [torch.cat(p) for p in zip(self.values, other.values)])


class DiffusionGemmaNet(nn.Module):
    """Embedding, the shared blocks, final norm, tied head with soft-capping, and the self-conditioning block."""

    def __init__(self, spec: GemmaSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab, spec.dim)
        self.blocks = nn.ModuleList(GemmaBlock(spec, i) for i in range(spec.n_layers))
        self.norm = GemmaNorm(spec.dim, spec.norm_eps)
        self.self_conditioning = SelfConditioning(spec)

    @property
    def embed_scale(self) -> Tensor:
        return torch.tensor(self.spec.dim ** 0.5).to(self.embed.weight.dtype)

    def _ropes(self, positions: Tensor, dtype: torch.dtype) -> dict[bool, tuple[Tensor, Tensor]]:
        return {kind: gemma_rope(self.spec, kind, positions, dtype) for kind in set(self.spec.sliding)}

    def encode(self, ids: Tensor, positions: Tensor, cache: EncoderCache, rows: Tensor, start: int,
               key_valid: Tensor) -> None:
        """Write the encoder's K/V of canvas columns ``[start, start + q)`` (tokens ``ids`` [b, q] at RoPE
        ``positions``) into ``cache`` rows ``rows``; they attend causally to the cached columns before them.
        ``key_valid`` [b, start + q] bool: columns that may be keys (not padding)."""
        q = ids.shape[1]
        end = start + q
        x = self.embed(ids) * self.embed_scale
        ropes = self._ropes(positions, x.dtype)
        k_pos = torch.arange(end, device=ids.device)
        q_pos = torch.arange(start, end, device=ids.device)
        causal = k_pos[None, :] <= q_pos[:, None]  # [q, K]
        local = causal & (q_pos[:, None] - k_pos[None, :] < self.spec.window)
        valid = key_valid[:, None, None, :] | (k_pos == q_pos[:, None])[None, None]  # a padding query sees itself
        for i, block in enumerate(self.blocks):
            cos, sin = ropes[self.spec.sliding[i]]
            h = block.input_norm(x)
            k, v = block.attn.kv(h, cos, sin)
            cache.keys[i][rows, :, start:end] = k
            cache.values[i][rows, :, start:end] = v
            mask = (local if self.spec.sliding[i] else causal)[None, None] & valid
            attended = block.attn(h, cos, sin, cache.keys[i][rows, :, :end], cache.values[i][rows, :, :end], mask)
            x = block(x, attended, encoder=True)

    def soft_embedding(self, tempered: Tensor) -> Tensor:
        """The self-conditioning input [b, q, dim] of a step's tempered logits [b, q, vocab], in transformers'
        dtypes: ``softmax(logits.to(dtype), float32).to(dtype) @ E · embed_scale`` (the reference keeps the
        processed logits in the embeddings' dtype and takes their softmax at the next step)."""
        weight = self.embed.weight
        probs = tempered.to(weight.dtype).softmax(dim=-1, dtype=torch.float32).to(weight.dtype)
        return (probs @ weight) * self.embed_scale

    def decode(self, ids: Tensor, positions: Tensor, cache: EncoderCache, rows: Tensor, prefix: int,
               key_valid: Tensor, soft: Tensor | None) -> Tensor:
        """Logits [b, q, vocab] (float32, soft-capped) of the canvas ``ids`` [b, q] at RoPE ``positions``, which
        attends to itself and to the encoder's cached columns ``[0, prefix)`` (``key_valid`` [b, prefix] marks
        the non-padding ones); ``soft`` [b, q, dim]: the self-conditioning input (:meth:`soft_embedding` of the
        previous step's tempered logits; None or zeros at a canvas' first step)."""
        x = self.embed(ids) * self.embed_scale
        if soft is None:
            soft = torch.zeros_like(x)
        x = self.self_conditioning(x, soft)
        ropes = self._ropes(positions, x.dtype)
        b, q = ids.shape
        cols = torch.arange(prefix, device=ids.device)
        recent = cols >= prefix - (self.spec.window - 1)  # what a sliding layer keeps of the prefix
        canvas_keys = torch.ones(b, q, dtype=torch.bool, device=ids.device)
        for i, block in enumerate(self.blocks):
            cos, sin = ropes[self.spec.sliding[i]]
            h = block.input_norm(x)
            k, v = block.attn.kv(h, cos, sin)
            seen = key_valid & recent if self.spec.sliding[i] else key_valid
            keys = torch.cat((cache.keys[i][rows, :, :prefix], k), dim=2)
            values = torch.cat((cache.values[i][rows, :, :prefix], v), dim=2)
            mask = torch.cat((seen, canvas_keys), dim=1)[:, None, None, :]
            x = block(x, block.attn(h, cos, sin, keys, values, mask), encoder=False)
        logits = F.linear(self.norm(x), self.embed.weight).float()
        if self.spec.softcap is not None:
            logits = torch.tanh(logits / self.spec.softcap) * self.spec.softcap
        return logits
