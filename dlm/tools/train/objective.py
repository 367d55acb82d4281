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
    batch: Batch, generator: torch.Generator, eps: float = 1e-3, masking: Masking = "count"
) -> tuple[Tensor, Tensor, Tensor]:
    """Noised ids [B, L], masked [B, A] bool (answer columns) and the loss weight's rate [B] for one
    forward-process draw: t for ``"bernoulli"``, k/A for ``"count"`` (weights are 1/rate either way)."""
    answers = batch.ids[:, batch.answer_start :]  # [B, A]
    b, a = answers.shape
    check_masking(masking)
    u = (torch.rand(1, generator=generator) + torch.arange(b) / b) % 1.0  # stratified over the batch
    if masking == "count":
        k = 1 + (u * a).long().clamp(max=a - 1)  # [B] uniform in 1..A
        rank = torch.rand(b, a, generator=generator).argsort(dim=1).argsort(dim=1)  # random order of columns
        masked = rank < k[:, None]  # exactly k masked per row
        t = k.to(torch.float32) / a
    else:  # "bernoulli"
        t = eps + (1 - eps) * u  # [B]
        masked = torch.rand(b, a, generator=generator) < t[:, None]  # [B, A]
    noised = batch.ids.clone()
    noised[:, batch.answer_start :] = torch.where(masked, MASK_ID, answers)
    return noised, masked, t


def sft_loss(
    net: Transformer, batch: Batch, generator: torch.Generator, eps: float = 1e-3, masking: Masking = "count"
) -> Tensor:
    """Monte-Carlo estimate of the LLaDA SFT loss on ``batch`` (a scalar tensor)."""
    noised, masked, t = mask_answers(batch, generator, eps, masking)
    logits = net(noised, batch.positions, batch.key_mask, logits_from=batch.answer_start)  # [B, A, V]
    target = batch.ids[:, batch.answer_start :]
    ce = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")  # [B, A]
    return (ce * masked / t[:, None]).sum() / target.numel()
