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
:class:`~dlm.messages.ForwardPlan`): :func:`first_columns`.

Choosing a set (d²Cache's, arXiv 2509.23094, usable by any column-set cache): :func:`density` scores columns by
their committed neighbours, :func:`nucleus` keeps the top-p share of scores, :func:`fill_gaps` closes narrow gaps.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from dlm.cache.candidates import plan_candidates
from dlm.messages import Candidates, ForwardPlan, KVStore, Window
from dlm.state import GenerationState

__all__ = ["own_span", "column_plan", "StoreOnly", "candidate_plan", "first_columns", "density", "nucleus", "fill_gaps"]


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


def first_columns(mask: Tensor) -> Tensor:
    """[b, q] long: each row's columns that ``mask`` [b, L] marks, in order; a row with fewer than the most
    repeats its first."""
    counts = mask.sum(dim=1, keepdim=True)
    order = torch.sort((~mask).long(), dim=1, stable=True).indices[:, : int(counts.max())]  # marked columns first
    return torch.where(torch.arange(order.shape[1], device=mask.device)[None, :] < counts, order, order[:, :1])


def density(committed: Tensor, sigma: float, dtype: torch.dtype) -> Tensor:
    """[b, G]: Σ_j x_j g(i-j) / Σ_{-3G≤d<3G} g(d), g(d) = exp(-d²/2σ²), x = (G ones | committed | G × last)."""
    b, g = committed.shape
    x = torch.cat((committed.new_ones(b, g), committed, committed[:, -1:].expand(b, g)), dim=1).to(dtype)
    gauss = lambda d: torch.exp(-(d.to(dtype) ** 2) / (2 * sigma**2))  # noqa: E731
    d = torch.arange(g, device=x.device)[:, None] + g - torch.arange(3 * g, device=x.device)[None, :]  # [G, 3G]
    return x @ gauss(d).T / gauss(torch.arange(-3 * g, 3 * g, device=x.device)).sum()


def nucleus(scores: Tensor, p: float, allowed: Tensor) -> Tensor:
    """[b, L] bool: the allowed columns whose normalised scores, largest first, stay within ``p`` (at least one)."""
    s = torch.where(allowed, scores, 0.0)
    probs, order = (s / (s.sum(dim=-1, keepdim=True) + 1e-9)).sort(dim=-1, descending=True)
    keep = (probs.cumsum(dim=-1) <= p) | (torch.arange(s.shape[1], device=s.device) == 0)
    return torch.zeros_like(allowed).scatter_(1, order, keep & allowed.gather(1, order))


def fill_gaps(chosen: Tensor, width: int) -> Tensor:
    """[b, L] bool: ``chosen`` and every gap of at most ``width`` columns between two chosen columns."""
    if width <= 0:
        return chosen
    n = chosen.shape[1]
    i = torch.arange(n, device=chosen.device).expand_as(chosen)
    after = torch.where(chosen, i, n).flip(1).cummin(dim=1).values.flip(1)
    before = torch.where(chosen, i, -1).cummax(dim=1).values
    return chosen | ((after - before <= width) & (before >= 0) & (after < n))


def column_plan(state: GenerationState, window: Window, kv: KVStore, store: Tensor, *, shift: int,
                refresh: bool) -> ForwardPlan:
    """The plan computing, for each window row, the columns ``store`` [b, L] marks (storing their K/V) and the
    outputs the window's logits span needs (peeks unless stored)."""
    need = store.clone()
    need[:, window.logits_start - shift : window.logits_end - shift] = True
    columns = first_columns(need)
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
