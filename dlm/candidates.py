"""Candidate steps: one forward over ``K`` candidate canvases of each window row.

A decoding strategy that attaches :class:`~dlm.messages.Candidates` to its window (draft-and-verify decoding,
FreeDave: Wu et al. 2025, arXiv 2510.00294) gets logits for every candidate from one forward. The candidates
run as ``b·K`` extra rows: each is its row's canvas with the candidate's commit applied, the row's padding and
a private copy of the row's K/V (so a candidate's fresh K/V never reach another candidate or another row).
After the strategy chose, the kept candidate's K/V become the row's (:meth:`CandidateForward.keep`). A row's
candidates depend only on that row, so batched rows still give what they give alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from dlm.errors import DecodingError
from dlm.messages import Commit, ForwardPlan, Window
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState


@dataclass
class CandidateForward:
    """Logits [b, K, S, V] of a candidate step, and the candidates' K/V until one is kept."""

    logits: Tensor
    plan: ForwardPlan
    kv: object | None  # the candidates' private KV store ([b·K] rows), None without a cache

    def keep(self, commit: Commit) -> None:
        """Copy the kept candidate's K/V ([b] ``commit.keep``) into the rows of the real store."""
        if self.kv is None:
            return
        if commit.keep is None:
            raise DecodingError("a candidate step's commit must name the candidate it keeps (Commit.keep)")
        k = self.logits.shape[1]
        src = torch.arange(len(self.plan.rows), device=commit.keep.device) * k + commit.keep  # [b]
        dst = self.plan.rows
        self.plan.kv.keys[:, dst] = self.kv.keys[:, src]
        self.plan.kv.values[:, dst] = self.kv.values[:, src]


def forward_candidates(model: ModelAdapter, state: GenerationState, plan: ForwardPlan, window: Window) -> CandidateForward:
    """Run ``plan`` for every candidate of ``window``; K/V writes go to a private copy of the rows' store."""
    cand = window.candidates
    b, k = cand.select.shape[:2]
    rows = window.rows
    canvas = state.canvas[rows].repeat_interleave(k, dim=0)  # [b·K, L]
    cols = slice(window.start, window.end)
    canvas[:, cols] = torch.where(cand.select.flatten(0, 1), cand.tokens.flatten(0, 1), canvas[:, cols])
    expanded = GenerationState(
        canvas=canvas,
        pad=state.pad[rows].repeat_interleave(k),
        prompt_lengths=state.prompt_lengths[rows].repeat_interleave(k),
        gen_start=state.gen_start,
        gen_length=state.gen_length,
        mask_id=state.mask_id,
        eos_ids=state.eos_ids,
        nfe=state.nfe[rows].repeat_interleave(k),
        done=torch.zeros(b * k, dtype=torch.bool, device=state.device),
    )
    kv = None
    if plan.kv is not None:
        kv = model.new_kv(b * k, state.length)
        kv.keys.copy_(plan.kv.keys[:, rows].repeat_interleave(k, dim=1))
        kv.values.copy_(plan.kv.values[:, rows].repeat_interleave(k, dim=1))
    every = torch.arange(b * k, device=state.device)
    columns = None if plan.columns is None else plan.columns.repeat_interleave(k, dim=0)
    run = replace(plan, rows=every, all_rows=True, kv=kv, columns=columns)
    flat = replace(
        window, rows=every, eligible=window.eligible.repeat_interleave(k, dim=0),
        quota=window.quota.repeat_interleave(k), candidates=None,
        sub_start=None if window.sub_start is None else window.sub_start.repeat_interleave(k),
        sub_end=None if window.sub_end is None else window.sub_end.repeat_interleave(k),
    )
    logits = model.forward(expanded, run, flat)  # [b·K, S, V]
    return CandidateForward(logits.unflatten(0, (b, k)), plan, kv)
