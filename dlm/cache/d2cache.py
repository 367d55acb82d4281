"""``d2cache``: d²Cache's dual adaptive KV cache (Jiang et al., ICLR 2026, arXiv 2509.23094; code
Kamichanw/d2Cache @ 72feb60, ``src/cache/d2cache.py``).

A row's first forward computes the whole canvas; each later one (a column-set plan) stores the K/V of the columns
chosen from its last forward and reads the others' as cached: the ``current_k`` masked columns of highest
first-forward confidence × certainty density in a search window from the block (the block's first), the columns
committed since, the top ``rollout_p`` (nucleus) of the others by attention-rollout importance, and with
``inflate_w`` the gaps of at most that width. The window's other columns are peeks. The authors' quirks kept (and
where this differs): docs/fidelity.md.

Exactness: ``rollout_p: 1`` computes every column every forward, and a 1-layer model recomputes every changed one:
both are ``none``. Each row selects alone, so batch rows and rows joining later give what they give alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.cache.columns import candidate_plan, column_plan, density, fill_gaps, first_columns, nucleus
from dlm.cache.fast_dllm import block_cache_problem
from dlm.cache.prefix import KVMemory
from dlm.memory import column_field, column_index_field, row_field
from dlm.messages import (CacheEnv, CandidateBatch, Commit, ForwardPlan, Keep, LayerInput, LayerPlans, LayerPolicy,
                          LayerStep, ModelCapabilities, Window)
from dlm.state import GenerationState


class D2CacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rollout_p: float = Field(0.1, ge=0.0, le=1.0, description="top-p share of rollout importance recomputed (1: none)")
    current_k: int = Field(32, ge=1, description="masked columns recomputed each step (confidence × density)")
    sigma: float = Field(10.0, gt=0.0, description="width of the Gaussian certainty density, in columns")
    inflate_w: int = Field(0, ge=0, description="also recompute gaps of at most this width between chosen columns")


@dataclass
class D2Memory(KVMemory):
    """The KV store and, per row: pending columns, importance and block at its last forward, first confidences."""
    seen: Tensor = column_field(fill=False, default=None)  # [B, L] bool: pending at the row's last forward
    importance: Tensor = column_field(fill=0.0, default=None)  # [B, L]: rollout column sums of that forward
    confidence: Tensor = column_field(fill=0.0, default=None)  # [B, L]: the first forward's confidence
    block: Tensor = column_index_field(default=None)  # [B, 2] long (host): that forward's block bounds
    started: Tensor = row_field(default=None)  # [B] bool (host): the row ran its first forward


class _Policy(LayerPolicy):
    """Probes the stored columns in every layer for the attention rollout (each layer's head-mean attention plus the
    identity, rows renormalised, multiplied over layers); after the last layer writes each row's importance, and the
    region's confidences of the rows at their first forward, to the memory."""

    def __init__(self, importance: Tensor, confidence: Tensor, layers: int, rows, columns, probe, own, first,
                 outputs: Tensor | None, gen_start: int) -> None:
        self.importance, self.confidence, self.layers, self.rollout = importance, confidence, layers, None  # [B, L]
        self.rows, self.columns, self.probe, self.own = rows, columns, probe, own  # [b], [b, q], [b, p], [b, L]
        self.first, self.outputs, self.gen_start = first, outputs, gen_start  # [b] bool, [b, G] offsets or None

    def repeat(self, k: int) -> "_Policy":  # a candidate step: each candidate writes a row of its own
        rep = lambda t: None if t is None else t.repeat_interleave(k, dim=0)  # noqa: E731
        every = torch.arange(len(self.rows) * k, device=self.rows.device)
        return _Policy(rep(self.importance[self.rows]), rep(self.confidence[self.rows]), self.layers, every,
                       *map(rep, (self.columns, self.probe, self.own, self.first, self.outputs)), self.gen_start)

    def step(self, layer: LayerInput) -> LayerStep:
        return LayerStep(probe=self.probe)

    def attended(self, layer: int, weights: Tensor) -> None:  # weights [b, p, L], summed over heads
        b, _, n = weights.shape
        eye = torch.eye(n, dtype=weights.dtype, device=weights.device).expand(b, n, n)
        rows = self.columns.gather(1, self.probe)[..., None].expand(-1, -1, n)  # the probed queries' canvas columns
        attn = eye.clone().scatter_(1, rows, weights / weights.sum(dim=-1, keepdim=True))  # head mean
        step = (attn + eye) / (attn + eye).sum(dim=-1, keepdim=True)
        self.rollout = step if self.rollout is None else step @ self.rollout
        if layer == self.layers - 1:
            self.importance[self.rows] = torch.where(self.own, self.rollout.sum(dim=1), 0.0).to(self.importance.dtype)

    def predict(self) -> Tensor | None:
        return self.outputs

    def predicted(self, logits: Tensor) -> None:  # [b, G, V]: the first forward's confidences, kept for the generation
        top = torch.softmax(logits[self.first], dim=-1).amax(dim=-1)
        self.confidence[self.rows[self.first], self.gen_start:] = top.to(self.confidence.dtype)


