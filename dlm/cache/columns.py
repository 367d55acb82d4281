"""Per-row column-set plans: each row computes its own set of canvas columns, reading the rest as cached.

Shared by the caches whose rows need different columns in one step (``dkv``, and ``vicinity`` when some rows
refresh while others do not). A row whose set is smaller than the largest repeats its first column, which
rewrites the same K/V (see :class:`~dlm.messages.ForwardPlan`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.messages import ForwardPlan, KVStore
from dlm.state import GenerationState


def column_plan(state: GenerationState, rows: Tensor, need: Tensor, kv: KVStore, *, refresh: bool) -> ForwardPlan:
    """The plan computing, for each of ``rows``, the columns where ``need`` [b, L] is True (each row ≥ 1)."""
    counts = need.sum(dim=1)  # [b]
    count = int(counts.max())
    order = torch.sort((~need).long(), dim=1, stable=True).indices[:, :count]  # [b, count]: needed columns first
    ranks = torch.arange(count, device=need.device)[None, :]
    columns = torch.where(ranks < counts[:, None], order, order[:, :1].expand_as(order))
    return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=int(columns.min()),
                       end=int(columns.max()) + 1, kv=kv, key_end=state.length, refresh=refresh, columns=columns)
