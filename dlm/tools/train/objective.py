"""The LLaDA supervised fine-tuning objective (Nie et al., "Large Language Diffusion Models", 2025, Eq. 5).

The prompt stays clean; each answer token (EOS padding included, so the model learns where answers end)
is replaced by MASK independently with probability t ~ U(eps, 1), one t per sequence; the loss is the
cross-entropy on masked tokens weighted by 1/t, summed and divided by the number of answer tokens.

The noise levels of a batch are drawn low-discrepancy (stratified): u_i = (u + i/B) mod 1 for one
u ~ U(0, 1), mapped to t in [eps, 1) or to a mask count k in 1..A. Each u_i is still U(0, 1), so the loss
is the same unbiased estimate, with less variance across batches (the sampler of Kingma et al.,
"Variational Diffusion Models", 2021, used for masked diffusion by Sahoo et al., "MDLM", 2024).

Two estimators of that loss (``masking``):

* ``"bernoulli"``: Eq. 5 literally, each answer token masked with probability t, weight 1/t;
* ``"count"`` (default): a row masks exactly k tokens, k uniform in 1..A (stratified over the batch), weight
  A/k. This is the same objective: integrating Eq. 5 over t gives the expectation over the number of
  masked tokens, the form LLaDA itself uses to evaluate likelihoods (Nie et al. 2025, Eq. 6) because it has
  lower variance (Ou et al., "Your Absorbing Discrete Diffusion Secretly Models the Conditional
  Distributions of Clean Data", 2024). The Bernoulli form draws rows where t is small but one token is
  masked anyway and weights it by 1/t (up to 1000): rare, large gradients, most likely why the demo
  recipe's runs varied from seed to seed (docs/demo.md); with exact counts no weight exceeds A.

Semi-autoregressive rows (``semi_ar``, the long model's recipe, docs/long.md): a share of the rows is masked
the way the ``blockwise`` sampler leaves a canvas mid-generation: the blocks before a chosen block clean,
k of its ``block_length`` columns masked (k uniform in 1..block_length), every later column masked; weight
A / (masked count), i.e. the mean cross-entropy over the masked tokens. This spends training on the states
the sampler visits, as block diffusion trains its blocks (Arriola et al., "Block Diffusion", 2025); it is a
reweighting toward those states, not an estimate of Eq. 5, so the default (``semi_ar = 0``) leaves it out.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.models.layers import Transformer
from dlm.tools.train.data import MASK_ID, Batch

Masking = Literal["count", "bernoulli"]
MASKINGS: tuple[str, ...] = get_args(Masking)


def check_masking(masking: str) -> None:
    """Raise a ValueError naming the known estimators unless ``masking`` is one of them."""
    if masking not in MASKINGS:
        raise ValueError(f"masking must be {' or '.join(map(repr, MASKINGS))}, not {masking!r}")


def mask_answers(
    batch: Batch, generator: torch.Generator, eps: float = 1e-3, masking: Masking = "count",
    semi_ar: float = 0.0, block_length: int = 16,
) -> tuple[Tensor, Tensor, Tensor]:
    """Noised ids [B, L], masked [B, A] bool (answer columns) and the loss weight's rate [B] for one
    forward-process draw: t for ``"bernoulli"``, masked count / A for ``"count"`` (weights are 1/rate either
    way). ``semi_ar``: share of the rows masked semi-autoregressively in blocks of ``block_length`` (count
    masking only; see the module docstring)."""
    answers = batch.ids[:, batch.answer_start :]  # [B, A]
    b, a = answers.shape
    check_masking(masking)
    if not 0.0 <= semi_ar <= 1.0 or (semi_ar > 0 and masking != "count"):
        raise ValueError(f"semi_ar must be in [0, 1] and needs masking='count' (got {semi_ar}, {masking!r})")
    u = (torch.rand(1, generator=generator) + torch.arange(b) / b) % 1.0  # stratified over the batch
    if masking == "count":
        k = 1 + (u * a).long().clamp(max=a - 1)  # [B] uniform in 1..A
        noise = torch.rand(b, a, generator=generator)  # [B, A] random order of columns
        rank = noise.argsort(dim=1).argsort(dim=1)
        masked = rank < k[:, None]  # exactly k masked per row
        if semi_ar > 0:
            masked = _semi_autoregressive(masked, u, noise, semi_ar, block_length)
        t = masked.sum(dim=1).to(torch.float32) / a
    else:  # "bernoulli"
        t = eps + (1 - eps) * u  # [B]
        masked = torch.rand(b, a, generator=generator) < t[:, None]  # [B, A]
    noised = batch.ids.clone()
    noised[:, batch.answer_start :] = torch.where(masked, MASK_ID, answers)
    return noised, masked, t


def _semi_autoregressive(masked: Tensor, u: Tensor, noise: Tensor, share: float, block_length: int) -> Tensor:
    """``masked`` [B, A] with a ``share`` of its rows (spread evenly over the stratified batch) replaced by a
    blockwise state: row noise level u picks the block and k in 1..block_length, later columns all masked."""
    b, a = masked.shape
    i = torch.arange(b)
    rows = torch.floor((i + 1) * share) > torch.floor(i * share)  # [B] e.g. every other row for 0.5
    blocks = -(-a // block_length)
    z = (u * blocks * block_length).long()  # [B] uniform over (block, k) pairs
    block, k = z // block_length, 1 + z % block_length
    cols = torch.arange(a)[None, :]  # [1, A]
    start, end = block[:, None] * block_length, torch.minimum((block[:, None] + 1) * block_length, torch.tensor(a))
    inside = (cols >= start) & (cols < end)  # [B, A] the current block
    rank = torch.where(inside, noise, 2.0).argsort(dim=1).argsort(dim=1)  # the block's columns ranked first
    k = torch.minimum(k[:, None], end - start)
    semi = (inside & (rank < k)) | (cols >= end)
    return torch.where(rows[:, None], semi, masked)


def sft_loss(
    net: Transformer, batch: Batch, generator: torch.Generator, eps: float = 1e-3, masking: Masking = "count",
    semi_ar: float = 0.0, block_length: int = 16,
) -> Tensor:
    """Monte-Carlo estimate of the LLaDA SFT loss on ``batch`` (a scalar tensor)."""
    noised, masked, t = mask_answers(batch, generator, eps, masking, semi_ar, block_length)
    logits = net(noised, batch.positions, batch.key_mask, logits_from=batch.answer_start)  # [B, A, V]
    target = batch.ids[:, batch.answer_start :]
    ce = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")  # [B, A]
    return (ce * masked / t[:, None]).sum() / target.numel()
