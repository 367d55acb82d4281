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
- WeDLM (``window.reorder``): each row's columns from ``valid_end`` on are computed in committed-first order
  (an ordered column-set plan, see :mod:`dlm.cache.reorder`); only the leading run of committed columns is
  computed in position order, so only it becomes final: the reference's pruned prefix.

Exactness: every forward equals the no-cache forward of the same plan order (``none``) up to float
rounding, since every slot it reads is final. Rows of a range plan start at the batch's smallest
``valid_end``: a row further on recomputes final columns (same keys, same values).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from dlm.cache.base import CacheManager
from dlm.cache.reorder import committed_first
from dlm.messages import ForwardPlan, KVStore, ModelCapabilities, Window
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState


class AppendCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AppendCache(CacheManager):
    Config = AppendCacheConfig
    kv: KVStore | None = None

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if not capabilities.kv_cache:
            return "the model adapter cannot run through a KV buffer"
        if capabilities.attention != "causal":
            return (
                "an append-only cache is exact only for causal attention (a column's K/V must not depend on later "
                f"columns); the model's attention is {capabilities.attention}"
            )
        return None

    def start(self, state: GenerationState, model: ModelAdapter) -> None:
        self.kv = model.new_kv(state.batch_size, state.length)
        self.shift = model.capabilities.logit_shift
        self.seen = torch.full_like(state.canvas, -1)  # [B, L] token of each column at its last forward
        self.fresh_end = torch.zeros(state.batch_size, dtype=torch.long, device=state.device)  # [B]

    def finish(self) -> None:
        self.kv = None
        self.seen = self.fresh_end = None

    def valid_end(self, state: GenerationState, rows) -> torch.Tensor:
        """[b] first column of each row whose K/V are not final (computed with other tokens, or pending)."""
        cols = torch.arange(state.length, device=state.device)[None, :]
        stale = (state.canvas[rows] != self.seen[rows]) | state.pending()[rows] | (cols >= self.fresh_end[rows, None])
        return torch.where(stale.any(dim=1), stale.int().argmax(dim=1), state.length)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        rows = window.rows
        need_lo, need_hi = window.logits_start - self.shift, window.logits_end - self.shift
        valid = torch.clamp(self.valid_end(state, rows), max=need_lo)  # [b]
        all_rows = len(rows) == state.batch_size
        pending = state.pending()[rows]
        if window.reorder:
            columns = committed_first(pending, valid, need_hi)
            plan = ForwardPlan(rows=rows, all_rows=all_rows, start=int(columns.min()), end=int(columns.max()) + 1,
                               kv=self.kv, key_end=need_hi, refresh=True, columns=columns, ordered=True)
            consistent = self._first_pending(pending, valid, need_hi)  # only the committed run is in position order
        else:
            start = int(valid.min())
            plan = ForwardPlan(rows=rows, all_rows=all_rows, start=start, end=need_hi, kv=self.kv, key_end=need_hi,
                               refresh=True)
            consistent = torch.full_like(valid, need_hi)
        self.seen[rows, :need_hi] = state.canvas[rows, :need_hi]
        self.fresh_end[rows] = consistent
        return plan

    @staticmethod
    def _first_pending(pending: torch.Tensor, start: torch.Tensor, end: int) -> torch.Tensor:
        """[b] first pending column in ``[start, end)`` of each row (``end`` when none)."""
        cols = torch.arange(pending.shape[1], device=pending.device)[None, :]
        inside = pending & (cols >= start[:, None]) & (cols < end)
        return torch.where(inside.any(dim=1), inside.int().argmax(dim=1), end)
