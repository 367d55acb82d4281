"""``dream``: Dream's confidence-ranked remasking (Ye et al., 2025, "Dream 7B", ``diffusion_generate``).

Each step commits the ``window.quota`` eligible positions (the iteration manager's schedule, e.g. ``dream``'s
``int(m · (1 − s/t))``) ranked by one of Dream's confidence kinds (``alg``):

- ``maskgit_plus``: probability of the drawn token (top-1 probability at temperature 0);
- ``topk_margin``: top-1 minus top-2 probability;
- ``entropy``: negative entropy ``Σ p log p`` of the position's distribution;
- ``origin``: Dream's random-order variant, no confidence: positions are chosen at random.

With ``alg_temp > 0`` positions are drawn without replacement from ``softmax(confidence / alg_temp)``
(Gumbel-top-k) instead of taken greedily. Tokens come from :func:`dlm.decoding.sampling.filtered_probs`
(temperature, top-p, top-k, as Dream's ``sample_tokens``).

Difference from the reference in ``origin``: Dream commits each masked position independently with
probability ``1 − s/t``, which can commit nothing in a step; here exactly ``quota`` (its floor, at least 1)
uniformly random positions are committed, so every step makes progress (the loop contract).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import gumbel_noise, row_rand, row_spans, top_k_select
from dlm.decoding.sampling import draw, filtered_probs
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.messages import Commit, Window


class DreamDecodingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alg: Literal["maskgit_plus", "topk_margin", "entropy", "origin"] = Field(
        "entropy", description="confidence used to rank positions (Dream's alg)"
    )
    alg_temp: float = Field(0.0, ge=0.0, description="> 0: draw positions from softmax(confidence / alg_temp)")
    temperature: float = Field(0.0, ge=0.0, description="token sampling temperature; 0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus filter of the token distribution")
    top_k: int | None = Field(None, gt=0, description="top-k filter of the token distribution")


def dream_confidence(probs: Tensor, chosen: Tensor, alg: str) -> Tensor:
    """[b, W] confidence of kind ``alg`` from probabilities [b, W, V] and the drawn tokens' ``p``."""
    if alg == "maskgit_plus":
        return chosen
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if alg == "entropy":
        return (probs * torch.log(probs + 1e-10)).sum(dim=-1)
    raise ValueError(f"no confidence for alg {alg!r}")


class DreamDecoding(DecodingStrategy):
    Config = DreamDecodingConfig
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        probs = filtered_probs(logits, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k)
        draws = c.temperature > 0 or c.alg_temp > 0 or c.alg == "origin"
        spans = row_spans(window) if draws else None  # the rows' own columns, read only when something is drawn
        tokens, chosen = draw(probs, mask_id=window.mask_id, temperature=c.temperature, generator=generator,
                              rows=window.rows, spans=spans)
        quota = window.quota.clamp(min=1)
        if c.alg == "origin":
            score = row_rand(generator, window.rows, (window.width,), spans)
        else:
            score = dream_confidence(probs, chosen, c.alg)
            if c.alg_temp > 0:
                score = score / c.alg_temp + gumbel_noise(window.rows, (window.width,), generator, spans)
        return Commit(top_k_select(score, window.eligible, quota), tokens)
