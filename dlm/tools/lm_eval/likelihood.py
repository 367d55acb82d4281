"""Log-likelihood of a continuation under a diffusion LM: Monte-Carlo estimates and the greedy check.

A masked diffusion LM gives no exact ``log p(target | prompt)``; what it gives cheaply is the diffusion
bound (ELBO), ``-log p >= E[ weight * sum of cross-entropies at masked target positions ]``, which the
LLaDA and Dream evaluations estimate by Monte Carlo and report as the log-likelihood:

* **LLaDA** (Nie et al. 2025, "Large Language Diffusion Models", Eq. 6; Ou et al. 2024): draw ``k`` uniform
  in ``1..T``, mask ``k`` of the ``T`` target positions uniformly, weight the masked cross-entropy by ``T/k``.
  The ``b`` rows of a batch use stratified counts ``k_i = ((k + floor(i*T/b) - 1) mod T) + 1``, each still
  uniform in ``1..T``, so the estimate stays unbiased and varies less.
* **Dream** (Ye et al. 2025, Dream 7B; its lm-eval harness): each target token is masked independently with
  ``p = (1 - eps) t + eps``, ``t`` stratified over the batch (``t_i = (u + i/b) mod 1``, Kingma et al. 2021),
  the masked cross-entropy weighted by ``1/p``. Used for models whose logits are shifted (``logit_shift = 1``),
  as Dream's evaluation is. Unlike Dream's harness no EOS is appended to the target: the continuation lm-eval
  asks about is scored, nothing else.

The prompt is never masked. Both estimates are means over ``mc_num`` rows run ``batch`` rows per forward.
``is_greedy`` follows LLaDA's evaluation: decode the target region one token per step, committing the most
confident masked position each time (low-confidence remasking), and compare with the target.

Forwards go through the model adapter's own ``forward`` with a no-cache plan over the full canvas, so every
adapter (logit shift, block-causal attention) is served by the code that serves generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dlm.messages import ForwardPlan
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo negative log-likelihood and the forwards it took."""

    nll: float
    forwards: int


def window_logits(model: ModelAdapter, canvas: Tensor, prompt_length: int) -> Tensor:
    """Logits [b, T, V] of the target columns ``[prompt_length, L)`` of full canvases [b, L] (no cache)."""
    b, length = canvas.shape
    device = canvas.device
    caps = model.capabilities
    rows = torch.arange(b, device=device)
    state = GenerationState(
        canvas=canvas,
        pad=torch.zeros(b, dtype=torch.long, device=device),
        prompt_lengths=torch.full((b,), prompt_length, dtype=torch.long, device=device),
        gen_start=prompt_length,
        gen_length=length - prompt_length,
        mask_id=caps.mask_id,
        eos_ids=caps.eos_ids,
        nfe=torch.zeros(b, dtype=torch.long, device=device),
        done=torch.zeros(b, dtype=torch.bool, device=device),
    )
    plan = ForwardPlan(rows=rows, all_rows=True, start=0, end=length, kv=None, key_end=length, refresh=False,
                       logits_start=prompt_length, logits_end=length)
    return model.forward(state, plan)


def target_logprobs(model: ModelAdapter, prompt: Tensor, noisy: Tensor, target: Tensor) -> Tensor:
    """log p(target token) [b, T] at every target position, given the prompt [P] and noisy targets [b, T]."""
    b = noisy.shape[0]
    canvas = torch.cat([prompt.expand(b, -1), noisy], dim=1)  # [b, P + T]
    logits = window_logits(model, canvas, prompt.numel())
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    logp = logits.log_softmax(dim=-1)  # [b, T, V]
    return logp.gather(-1, target.expand(b, -1)[..., None])[..., 0]


def llada_counts(k: int, b: int, length: int) -> Tensor:
    """Stratified mask counts [b] in ``1..length`` starting from ``k`` (LLaDA's evaluation)."""
    offsets = torch.arange(b) * length // b  # floor; LLaDA's code rounds half to even, which repeats some counts
    return (k - 1 + offsets) % length + 1


@torch.inference_mode()
def llada_nll(
    model: ModelAdapter, prompt: Tensor, target: Tensor, *, mc_num: int, batch: int, generator: torch.Generator
) -> Estimate:
    """LLaDA's estimate of ``-log p(target | prompt)``: k ~ U{1..T} masked positions, weight T/k."""
    length, device = target.numel(), target.device
    total, forwards = 0.0, 0
    for start in range(0, mc_num, batch):
        b = min(batch, mc_num - start)
        k = int(torch.randint(1, length + 1, (1,), generator=generator, device=device))
        counts = llada_counts(k, b, length).to(device)  # [b]
        scores = torch.rand(b, length, generator=generator, device=device)
        ranks = scores.argsort(dim=1).argsort(dim=1)  # uniform random order of the target positions
        masked = ranks < counts[:, None]  # [b, T]: exactly counts[i] positions per row
        noisy = torch.where(masked, model.capabilities.mask_id, target.expand(b, -1))
        logp = target_logprobs(model, prompt, noisy, target)  # [b, T]
        per_row = -(logp * masked).sum(dim=1) * length / counts  # [b]
        total += float(per_row.sum())
        forwards += 1
    return Estimate(total / mc_num, forwards)


@torch.inference_mode()
def dream_nll(
    model: ModelAdapter,
    prompt: Tensor,
    target: Tensor,
    *,
    mc_num: int,
    batch: int,
    generator: torch.Generator,
    eps: float = 1e-3,
) -> Estimate:
    """Dream's estimate of ``-log p(target | prompt)``: tokens masked i.i.d. with p(t), weight 1/p."""
    length, device = target.numel(), target.device
    total, forwards = 0.0, 0
    for start in range(0, mc_num, batch):
        b = min(batch, mc_num - start)
        u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        t = (u + torch.arange(b, device=device, dtype=torch.float64) / b) % 1.0
        p = (1.0 - eps) * t + eps  # [b]
        masked = torch.rand(b, length, generator=generator, device=device, dtype=torch.float64) < p[:, None]
        if bool(masked.any()):
            noisy = torch.where(masked, model.capabilities.mask_id, target.expand(b, -1))
            logp = target_logprobs(model, prompt, noisy, target).double()  # [b, T]
            total += float((-(logp * masked).sum(dim=1) / p).sum())
            forwards += 1
    return Estimate(total / mc_num, forwards)


@torch.inference_mode()
def greedy_matches(model: ModelAdapter, prompt: Tensor, target: Tensor) -> tuple[bool, int]:
    """Whether one-token-per-step low-confidence decoding of ``len(target)`` tokens gives ``target``.

    Returns (match, forwards). A committed token is never revised, so decoding stops at the first wrong one.
    """
    mask_id = model.capabilities.mask_id
    length, p = target.numel(), prompt.numel()
    canvas = torch.cat([prompt, torch.full_like(target, mask_id)])[None]  # [1, P + T]
    for step in range(length):
        logits = window_logits(model, canvas, p)[0].float()  # [T, V]
        logits[:, mask_id] = -torch.inf  # MASK is never a proposal
        confidence, tokens = logits.softmax(dim=-1).max(dim=-1)  # [T]
        confidence = torch.where(canvas[0, p:] == mask_id, confidence, -torch.inf)
        j = int(confidence.argmax())
        if int(tokens[j]) != int(target[j]):
            return False, step + 1
        canvas[0, p + j] = tokens[j]
    return True, length