class D2Cache(CacheManager):
    Config = D2CacheConfig
    joinable = True
    provides = frozenset({"edit_aware"})  # an edited column is recomputed at the next forward
    requires = {"layer_plans": "it probes every layer's attention of the columns it computes (attention rollout) "
                               "and reads the first forward's logits of the whole generation region"}

    def check(self, capabilities: ModelCapabilities) -> str | None:
        return block_cache_problem(capabilities)

    def start(self, state: GenerationState, env: CacheEnv) -> D2Memory:
        b, n, dev = state.batch_size, state.length, state.device
        floats = lambda: torch.zeros(b, n, dtype=torch.float64, device=dev)  # noqa: E731
        return D2Memory(env.new_kv(b, n), shift=env.capabilities.logit_shift, seen=state.pending().clone(),
                        importance=floats(), confidence=floats(), block=torch.zeros(b, 2, dtype=torch.long),
                        started=torch.zeros(b, dtype=torch.bool))

    def select(self, state, m: D2Memory, rows: Tensor, host: Tensor, pending: Tensor, own: Tensor) -> Tensor:
        """[b, L] bool: the columns each started row recomputes, from its last forward (the module doc)."""
        c, g0, n = self.config, state.gen_start, state.length
        left = pending[:, g0:]  # [b, G]
        lo, hi = (t.to(state.device)[:, None] - g0 for t in m.block[host].unbind(1))  # [b, 1]: that forward's block
        span = torch.arange(n - g0, device=state.device)[None, :]
        block = (span >= lo) & (span < hi) & m.seen[rows, g0:]  # its columns still masked at that forward
        size, start = block.sum(dim=1, keepdim=True), block.long().argmax(dim=1, keepdim=True)
        held = size == 0  # nothing masked in it (a block held open for edits): the whole block
        start, size = torch.where(held, lo, start), torch.where(held, (hi - lo).clamp(min=1), size)
        reach = left.long().cumsum(dim=1) >= c.current_k
        end = torch.where(reach.any(dim=1, keepdim=True), reach.long().argmax(dim=1, keepdim=True), n - g0 - 1)
        window = (span >= start) & (span <= (end // size + 1) * size - 1)
        score = m.confidence[rows, g0:] * density(~left, c.sigma, m.confidence.dtype)
        score = score + torch.where(block, score.amax(dim=1, keepdim=True), 0.0)
        top = torch.topk(torch.where(window & left, score, -torch.inf), k=min(c.current_k, n - g0), dim=1).indices
        store = m.seen[rows] & ~pending  # committed since the last forward; then the chosen (logits at c - shift)
        store[:, g0 - m.shift : n - m.shift] |= torch.zeros_like(left).scatter_(1, top, True) & left & window
        return fill_gaps(store | nucleus(m.importance[rows], c.rollout_p, ~store & own), c.inflate_w)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: D2Memory = self.memory(state)
        rows, host, n, g0, dev = window.rows, window.rows.cpu(), state.length, state.gen_start, state.device
        pending = state.pending()[rows]  # [b, L]
        own = torch.arange(n, device=dev)[None, :] >= state.pad[rows, None]  # [b, L]: the row's columns
        first = ~m.started[host]  # [b] host: a first forward computes the whole canvas
        store, later = own.clone(), (~first).to(dev)
        if bool(later.any()):
            store[later] = self.select(state, m, rows[later], host[~first], pending[later], own[later])
        if state.edited is not None:  # placed tokens an editing strategy rewrote
            store |= state.edited[rows] & own
        m.seen[rows], m.started[host] = pending, True
        m.block[host] = torch.stack((window.block_start, window.block_end), dim=1)
        if bool((store | ~own).all()):
            plan = ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=0, end=n, kv=m.kv, key_end=n,
                               refresh=True)
        else:
            plan = column_plan(state, window, m.kv, store, shift=m.shift, refresh=False)
        columns = torch.arange(n, device=dev).expand(len(rows), n) if plan.columns is None else plan.columns  # [b, q]
        stored = (store & own).gather(1, columns)  # [b, q]: computed and stored (not peeks, not padding)
        offsets = torch.arange(columns.shape[1], device=dev).expand_as(columns)
        at = columns.new_zeros(len(rows), n).scatter_(1, columns, offsets)[:, g0 - m.shift : n - m.shift]  # the region
        policy = _Policy(m.importance, m.confidence, m.kv.keys.shape[0], rows, columns, first_columns(stored), own,
                         first.to(dev), at if bool(first.any()) else None, g0)
        return plan.extend(LayerPlans(policy))

    def plan_candidates(self, state: GenerationState, plan: ForwardPlan, window: Window) -> ForwardPlan:
        return candidate_plan(state, plan, window)

    def keep(self, state: GenerationState, plan: ForwardPlan, commit: Commit) -> None:
        batch, kept = plan.get(CandidateBatch), commit.get(Keep)
        if batch is not None and kept is not None:  # the kept candidate's importance and confidences become the row's
            m, policy, rows = self.memory(state), plan.get(LayerPlans).policy, batch.source_rows
            src = torch.arange(len(rows), device=kept.index.device) * batch.count + kept.index
            m.importance[rows], m.confidence[rows] = policy.importance[src], policy.confidence[src]
        super().keep(state, plan, commit)
