"""``freedave``: lossless draft-and-verify decoding (FreeDave: Wu et al., 2025, arXiv 2510.00294;
github.com/cychomatica/FreeDave).

The static rule it accelerates commits, each step, the ``tokens_per_step`` (n) most confident masked
positions of the window. From the predictions at a canvas ``x``, draft ``k`` commits the top ``n·(k+1)``
positions of ``x`` (k = 0 … K−1, K = ``drafts``); one forward evaluates every draft (a candidate step,
:class:`~dlm.messages.Candidates`), and each draft's own logits give its *target*: one more static step from
it. Starting from draft 0, the chain moves to the furthest draft that agrees with the current draft's target
(its committed tokens all appear in that target); the last draft reached is exactly the static rule's canvas
after as many steps, so the output is token for token the static rule's with fewer forwards (at most one per
``n`` tokens, at best one per ``K·n``).

In dlm's loop every forward ends in a commit, so a step commits the reached draft's *target* (its
predictions are in hand) and remembers the reached draft's predictions: the next step's draft 0 is the
canvas as it now is. A block's first step has no predictions yet: a plain forward and one static step.
Greedy only (the lossless claim is for argmax decoding). The remembered predictions are run memory on the
state (:class:`FreeDaveMemory`), per batch row, and count only in the block they were made in (each row's own).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose, top_k_select
from dlm.memory import RowMemory, column_field
from dlm.messages import Candidates, Commit, Keep, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


def furthest_agreeing(drafts: Tensor, draft_tokens: Tensor, targets: Tensor, target_tokens: Tensor) -> Tensor:
    """[b] long: the draft the verification chain reaches. drafts/targets [b, K, W] bool (positions each
    commits beyond the canvas), tokens [b, K, W]. Draft j agrees with target i when every position draft j
    commits is committed by target i with the same token; from 0 the chain moves to the largest agreeing
    j > current until none."""
    b, k, _ = drafts.shape
    same = targets[:, :, None] & (target_tokens[:, :, None] == draft_tokens[:, None, :])  # [b, i, j, W]
    agree = (~drafts[:, None, :] | same).all(dim=-1)  # [b, i, j]
    agree &= torch.ones(k, k, dtype=torch.bool, device=agree.device).triu(diagonal=1)
    index = torch.arange(k, device=agree.device).expand(b, k)
    best = torch.zeros(b, dtype=torch.long, device=agree.device)
    for _ in range(k - 1):
        row = agree[torch.arange(b, device=agree.device), best]  # [b, K]: drafts agreeing with target best
        best = torch.maximum(best, torch.where(row, index, -1).max(dim=1).values)
    return best


class FreeDaveConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens_per_step: int = Field(1, ge=1, description="n: tokens the static rule commits per step")
    drafts: int = Field(4, ge=1, description="K: drafts evaluated in one forward (1 = the static rule itself)")


@dataclass
class FreeDaveMemory(RowMemory):
    """Per batch row: the predictions of the last draft the row reached, and the block they were made in."""

    movable = True  # the predictions are by canvas column and follow the canvas growing or shrinking

    tokens: Tensor = column_field()  # [B, L] long: proposals of the last reached draft, by canvas column
    confidence: Tensor = column_field()  # [B, L] float64: their confidence
    block: Tensor = field(default=None)  # [B] long (host): the block they were made in (-1: none yet)


class FreeDave(DecodingStrategy):
    Config = FreeDaveConfig
    joinable = True
    provides = frozenset({"candidate_steps"})

    def start(self, state: GenerationState) -> FreeDaveMemory:
        return FreeDaveMemory(tokens=torch.zeros_like(state.canvas),
                              confidence=torch.zeros(state.canvas.shape, dtype=torch.float64, device=state.device),
                              block=torch.full((state.batch_size,), -1, dtype=torch.long))

    def _known(self, state: GenerationState, window: Window) -> Tensor:
        """[b] bool (host): rows holding predictions made in their current block."""
        return self.memory(state).block[window.rows.cpu()] == window.block

    def prepare(self, state: GenerationState, window: Window) -> Window:
        known = self._known(state, window)
        if self.config.drafts == 1 or not bool(known.any()):
            return window
        n = self.config.tokens_per_step
        needed = int(((window.eligible.sum(dim=1) + n - 1) // n).max()) + 1  # drafts past that repeat the last
        k = min(self.config.drafts, needed)
        if k == 1:
            return window
        m: FreeDaveMemory = self.memory(state)
        cols = slice(window.start, window.end)
        conf, tokens = m.confidence[window.rows, cols], m.tokens[window.rows, cols]  # [b, W]
        known = known.to(conf.device)
        eligible = window.eligible & known[:, None]
        select = torch.stack([top_k_select(conf, eligible, torch.full_like(known, n * j, dtype=torch.long))
                              for j in range(k)], dim=1)  # [b, K, W]
        return window.extend(Candidates(select, tokens[:, None].expand(-1, k, -1)))

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        n = self.config.tokens_per_step
        cand = window.get(Candidates)
        if cand is None:
            logits = logits[:, None]  # [b, 1, W, V]: the canvas as the only draft
            drafts = torch.zeros_like(window.eligible)[:, None]
            draft_tokens = torch.zeros_like(drafts, dtype=torch.long)
        else:
            drafts, draft_tokens = cand.select, cand.tokens
        b, k = drafts.shape[:2]
        tokens, confidence = propose(logits.flatten(0, 1), mask_id=window.mask_id, temperature=0.0,
                                     generator=generator, rows=window.rows.repeat_interleave(k))
        tokens, confidence = tokens.unflatten(0, (b, k)), confidence.unflatten(0, (b, k))  # [b, K, W]
        rest = (window.eligible[:, None] & ~drafts).flatten(0, 1)
        step = top_k_select(confidence.flatten(0, 1), rest, torch.full((b * k,), n, device=rest.device))
        targets = drafts | step.unflatten(0, (b, k))
        target_tokens = torch.where(drafts, draft_tokens, tokens)
        best = furthest_agreeing(drafts, draft_tokens, targets, target_tokens)
        best = torch.where(self._known(state, window).to(best.device), best, 0)
        pick = torch.arange(b, device=best.device), best
        m: FreeDaveMemory = self.memory(state)
        cols = slice(window.start, window.end)
        m.tokens[window.rows, cols] = tokens[pick]
        m.confidence[window.rows, cols] = confidence[pick]
        m.block[window.rows.cpu()] = window.block
        commit = Commit(targets[pick], target_tokens[pick])
        return commit if cand is None else commit.extend(Keep(best))
