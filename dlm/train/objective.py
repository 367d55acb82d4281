"""The LLaDA supervised fine-tuning objective (Nie et al., "Large Language Diffusion Models", 2025, Eq. 5).

The prompt stays clean; each answer token (EOS padding included, so the model learns where answers end)
is replaced by MASK independently with probability t ~ U(eps, 1), one t per sequence; the loss is the
cross-entropy on masked tokens weighted by 1/t, summed and divided by the number of answer tokens.

The t of a batch are drawn low-discrepancy (stratified): t_i = (u + i/B) mod 1 for one u ~ U(0, 1), mapped
into [eps, 1). Each t_i is still U(eps, 1), so the loss is the same unbiased estimate, with less variance
across batches (the sampler of Kingma et al., "Variational Diffusion Models", 2021, used for masked
diffusion by Sahoo et al., "MDLM", 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.models.layers import Transformer
from dlm.train.data import MASK_ID, Batch


def mask_answers(batch: Batch, generator: torch.Generator, eps: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """Noised ids [B, L], masked [B, A] bool (answer columns) and t [B] for one forward-process draw."""
    answers = batch.ids[:, batch.answer_start :]  # [B, A]
    b, a = answers.shape
    u = (torch.rand(1, generator=generator) + torch.arange(b) / b) % 1.0  # stratified over the batch
    t = eps + (1 - eps) * u  # [B]
    masked = torch.rand(b, a, generator=generator) < t[:, None]  # [B, A]
    noised = batch.ids.clone()
    noised[:, batch.answer_start :] = torch.where(masked, MASK_ID, answers)
    return noised, masked, t


def sft_loss(net: Transformer, batch: Batch, generator: torch.Generator, eps: float = 1e-3) -> Tensor:
    """Monte-Carlo estimate of the LLaDA SFT loss on ``batch`` (a scalar tensor)."""
    noised, masked, t = mask_answers(batch, generator, eps)
    logits = net(noised, batch.positions, batch.key_mask, logits_from=batch.answer_start)  # [B, A, V]
    target = batch.ids[:, batch.answer_start :]
    ce = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")  # [B, A]
    return (ce * masked / t[:, None]).sum() / target.numel()
