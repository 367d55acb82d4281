"""Rejection recycling for Jacobi decoding (Hu et al., 2025, "Fast and Accurate Causal Parallel Decoding using
Jacobi Forcing", arXiv 2512.14681; hao-ai-lab/JacobiForcing, the n-gram pool of
``jacobi_forward_greedy_multiblock`` and ``_build_candidates``).

Each row keeps a pool of the last ``pool_size`` n-grams: whenever a forward rejects part of the row's draft,
the row's generated text with its new draft, then the rejected predictions (the new draft alone), enter the
pool. Before the next forward, every pool n-gram but the newest that contains the row's last committed token
proposes what follows its first occurrence as the start of the next draft (the regular draft fills the rest).
The regular draft and these candidates are verified in one forward (a candidate step,
:class:`~dlm.messages.Candidates`); the candidate with the longest acceptance is kept, the regular one on ties.
Acceptance never changes what is committed, only how much: the output stays the greedy one.

The pools are run memory on the state (:class:`RecyclingPools`, one pool per batch row), so rows that join a
running generation bring their own (empty) pools and rows that leave take theirs away.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from dlm.memory import RowMemory
from dlm.messages import Candidates, Commit, Drafts, Window
from dlm.state import GenerationState


@dataclass
class RecyclingPools(RowMemory):
    """Per batch row: its n-gram pool (token lists, newest last), and the candidates the pools propose."""

    movable = True  # tokens only, no canvas columns

    pools: list  # [B] deques of at most ``size`` n-grams

    @staticmethod
    def fresh(batch_size: int, size: int) -> "RecyclingPools":
        return RecyclingPools([deque(maxlen=size) for _ in range(batch_size)])

    def attach(self, state: GenerationState, window: Window) -> Window:
        """The window with the rows' recycled drafts attached as candidates (unchanged when there are none)."""
        current = state.canvas[window.rows, window.start : window.end]  # [b, W]
        proposals: list[list[list[int]]] = []
        for i, row in enumerate(window.rows.tolist()):
            cols = window.eligible[i].nonzero()[:, 0]  # eligible window columns of this row
            found: list[list[int]] = []
            if len(cols) and window.start + int(cols[0]) > 0:
                last = int(state.canvas[row, window.start + int(cols[0]) - 1])  # the last committed token
                draft = current[i, cols].tolist()
                for gram in reversed(list(self.pools[row])[:-1]):
                    if last in gram:
                        at = gram.index(last) + 1
                        cand = gram[at : at + len(cols)]
                        if cand and cand != draft[: len(cand)] and cand not in found:
                            found.append(cand)
            proposals.append(found)
        k = 1 + max(len(found) for found in proposals)
        if k == 1:
            return window
        b, w = current.shape
        select = torch.zeros(b, k, w, dtype=torch.bool, device=current.device)  # candidate 0: the regular draft
        tokens = current[:, None, :].repeat(1, k, 1)  # [b, K, W]
        for i, found in enumerate(proposals):
            cols = window.eligible[i].nonzero()[:, 0]
            for j, cand in enumerate(found, start=1):
                at = cols[: len(cand)]
                select[i, j, at] = True
                tokens[i, j, at] = torch.tensor(cand, dtype=tokens.dtype, device=tokens.device)
        return window.extend(Candidates(select, tokens))

    def record(self, state: GenerationState, window: Window, commit: Commit) -> None:
        """Before ``commit`` is written: rows whose draft was partly rejected add their text and new draft."""
        drafts = commit.get(Drafts)
        if drafts is None:
            return
        off = window.start - state.gen_start
        for i, row in enumerate(window.rows.tolist()):
            redrafted = drafts.mask[i]
            if not bool(redrafted.any()):
                continue
            text = state.canvas[row, state.gen_start : window.end].clone()  # the generated region before the commit
            written = window.eligible[i]
            text[off:] = torch.where(written, commit.tokens[i], text[off:])
            self.pools[row].append(text[text != window.mask_id].tolist())
            self.pools[row].append(commit.tokens[i, redrafted].tolist())
