"""``eb_sampler``: entropy-bounded unmasking, the EB-Sampler of Ben-Hamu et al. (2025).

Ben-Hamu, Gat, Severo, Nolte, Karrer, "Accelerated Sampling from Masked Diffusion Models via Entropy
Bounded Unmasking", arXiv:2505.24857. Rule implemented (the paper's version, with the "− max" term):
rank the eligible positions by an error proxy (confidence of the proposed token, highest first; or
entropy, lowest first) and commit the longest prefix ``U`` of that ranking with

    Σ_{i∈U} H_i − max_{i∈U} H_i ≤ γ,

``H_i`` being the entropy (nats) of position i's predicted distribution. The left side never decreases
along the ranking, so the prefix is well defined, and the first position always passes (its value is 0):
every row with an eligible position commits at least one token. γ = 0 commits one token per step (up to
zero-entropy ties); a large γ commits the whole window. The schedule's quota is ignored.

Published variants we do not follow (peers.md §2.8): SGLang's ``EBSampling`` bounds the entropy of the
*previously* chosen tokens; SDAR's ``entropy_bounded`` drops the "− max" term.

Entropy and confidence come from the float64 softmax of the un-noised logits over the whole vocabulary
(MASK included, as for the confidence of the built-in strategies); tokens are proposed as by the built-ins
(argmax, or Gumbel-max with ``temperature`` > 0), never MASK.

Plugin API 2.0 (dlm CHANGELOG.md): ``select(state, window, logits, generator)``, messages from
:mod:`dlm.messages`; the sampler keeps no run memory and each row draws its noise over its own window, so it
declares ``joinable``: rows may join a running generation and still give what they give alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding import DecodingStrategy, RowRNG, draw_spans, propose
from dlm.messages import Commit, Window
from dlm.state import GenerationState


class EBSamplerConfig(BaseModel):
    """``decoding:`` section for ``name: eb_sampler``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gamma: float = Field(0.1, ge=0.0, description="entropy budget γ in nats: Σ H − max H of the commit set ≤ γ")
    order: Literal["confidence", "entropy"] = Field(
        "confidence", description="error proxy ranking the positions: highest confidence or lowest entropy first"
    )
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


def token_entropy(logits: Tensor) -> Tensor:
    """[b, W] float64 entropy (nats) of softmax(logits) over the last dim; -inf logits contribute 0."""
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    return torch.special.entr(probs).sum(dim=-1)


def eb_select(score: Tensor, entropy: Tensor, eligible: Tensor, gamma: float) -> Tensor:
    """[b, W] bool: the longest prefix of the ``score`` ranking (highest first) of eligible positions
    whose entropies satisfy Σ H − max H ≤ ``gamma``."""
    score = score.to(torch.float64).masked_fill(~eligible, -torch.inf)
    order = score.argsort(dim=1, descending=True, stable=True)  # eligible first, best first
    h = entropy.gather(1, order).masked_fill(~eligible.gather(1, order), 0.0)  # [b, W] in rank order
    excess = h.cumsum(dim=1) - h.cummax(dim=1).values  # Σ H − max H of each prefix, non-decreasing
    ranks = torch.arange(score.shape[1], device=score.device)[None, :]
    within = (excess <= gamma) & (ranks < eligible.sum(dim=1, keepdim=True))
    n = within.sum(dim=1, keepdim=True)  # prefix length; ≥ 1 wherever a position is eligible
    select = torch.zeros_like(eligible)
    select.scatter_(1, order, ranks < n)
    return select & eligible


class EBSampler(DecodingStrategy):
    """Commit the most reliable positions while their summed entropy, minus the largest, stays ≤ γ."""

    Config = EBSamplerConfig
    joinable = True  # no run memory; each row draws over its own window (draw_spans)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(
            logits, mask_id=window.mask_id, temperature=self.config.temperature, generator=generator,
            rows=window.rows, spans=draw_spans(window, self.config.temperature),
        )
        entropy = token_entropy(logits)
        score = confidence if self.config.order == "confidence" else -entropy
        return Commit(eb_select(score, entropy, window.eligible, self.config.gamma), tokens)
