"""Token proposals and their confidence, and the selection rules the strategies share.

Follows LLaDA (Nie et al., 2025) and Fast-dLLM (Wu et al., 2025, arXiv 2505.22618): the proposal is the argmax of the logits, with
float64 Gumbel noise of scale ``temperature`` added when sampling (Gumbel-max draws from
softmax(logits / T)); the confidence is the float64 softmax probability of the proposed token under the
un-noised logits. Unlike the reference, MASK is never proposed: a proposed MASK would leave the position
masked and stall the loop (the MASK logit still counts in the softmax, so confidences are unchanged).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.rng import RowRNG


def gumbel_noise(rows: Tensor, shape: tuple[int, ...], rng: RowRNG) -> Tensor:
    """Standard Gumbel noise in float64, ``-log(-log U)`` with U ~ Uniform(0, 1): [len(rows), *shape]."""
    u = rng.rand(rows, shape)
    return -torch.log(-torch.log(u.clamp_(min=torch.finfo(torch.float64).tiny)))


def propose(
    logits: Tensor, *, mask_id: int, temperature: float, generator: RowRNG, rows: Tensor
) -> tuple[Tensor, Tensor]:
    """Proposed tokens [b, W] and their float64 confidence [b, W] from logits [b, W, V] of ``rows``."""
    logits64 = logits.to(torch.float64)
    if temperature == 0:
        # argmax in the logits' own dtype: widening to float64 is exact and keeps the order (and the ties), so
        # the tokens are those of the float64 scores at half the memory traffic
        scores = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), -torch.inf)
    else:
        scores = logits64 + temperature * gumbel_noise(rows, tuple(logits64.shape[1:]), generator)
        scores[..., mask_id] = -torch.inf
    tokens = scores.argmax(dim=-1)  # [b, W]
    log_z = torch.logsumexp(logits64, dim=-1)  # [b, W]
    confidence = torch.exp(logits64.gather(-1, tokens[..., None])[..., 0] - log_z)
    return tokens, confidence


def top_k_select(score: Tensor, eligible: Tensor, k: Tensor) -> Tensor:
    """[b, W] bool: the ``k[r]`` highest-``score`` eligible positions of each row (at most all eligible)."""
    score = score.masked_fill(~eligible, -torch.inf)
    k = torch.minimum(k, eligible.sum(dim=1))
    k_max = int(k.max()) if k.numel() else 0
    select = torch.zeros_like(eligible)
    if k_max == 0:
        return select
    idx = score.topk(k_max, dim=1).indices  # [b, k_max]
    ranks = torch.arange(k_max, device=score.device)[None, :]
    select.scatter_(1, idx, ranks < k[:, None])
    return select & eligible


def threshold_select(confidence: Tensor, eligible: Tensor, tau: float, *, strict: bool = False) -> Tensor:
    """[b, W] bool: eligible positions with confidence ≥ ``tau`` (``> tau`` when ``strict``), plus each row's
    most confident eligible position, so every row with an eligible position commits at least one.

    Fast-dLLM's rule is ``≥`` (``threshold``); Fast-dLLM v2's and Dream's are strict (``strict_threshold``).
    The first maximum wins a tie for the always-committed position, as ``argmax`` does.
    """
    score = confidence.masked_fill(~eligible, -torch.inf)
    select = eligible & ((confidence > tau) if strict else (confidence >= tau))
    best = score.argmax(dim=1)
    select[torch.arange(len(best), device=best.device), best] = True
    return select & eligible
