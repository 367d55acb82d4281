"""Token proposals and their confidence, and the selection rules the strategies share.

Follows LLaDA (Nie et al., 2025) and Fast-dLLM (Wu et al., 2025, arXiv 2505.22618): the proposal is the argmax of the logits, with
float64 Gumbel noise of scale ``temperature`` added when sampling (Gumbel-max draws from
softmax(logits / T)); the confidence is the float64 softmax probability of the proposed token under the
un-noised logits. Unlike the reference, MASK is never proposed: a proposed MASK would leave the position
masked and stall the loop (the MASK logit still counts in the softmax, so confidences are unchanged).

**Rows at different places.** Rows of one step may be at different blocks (per-row geometry); the window
is then the union of the rows' own windows (:func:`row_spans`). A row draws its random numbers (Gumbel noise,
random scores) over its own window only, with the shape it has alone, so it draws what it draws alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.messages import ThresholdFloor, Window
from dlm.models.planned import dense
from dlm.rng import RowRNG

Spans = tuple[Tensor, Tensor]


def row_spans(window: Window) -> Spans:
    """Each window row's own columns ``[lo, hi)``, counted from the window's start ([b] host long each).

    When every row's block spans the same columns, every row's own window is the whole window (what one row
    alone gets). Otherwise (rows at different blocks, the window being their union) a row's own window is its
    block's columns inside the window (``Window.geometry``): the columns it has alone with ``blockwise``, and
    with Dream's managers, whose cached windows start one column into the block.
    """
    g, width = window.geometry, window.width
    b = len(g.block_start)
    if b == 0 or (bool((g.block_start == g.block_start[0]).all()) and bool((g.block_end == g.block_end[0]).all())):
        return torch.zeros(b, dtype=torch.long), torch.full((b,), width, dtype=torch.long)
    lo = (g.block_start - window.start).clamp(0, width)
    return lo, torch.maximum((g.block_end - window.start).clamp(0, width), lo)


def draw_spans(window: Window, temperature: float) -> Spans | None:
    """The rows' own columns (:func:`row_spans`) for proposals drawn at ``temperature``; None when greedy (no
    draws, so nothing to read)."""
    return row_spans(window) if temperature > 0 else None


def _whole(spans: Spans | None, width: int) -> bool:
    return spans is None or (not bool(spans[0].any()) and bool((spans[1] == width).all()))


def row_rand(generator: RowRNG, rows: Tensor, shape: tuple[int, ...], spans: Spans | None = None,
             dtype: torch.dtype = torch.float64) -> Tensor:
    """Uniform [0, 1) draws [len(rows), *shape] (``shape[0]`` the window's columns): row ``i`` draws only its
    own columns ``spans`` (:func:`row_spans`; None: the whole window), as it draws alone; 0 elsewhere."""
    if _whole(spans, shape[0]):
        return generator.rand(rows, shape, dtype)
    lo, hi = spans
    out = torch.zeros((len(rows), *shape), dtype=dtype, device=generator.device)
    for i, (a, z) in enumerate(zip(lo.tolist(), hi.tolist())):
        out[i, a:z] = generator.rand(rows[i : i + 1], (z - a, *shape[1:]), dtype)[0]
    return out


def gumbel_noise(rows: Tensor, shape: tuple[int, ...], rng: RowRNG, spans: Spans | None = None) -> Tensor:
    """Standard Gumbel noise in float64, ``-log(-log U)`` with U ~ Uniform(0, 1): [len(rows), *shape] (each
    row drawing over its own ``spans`` of ``shape[0]``, see :func:`row_rand`)."""
    u = row_rand(rng, rows, shape, spans)
    return -torch.log(-torch.log(u.clamp_(min=torch.finfo(torch.float64).tiny)))


def propose(
    logits: Tensor, *, mask_id: int, temperature: float, generator: RowRNG, rows: Tensor, spans: Spans | None = None,
    read: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Proposed tokens [b, W] and their float64 confidence [b, W] from logits [b, W, V] of ``rows``; with
    ``temperature > 0`` each row draws its noise over its own columns ``spans`` (:func:`row_spans`).

    ``read`` ([b, W] bool, e.g. the window's eligible positions): only those proposals are used. A greedy proposal
    on a CPU is then made at those positions only (:func:`propose_at`); the others get MASK and confidence 0.
    Sampling draws over the whole window whatever ``read`` says (the draws are what they are without it)."""
    if read is not None and temperature == 0 and logits.device.type == "cpu":
        return propose_at(logits, read, mask_id)
    logits64 = logits.to(torch.float64)
    if temperature == 0:
        # argmax in the logits' own dtype: widening to float64 is exact and keeps the order (and the ties), so
        # the tokens are those of the float64 scores at half the memory traffic
        scores = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), -torch.inf)
    else:
        scores = logits64 + temperature * gumbel_noise(rows, tuple(logits64.shape[1:]), generator, spans)
        scores[..., mask_id] = -torch.inf
    tokens = scores.argmax(dim=-1)  # [b, W]
    log_z = torch.logsumexp(logits64, dim=-1)  # [b, W]
    confidence = torch.exp(logits64.gather(-1, tokens[..., None])[..., 0] - log_z)
    return tokens, confidence


