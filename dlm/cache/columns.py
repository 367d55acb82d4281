"""Per-row plans: what each row of a window needs, column-set plans, and stores that keep only some columns.

Rows of one step may be at different places of their schedules (a row that joined a running generation is
at its block 0 while the others are further on), yet one forward serves them all. A cache then serves each
row as it would be served alone:

- :func:`own_span`: each row's own window (its geometry's block cut to the union window), and the span
  whose logits the row reads alone; columns of the union span outside it are *peeks* for that row;
- :func:`column_plan`: each row computes its own set of canvas columns (plus the step's logits span),
  reading every other column as cached, and stores only the columns it names (``store``); the rest it
  computes for the logits only, through a :class:`StoreOnly` view of the KV store, so its K/V are exactly
  what they are alone. Used by ``dkv`` (committed columns are cached one step after their commit);
- :class:`StoreOnly`: the view itself, for range and column-set forwards alike. (Range plans may instead
  give per-row write bounds, :func:`dlm.cache.prefix.row_range_plan`.)

A row whose set is smaller than the largest repeats its first column, which rewrites the same K/V (see
:class:`~dlm.messages.ForwardPlan`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from dlm.cache.candidates import plan_candidates
from dlm.messages import Candidates, ForwardPlan, KVStore, Window
from dlm.state import GenerationState

__all__ = ["own_span", "column_plan", "StoreOnly", "candidate_plan"]


def own_span(window: Window, *, widened: bool = True) -> tuple[Tensor, Tensor]:
    """[b] host each: the columns ``[lo, hi)`` of each row's own window, as alone (its geometry's block
    ``[block_start, block_end)`` cut to the union window ``[start, end)``). With ``widened``, a window whose
    logits span a strategy widened (to the whole generation region, the same for every row) gives every row
    that span on the widened side: the row's logits span as alone."""
    lo = torch.clamp(window.block_start, min=window.start, max=window.end)
    hi = torch.clamp(window.block_end, min=window.start, max=window.end)
    if not widened:
        return lo, hi
    if window.logits_start < window.start:
        lo = torch.full_like(lo, window.logits_start)
    if window.logits_end > window.end:
        hi = torch.full_like(hi, window.logits_end)
    return lo, hi


class StoreOnly:
    """A view of a KV store that stores only the columns ``store`` marks ([b, L] bool, rows as in the forward);
    reads pass through. A column computed but not stored is a peek: its output is returned, its slot keeps
    the cached K/V, so later layers (and later steps) read the cache there as they would without it."""

    def __init__(self, kv: KVStore, store: Tensor) -> None:
        self.kv, self.store = kv, store
        self.keys, self.values = kv.keys, kv.values

    @property
    def length(self) -> int:
        return self.kv.length

    def write(self, layer: int, rows: Tensor | None, start: int, k: Tensor, v: Tensor) -> None:
        self.kv.write(layer, rows, start, k, v, keep=self.store[:, start : start + k.shape[2]])

    def write_columns(self, layer: int, rows: Tensor | None, columns: Tensor, k: Tensor, v: Tensor,
                      keep: Tensor | None = None) -> None:
        stored = self.store.gather(1, columns.expand(self.store.shape[0], -1))
        self.kv.write_columns(layer, rows, columns, k, v, keep=stored if keep is None else stored & keep)

    def read(self, layer: int, rows: Tensor | None, key_end: int) -> tuple[Tensor, Tensor]:
        return self.kv.read(layer, rows, key_end)


def column_plan(state: GenerationState, window: Window, kv: KVStore, store: Tensor, *, shift: int,
                refresh: bool) -> ForwardPlan:
    """The plan computing, for each window row, the columns ``store`` [b, L] marks (storing their K/V) and the
    outputs the window's logits span needs (peeks unless stored)."""
    need = store.clone()
    need[:, window.logits_start - shift : window.logits_end - shift] = True
    counts = need.sum(dim=1)  # [b]
    count = int(counts.max())
    order = torch.sort((~need).long(), dim=1, stable=True).indices[:, :count]  # [b, count]: needed columns first
    ranks = torch.arange(count, device=need.device)[None, :]
    columns = torch.where(ranks < counts[:, None], order, order[:, :1].expand_as(order))
    rows = window.rows
    peeks = bool((need & ~store).any())
    return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=int(columns.min()),
                       end=int(columns.max()) + 1, kv=StoreOnly(kv, store) if peeks else kv, key_end=state.length,
                       refresh=refresh, columns=columns)


def candidate_plan(state: GenerationState, plan: ForwardPlan, window: Window) -> ForwardPlan:
    """A candidate step (:func:`dlm.cache.candidates.plan_candidates`) of a plan that may store through a
    :class:`StoreOnly` view: the candidates' private K/V are viewed the same way, row by row."""
    if not isinstance(plan.kv, StoreOnly):
        return plan_candidates(state, plan, window)
    view = plan.kv
    out = plan_candidates(state, replace(plan, kv=view.kv), window)
    k = window.get(Candidates).count
    return replace(out, kv=StoreOnly(out.kv, view.store.repeat_interleave(k, dim=0)))
