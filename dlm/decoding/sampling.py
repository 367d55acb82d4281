"""Dream / Fast-dLLM v2 / SDAR style token sampling: temperature, top-p and top-k filtered distributions.

Dream's ``sample_tokens`` (Ye et al., 2025, "Dream 7B"), Fast-dLLM v2's ``sample_with_top_p`` (Wu et al.,
2025, arXiv 2509.26328) and SDAR's ``sample_with_temperature_topk_topp`` (Cheng et al., 2025, arXiv
2510.06303) all turn logits into a distribution ``p`` (divided by the temperature when it is
positive, then top-p / top-k filtered and renormalised), draw ``x0 ~ p`` (argmax at temperature 0) and use
``p(x0)`` (or a function of ``p``) as the confidence. Differences kept on purpose: computed in float64
(the references use the model dtype, bf16 on GPU), sampling by Gumbel-max from per-row streams
(:class:`dlm.rng.RowRNG`), and MASK is never drawn (it stays in the distribution, as in
:mod:`dlm.decoding.proposal`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.decoding.proposal import Spans, gumbel_noise
from dlm.rng import RowRNG


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of top tokens whose probability reaches ``top_p`` (the first always kept)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    drop = torch.zeros_like(remove).scatter_(-1, order, remove)
    return logits.masked_fill(drop, -torch.inf)


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Keep the ``top_k`` largest logits."""
    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -torch.inf)


def filtered_probs(logits: Tensor, *, temperature: float, top_p: float | None, top_k: int | None,
                   top_k_first: bool = False) -> Tensor:
    """float64 probabilities [b, W, V] after temperature (when > 0), top-p and top-k: top-p first as Dream's
    ``sample_tokens``, or top-k first (``top_k_first``) as SDAR's ``sample_with_temperature_topk_topp``; the
    order matters only when both filters are set."""
    x = logits.to(torch.float64)
    if temperature > 0:
        x = x / temperature
    if top_k_first and top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None and top_p < 1:
        x = top_p_filter(x, top_p)
    if not top_k_first and top_k is not None:
        x = top_k_filter(x, top_k)
    return torch.softmax(x, dim=-1)


def draw(
    probs: Tensor, *, mask_id: int, temperature: float, generator: RowRNG, rows: Tensor, spans: Spans | None = None
) -> tuple[Tensor, Tensor]:
    """Tokens [b, W] (argmax at temperature 0, else a draw from ``probs``; never MASK) and ``p(token)``; each
    row draws over its own columns ``spans`` (:func:`dlm.decoding.proposal.row_spans`)."""
    scores = probs.clamp(min=torch.finfo(torch.float64).tiny).log()
    scores = scores.masked_fill(probs == 0, -torch.inf)
    if temperature > 0:
        scores = scores + gumbel_noise(rows, tuple(probs.shape[1:]), generator, spans)
    scores[..., mask_id] = -torch.inf
    tokens = scores.argmax(dim=-1)
    return tokens, probs.gather(-1, tokens[..., None])[..., 0]