def propose_at(logits: Tensor, read: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """A greedy :func:`propose` at the ``read`` positions ([b, W] bool) only: each row's read positions first,
    padded with unread ones to the largest count, go through :func:`propose` (every quantity there is per position,
    so theirs are the values the whole window's proposal gives them), then back to their places. Unread positions get
    MASK and confidence 0. A step with one token per step reads about half its block, so the float64 softmax and the
    argmax run on half the logits. Reads the count on the host: CPU only (a GPU step stays sync-free)."""
    b, width = read.shape
    n = int(read.sum(dim=1).max()) if b else 0  # the step's host read
    at, _ = dense(read, n)  # [b, n]: each row's read positions first
    if n >= width:  # some row reads every position: one proposal over the window
        tokens, confidence = propose(logits, mask_id=mask_id, temperature=0.0, generator=None, rows=None)
    else:
        rows = (at + torch.arange(b, device=at.device)[:, None] * width).reshape(-1)  # whole rows of the logits
        picked = logits.reshape(b * width, logits.shape[-1]).index_select(0, rows).view(b, n, logits.shape[-1])
        t, c = propose(picked, mask_id=mask_id, temperature=0.0, generator=None, rows=None)
        tokens = torch.full((b, width), mask_id, dtype=torch.long, device=logits.device).scatter_(1, at, t)
        confidence = torch.zeros((b, width), dtype=torch.float64, device=logits.device).scatter_(1, at, c)
    return tokens.masked_fill(~read, mask_id), confidence.masked_fill(~read, 0.0)  # incl. a short row's padding


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


def step_threshold(window: Window, tau: float, device: torch.device) -> float | Tensor:
    """The threshold of this step: ``tau``, or, where the window carries a :class:`~dlm.messages.ThresholdFloor`,
    each row's ``max(floor, tau)`` as a [b, 1] float64 tensor on ``device`` (dInfer's ``iter_threshold``)."""
    floor = window.get(ThresholdFloor)
    if floor is None:
        return tau
    return torch.clamp(floor.value.to(device=device, dtype=torch.float64), min=tau)[:, None]


def threshold_select(confidence: Tensor, eligible: Tensor, tau: float | Tensor, *, strict: bool = False) -> Tensor:
    """[b, W] bool: eligible positions with confidence ≥ ``tau`` (a float, or per row [b, 1]; ``> tau`` when
    ``strict``), plus each row's most confident eligible position, so every row with an eligible position commits
    at least one.

    Fast-dLLM's rule is ``≥`` (``threshold``); Fast-dLLM v2's and Dream's are strict (``strict_threshold``).
    The first maximum wins a tie for the always-committed position, as ``argmax`` does.
    """
    score = confidence.masked_fill(~eligible, -torch.inf)
    select = eligible & ((confidence > tau) if strict else (confidence >= tau))
    best = score.argmax(dim=1)
    select[torch.arange(len(best), device=best.device), best] = True
    return select & eligible
