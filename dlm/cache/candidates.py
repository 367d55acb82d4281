"""Candidate steps: one forward over ``K`` candidate canvases of each window row, planned by the cache.

A decoding strategy that attaches :class:`~dlm.messages.Candidates` to its window (draft-and-verify decoding,
FreeDave: Wu et al. 2025, arXiv 2510.00294) gets logits for every candidate from one forward. The cache
plans it (:func:`plan_candidates`, the default of :meth:`~dlm.cache.base.CacheManager.plan_candidates`): the
candidates run as ``b·K`` rows, each its row's canvas with the candidate's commit applied, the row's padding
and a private copy of the row's K/V (so a candidate's fresh K/V never reach another candidate or another
row); the model executes the plan like any other. After the strategy chose, :func:`keep_candidate` makes
the kept candidate's K/V its row's. A row's candidates depend only on that row, so batched rows still give
what they give alone.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dlm.errors import CompositionError, DecodingError
from dlm.messages import CandidateBatch, Candidates, Commit, ForwardPlan, Keep, LayerPlans, Window
from dlm.state import GenerationState


def plan_candidates(state: GenerationState, plan: ForwardPlan, window: Window) -> ForwardPlan:
    """``plan`` (made for the window's rows) run for every candidate of ``window`` instead."""
    cand = window.get(Candidates)
    b, k = cand.select.shape[:2]
    layers = plan.get(LayerPlans)
    if layers is not None:  # each candidate gets its row's policy and a private copy of its row's features
        try:
            policy = layers.policy.repeat(k)
        except NotImplementedError as err:
            raise CompositionError(f"candidate steps (a decoding strategy's Candidates, e.g. freedave) cannot run "
                                   f"this cache's per-layer plan: {err}; use a cache without layer plans (dual, dkv, "
                                   "...) with this strategy") from None
        features = None if layers.features is None else layers.features.take(window.rows.repeat_interleave(k))
        plan = plan.without(LayerPlans).extend(LayerPlans(policy, features))
    rows = window.rows
    canvas = state.canvas[rows].repeat_interleave(k, dim=0)  # [b·K, L]
    cols = slice(window.start, window.end)
    canvas[:, cols] = torch.where(cand.select.flatten(0, 1), cand.tokens.flatten(0, 1), canvas[:, cols])
    every = torch.arange(b * k, device=state.device)
    kv = None if plan.kv is None else plan.kv.take(rows.repeat_interleave(k))
    columns = None if plan.columns is None else plan.columns.repeat_interleave(k, dim=0)
    per_row = lambda v: v.repeat_interleave(k) if isinstance(v, torch.Tensor) else v  # noqa: E731
    batch = CandidateBatch(canvas=canvas, pad=state.pad[rows].repeat_interleave(k), source_rows=rows, count=k,
                           batch_kv=plan.kv, batch_features=None if layers is None else layers.features)
    return replace(plan, rows=every, all_rows=True, kv=kv, columns=columns, write_start=per_row(plan.write_start),
                   write_end=per_row(plan.write_end)).extend(batch)


def keep_candidate(plan: ForwardPlan, commit: Commit) -> None:
    """After a candidate step: copy the kept candidate's K/V ([b] ``Keep.index``) into its row of the store."""
    batch = plan.get(CandidateBatch)
    if batch is None or plan.kv is None:
        return
    keep = commit.get(Keep)
    if keep is None:
        raise DecodingError("a candidate step's commit must name the candidate it keeps (a Keep extension)")
    src = torch.arange(len(batch.source_rows), device=keep.index.device) * batch.count + keep.index  # [b]
    batch.batch_kv.copy_rows(batch.source_rows, plan.kv, src)
    if batch.batch_features is not None:
        batch.batch_features.copy_rows(batch.source_rows, plan.get(LayerPlans).features, src)
