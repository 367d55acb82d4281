"""``elastic``: Elastic-Cache's attention-aware, depth-aware KV refresh (Nguyen-Tri, Ranjan, Shen 2025, "Attention Is
All You Need for KV Cache in Diffusion LLMs", arXiv 2510.14973, §3 and Algorithm 1; no code is published: tested
against a plain restatement of the rule, tests/test_elastic_cache.py).

Every forward runs the canvas under per-layer plans. A row's *window* is its iteration window (``block_start``/
``block_end`` less the logit shift; ``blockwise``: the block). Its first forward in a window runs every layer on
every column; later ones run layer ``l`` on the window only until a drift test fails, then every column in every
later layer (the rest reuse cached K/V and attention/MLP outputs). The test: ``S`` the window queries' attention
probabilities (heads summed), ``T`` the column the window attended most in layer ``l`` at the previous forward
(``argmax_k Σ_q S[q, k]``, first on ties), ``a`` that forward's ``S[:, T]``; it fails when ``cos(S[:, T], a) ≤ γ``.
Every layer then keeps this forward's ``T`` and ``a``. The choices the paper leaves open (this window, a moved
window refreshing, ``T`` over every key, ``σ = γ`` as drift, ``γ = 0.9``) are in docs/cache-and-exit-algorithms.md.
Layer 0 always runs the window only, so no ``γ`` is ``none`` beyond one layer (on one, every ``γ`` is). Each row
decides alone (batch rows, late joins, candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.cache.fast_dllm import block_cache_problem
from dlm.memory import RowMemory, column_field, column_index_field, shared_field
from dlm.messages import (CacheEnv, CandidateBatch, Commit, FeatureStore, ForwardPlan, Keep, KVStore, LayerInput,
                          LayerPlans, LayerPolicy, LayerStep, ModelCapabilities, Window)
from dlm.state import GenerationState


class ElasticCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gamma: float = Field(0.9, ge=0.0, le=1.0, description="drift threshold γ: a layer whose most-attended token's "
                         "attention has cosine similarity ≤ γ to the previous forward's makes every deeper layer "
                         "recompute every column (1: every layer after the first, every forward)")


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
    """One forward of ``rows`` [b] (``k`` candidates each): windows ``lo``/``hi`` and refreshing rows ``fresh`` [b]
    (host). Each layer's most-attended column and attention go to copies of the rows' memory, which become the
    memory after the last layer (at a candidate step, the kept candidate's: :meth:`ElasticCache.keep`)."""

    def __init__(self, config: ElasticCacheConfig, m: ElasticMemory, rows: Tensor, lo: Tensor, hi: Tensor,
                 fresh: Tensor, k: int = 1) -> None:
        self.args, self.config, self.m, self.rows, self.k = (config, m, rows, lo, hi, fresh), config, m, rows, k
        (lo, hi, fresh), device = (t.repeat_interleave(k) for t in (lo, hi, fresh)), rows.device
        offsets = lo[:, None] + torch.arange(int((hi - lo).max()))[None, :]  # [b·k, w]: the window's query columns
        self.valid = (offsets < hi[:, None]).to(device)
        self.offsets = torch.minimum(offsets, hi[:, None] - 1).to(device)
        cols = torch.arange(m.attention.shape[2])[None, :]
        self.inside = ((cols >= lo[:, None]) & (cols < hi[:, None])).to(device)  # [b·k, L]
        self.deep = fresh.to(device)  # [b·k]: rows running every column from the next layer on
        self.anchor, self.attention = m.anchor[rows].repeat_interleave(k, 0), m.attention[rows].repeat_interleave(k, 0)
        self.depth = torch.where(self.deep, 0, m.anchor.shape[1])  # [b·k]: the first layer running every column

    def repeat(self, k: int) -> "_Policy":
        return _Policy(*self.args, k=k)

    def step(self, layer: LayerInput) -> LayerStep:
        return LayerStep(compute=self.inside | self.deep[:, None], probe=self.offsets)

    def attended(self, layer: int, weights: Tensor) -> None:  # weights: [b·k, w, L]
        s, offsets, w = weights.to(self.attention.dtype) * self.valid[..., None], self.offsets, weights.shape[1]
        now = s.gather(2, self.anchor[:, layer, None, None].expand(-1, w, 1))[..., 0]  # [b·k, w]: S[:, T]
        before = self.attention[:, layer].gather(1, offsets) * self.valid  # a
        sigma = ((now * before).sum(1) / (now.norm(dim=1) * before.norm(dim=1))).clamp(max=1.0)
        drift = ~self.deep & ~(sigma > self.config.gamma)  # σ ≤ γ; NaN (no attention to compare) is drift
        self.depth, self.deep = torch.where(drift, layer + 1, self.depth), self.deep | drift
        self.anchor[:, layer] = top = s.sum(1).argmax(1)  # the column the window attended most
        a = s.gather(2, top[:, None, None].expand(-1, w, 1))[..., 0]
        self.attention[:, layer] = torch.zeros_like(self.attention[:, layer]).scatter_add(1, offsets, a)
        if layer == self.anchor.shape[1] - 1 and self.k == 1:
            self.keep(torch.arange(len(self.rows), device=self.rows.device))

    def keep(self, pick: Tensor) -> None:
        """The records of policy rows ``pick`` [b] become their rows' memory."""
        m, r = self.m, self.rows
        m.anchor[r], m.attention[r], m.depth[r] = self.anchor[pick], self.attention[pick], self.depth[pick]


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
        policy = _Policy(self.config, m, window.rows, lo, hi, fresh)
        return ForwardPlan(rows=window.rows, all_rows=len(host) == state.batch_size, start=0, end=state.length,
                           kv=m.kv, key_end=state.length, refresh=bool(fresh.all())).extend(
                               LayerPlans(policy, m.features))

    def keep(self, state: GenerationState, plan: ForwardPlan, commit: Commit) -> None:
        super().keep(state, plan, commit)
        if plan.get(CandidateBatch) is None:
            return
        policy: _Policy = plan.get(LayerPlans).policy
        policy.keep(torch.arange(len(policy.rows), device=policy.rows.device) * policy.k + commit.get(Keep).index)
