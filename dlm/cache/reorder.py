"""WeDLM's topological reordering as a column order: committed columns first, then pending ones.

WeDLM (Liu et al., 2025, arXiv 2512.22737; Tencent/WeDLM ``_prepare_window_inputs``) feeds a causal model
the filled tokens of its window before the masks, each at its original RoPE position, so every mask attends
to every filled token. :func:`committed_first` gives that order for the columns a plan computes; an ordered
:class:`~dlm.messages.ForwardPlan` (with the :class:`~dlm.messages.Ordered` extension) makes attention causal
in it. Rows of one step whose windows differ compute the columns of the step's logits span beyond their own
window last (:func:`committed_first` with ``own_end``), where none of their own columns sees them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def committed_first(pending: Tensor, start: Tensor, end: int, own_end: Tensor | None = None) -> Tensor:
    """[b, q] each row's columns ``[start[r], end)``, committed ones first, then pending ones, each group in
    column order; a row with fewer columns repeats its last one (the last in attention order).

    ``own_end`` [b]: only the columns before ``own_end[r]`` are the row's own (ordered as above); its columns
    ``[own_end[r], end)`` come after all of them, in column order (computed for the logits only: every own
    column precedes them, so none sees them)."""
    cols = torch.arange(pending.shape[1], device=pending.device)[None, :]  # [1, L]
    inside = (cols >= start[:, None]) & (cols < end)  # [b, L]
    group = torch.where(inside, pending.long(), 3)  # 0 committed, 1 pending, 2 after the row's own, 3 not computed
    if own_end is not None:
        group = torch.where(inside & (cols >= own_end.to(pending.device)[:, None]), 2, group)
    order = torch.sort(group, dim=1, stable=True).indices  # [b, L]
    count = inside.sum(dim=1)  # [b]
    q = int(count.max())
    order = order[:, :q]
    last = order.gather(1, (count - 1).clamp(min=0)[:, None])  # [b, 1]
    return torch.where(torch.arange(q, device=pending.device)[None, :] < count[:, None], order, last)
