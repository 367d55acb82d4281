"""``append``: the append-only KV cache of causal models (autoregressive, Jacobi, WeDLM decoding).

With causal attention a column's K/V depend only on the columns before it. Once a forward computed column
``c`` while every column up to ``c`` held the tokens it holds now, and those tokens are committed (never to
change), its K/V are final. The manager keeps, per row, the tokens each computed column held at its last
forward (``seen``) and how far that forward was consistent (``fresh_end``); each plan computes from the first
column whose K/V are not final (``valid_end``) to the last output the window's logits need, and attends to
the slots before it as cached: the K/V of the committed prefix are appended once and never recomputed.

- Autoregressive decoding: the prompt once, then one column per token.
- Jacobi decoding: accepted draft tokens were computed with the tokens they now hold, so their K/V stay;
  only the last accepted token (the correction) and the new draft are computed, as in the reference's KV
  rollback of the rejected tail.
- WeDLM (a :class:`~dlm.messages.Reorder` window): each row's columns from ``valid_end`` on are computed in
  committed-first order (an ordered column-set plan, see :mod:`dlm.cache.reorder`); only the leading run of
  committed columns is computed in position order, so only it becomes final: the reference's pruned prefix.

Rows of one step serve each as alone: a row's own window is its geometry's ``[block_start, block_end)``
(:func:`~dlm.cache.columns.own_span`), its validity is tracked per row, and it stores only from its own
``valid_end`` (per-row write bounds; the columns before are final, computed again only as peeks for a row
further behind). Columns of the step's logits span past a row's own window are pending there (never final),
so they are stored but never read: a later step recomputes them before any query of the row sees them.
Ordered plans put them after every own column. So rows joining a running generation give their alone output.

Exactness: every forward equals the no-cache forward of the same plan order (``none``) up to float
rounding, since every slot it reads is final.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.cache.columns import own_span
from dlm.cache.prefix import KVMemory
from dlm.cache.reorder import committed_first
from dlm.messages import CacheEnv, ForwardPlan, ModelCapabilities, Ordered, Reorder, Window
from dlm.state import GenerationState


class AppendCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class AppendMemory(KVMemory):
    """The KV store and, per row, the tokens of each column at its last forward and how far it was consistent."""

    seen: Tensor | None = None  # [B, L] long: token of each column at its last forward (-1: never computed)
    fresh_end: Tensor | None = None  # [B] long: columns before it were computed with the tokens in ``seen``


class AppendCache(CacheManager):
    Config = AppendCacheConfig
    joinable = True
    provides = frozenset({"edit_aware"})  # a column whose token changed is stale (the canvas is compared)

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if not capabilities.kv_cache:
            return "the model adapter cannot run through a KV buffer"
        if capabilities.attention != "causal":
            return (
                "an append-only cache is exact only for causal attention (a column's K/V must not depend on later "
                f"columns); the model's attention is {capabilities.attention}"
            )
        return None

    def start(self, state: GenerationState, env: CacheEnv) -> AppendMemory:
        return AppendMemory(env.new_kv(state.batch_size, state.length), shift=env.capabilities.logit_shift,
                            seen=torch.full_like(state.canvas, -1),
                            fresh_end=torch.zeros(state.batch_size, dtype=torch.long, device=state.device))

    def valid_end(self, state: GenerationState, rows: Tensor) -> Tensor:
        """[b] first column of each row whose K/V are not final (computed with other tokens, or pending)."""
        m: AppendMemory = self.memory(state)
        cols = torch.arange(state.length, device=state.device)[None, :]
        stale = (state.canvas[rows] != m.seen[rows]) | state.pending()[rows] | (cols >= m.fresh_end[rows, None])
        return torch.where(stale.any(dim=1), stale.int().argmax(dim=1), state.length)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: AppendMemory = self.memory(state)
        rows, dev = window.rows, state.device
        need_lo, need_hi = window.logits_start - m.shift, window.logits_end - m.shift  # the step's outputs
        own_lo, own_hi = (v.to(dev) - m.shift for v in own_span(window))  # each row's own outputs, as alone
        valid = torch.minimum(self.valid_end(state, rows), own_lo)  # [b]: first column each row stores
        all_rows = len(rows) == state.batch_size
        pending = state.pending()[rows]
        if window.has(Reorder):
            start = torch.clamp(valid, max=need_lo)
            columns = committed_first(pending, start, need_hi, own_end=own_hi)
            plan = ForwardPlan(rows=rows, all_rows=all_rows, start=int(columns.min()), end=int(columns.max()) + 1,
                               kv=m.kv, key_end=need_hi, refresh=True, columns=columns).extend(Ordered())
            consistent = self._first_pending(pending, valid, own_hi)  # only the committed run is in position order
        else:
            start = int(valid.min())
            shared = bool((valid == start).all())
            plan = ForwardPlan(rows=rows, all_rows=all_rows, start=min(start, need_lo), end=need_hi, kv=m.kv,
                               key_end=need_hi, refresh=True, write_start=start if shared else valid,
                               write_end=need_hi)
            consistent = own_hi
        m.seen[rows] = state.canvas[rows]
        m.fresh_end[rows] = consistent
        return plan

    @staticmethod
    def _first_pending(pending: Tensor, start: Tensor, end: Tensor) -> Tensor:
        """[b] first pending column in ``[start[r], end[r])`` of each row (``end[r]`` when none)."""
        cols = torch.arange(pending.shape[1], device=pending.device)[None, :]
        inside = pending & (cols >= start[:, None]) & (cols < end[:, None])
        return torch.where(inside.any(dim=1), inside.int().argmax(dim=1), end)
