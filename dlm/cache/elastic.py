"""``elastic``: Elastic-Cache's attention-aware, depth-aware KV refresh (Nguyen-Tri, Ranjan, Shen 2025, "Attention Is
All You Need for KV Cache in Diffusion LLMs", arXiv 2510.14973, §3 and its Algorithm 1; no code is published, so
this follows the paper's text and is tested against a plain restatement, tests/test_elastic_cache.py).

Each forward runs the whole canvas under per-layer plans (:class:`~dlm.messages.LayerPlans`). A row's *window* is
its window from the iteration manager (``block_start``/``block_end``, less the logit shift), not a second notion
kept here: which positions are denoised now is that manager's question (``blockwise``: the block, Fast-dLLM's
geometry; the paper slides a window of β MASK positions, for which dlm has no manager yet). Columns outside the
window, distant MASK tokens included, reuse their cached K/V and attention/MLP outputs.

A forward with no comparable history (the row's first, or its window moved) runs every layer on every column (a
refresh). Otherwise layer ``l`` runs the window only until a drift test fails; every later layer runs every
column. The test of layer ``l``: ``S`` the window queries' attention probabilities (heads summed), ``T`` the
column the window attended most in layer ``l`` at the previous forward (``argmax_k Σ_q S[q, k]``, first on ties)
and ``a`` that forward's ``S[:, T]``; it fails when ``σ = cos(S[:, T], a) ≤ γ``. Every layer then keeps this
forward's ``T`` and ``a``.

Open choices, taken here (docs/cache-and-exit-algorithms.md): the window is the manager's; a moved window
refreshes; ``T`` ranges over every key column; ``σ = γ`` counts as drift (the paper: ``σ < γ``); ``γ = 0.9``
(unverified). Layer 0 always runs the window only, so no ``γ`` is ``none`` beyond one layer (on one, every ``γ``
is). Each row decides alone: batch rows and rows joining late give what they give alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.cache.fast_dllm import block_cache_problem
from dlm.memory import RowMemory, column_field, column_index_field, shared_field
from dlm.messages import (CacheEnv, FeatureStore, ForwardPlan, KVStore, LayerInput, LayerPlans, LayerPolicy, LayerStep,
                          ModelCapabilities, Window)
from dlm.state import GenerationState


class ElasticCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gamma: float = Field(0.9, ge=0.0, le=1.0, description="drift threshold γ: a layer whose most-attended token's "
                         "attention has cosine similarity ≤ γ to the previous forward's makes every deeper layer "
                         "recompute every column (1: every layer, every forward)")


@dataclass
class ElasticMemory(RowMemory):
    """K/V, features and, per row, its last window and per layer the most-attended column and its attention."""

    movable = True

    kv: KVStore
    features: FeatureStore
    window: Tensor = column_index_field()  # [B, 2] long (host): the last forward's window; -1 before the first
    anchor: Tensor = column_index_field()  # [B, n_layers] long: per layer the column attended most (T)
    attention: Tensor = column_field(dim=2)  # [B, n_layers, L]: S[:, T] at the window's query columns (a)
    depth: Tensor  # [B] long: the first layer that ran every column at the row's last forward (n_layers: none)
    shift: int = shared_field(default=0)


class _Policy(LayerPolicy):
    """One forward: ``rows`` [b] (device), windows ``lo``/``hi`` [b] (host), ``fresh`` [b] (host): rows refreshing."""

    def __init__(self, config: ElasticCacheConfig, m: ElasticMemory, rows: Tensor, lo: Tensor, hi: Tensor,
                 fresh: Tensor, length: int) -> None:
        self.config, self.m, self.rows, device = config, m, rows, rows.device
        offsets = lo[:, None] + torch.arange(int((hi - lo).max()))[None, :]  # [b, w]: the window's query columns
        self.valid = (offsets < hi[:, None]).to(device)
        self.offsets = torch.minimum(offsets, hi[:, None] - 1).to(device)
        cols = torch.arange(length)[None, :]
        self.inside = ((cols >= lo[:, None]) & (cols < hi[:, None])).to(device)  # [b, L]
        self.deep = fresh.to(device)  # [b]: rows running every column from the next layer on

    def step(self, layer: LayerInput) -> LayerStep:
        return LayerStep(compute=self.inside | self.deep[:, None], probe=self.offsets)

    def attended(self, layer: int, weights: Tensor) -> None:  # weights: [b, w, L]
        m, rows, offsets = self.m, self.rows, self.offsets
        s = weights.to(m.attention.dtype) * self.valid[..., None]
        now = s.gather(2, m.anchor[rows, layer].clamp(min=0)[:, None, None].expand(-1, s.shape[1], 1))[..., 0]
        before = m.attention[rows, layer].gather(1, offsets) * self.valid  # [b, w]
        sigma = ((now * before).sum(1) / (now.norm(dim=1) * before.norm(dim=1))).clamp(max=1.0)
        drift = ~self.deep & ~(sigma > self.config.gamma)  # σ ≤ γ; NaN (no attention to compare) is drift
        m.depth[rows] = torch.where(drift, layer + 1, m.depth[rows])
        self.deep = self.deep | drift
        top = s.sum(1).argmax(1)  # [b]: the column the window attended most
        m.anchor[rows, layer] = top
        a = s.gather(2, top[:, None, None].expand(-1, s.shape[1], 1))[..., 0]  # [b, w]
        m.attention[rows, layer] = torch.zeros_like(m.attention[rows, layer]).scatter_add(1, offsets, a)


class ElasticCache(CacheManager):
    Config = ElasticCacheConfig
    joinable = True
    provides = frozenset({"edit_aware"})  # edits stay in a row's block, its window, which every layer recomputes
    requires = {"layer_plans": "its shallow layers compute the window only and reuse the other columns' cached "
                               "attention and MLP outputs, and it probes each layer's attention (per-layer plans)"}

    def check(self, capabilities: ModelCapabilities) -> str | None:
        return block_cache_problem(capabilities)

    def start(self, state: GenerationState, env: CacheEnv) -> ElasticMemory:
        kv = env.new_kv(state.batch_size, state.length)
        b, n, device = state.batch_size, kv.keys.shape[0], state.device
        dtype = torch.float64 if kv.keys.dtype == torch.float64 else torch.float32
        return ElasticMemory(kv, env.new_features(b, state.length), torch.full((b, 2), -1, dtype=torch.long),
                             torch.zeros(b, n, dtype=torch.long, device=device),
                             torch.zeros(b, n, state.length, dtype=dtype, device=device),
                             torch.zeros(b, dtype=torch.long, device=device), shift=env.capabilities.logit_shift)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: ElasticMemory = self.memory(state)
        host, g = window.rows.cpu(), window.geometry
        lo, hi = (g.block_start - m.shift).clamp(min=0), g.block_end - m.shift  # [b] host
        fresh = (m.window[host] != torch.stack((lo, hi), dim=1)).any(dim=1)  # no comparable history
        m.window[host] = torch.stack((lo, hi), dim=1)
        m.depth[window.rows] = torch.where(fresh.to(state.device), 0, m.anchor.shape[1])
        policy = _Policy(self.config, m, window.rows, lo, hi, fresh, state.length)
        return ForwardPlan(rows=window.rows, all_rows=len(host) == state.batch_size, start=0, end=state.length,
                           kv=m.kv, key_end=state.length, refresh=bool(fresh.all())).extend(
                               LayerPlans(policy, m.features))
