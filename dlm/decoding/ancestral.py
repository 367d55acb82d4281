"""``ancestral``: MDLM's ancestral sampler under its log-linear noise schedule (Sahoo et al., 2024, "Simple and
Effective Masked Diffusion Language Models", arXiv 2406.07524, §3 and its ``ddpm_cache`` sampler), as
DiDi-Instruct samples its few-step students (Zheng et al., 2025, arXiv 2509.25035; ``algo.py``, ``sampling.predictor:
ancestral``, ``noise_removal: ancestral``).

Time runs from 1 down to ``eps`` over the schedule's ``T`` steps: ``t_k = linspace(1, eps, T + 1)[k]`` (float32,
as the references build it) and ``s = t_k − (1 − eps) / T``. The log-linear schedule keeps a token unmasked with
probability ``α_t = 1 − (1 − ε)·t`` (``noise_eps`` ε = 1e-3). One step draws every masked position of a row from

    q(token) = p_θ(token)·(α_s − α_t),   q(MASK) = 1 − α_s   (unnormalised),

``p_θ`` the model's distribution with MASK excluded (the SUBS parameterisation: MASK's logit −∞, normalised),
by Gumbel-max exactly as the references' ``_sample_categorical`` writes it, ``argmax(q / (1e-10 − log(u +
1e-10)))`` with ``u`` uniform over [the row's window columns, vocab]: a position unmasks with probability
``(α_s − α_t) / (1 − α_t)``, to a token drawn from ``p_θ``; MASK drawn means it stays masked. After the ``T``
steps the noise-removal step at ``t = eps`` fills every position left: ``ancestral`` (DiDi-Instruct: ``α_s = 1``,
a draw from ``p_θ``) or ``greedy`` (MDLM: the argmax of ``p_θ``, no draw). So a row takes at most ``T + 1``
forwards, and its draws are the reference's, one ``[columns, vocab]`` draw per time step from its own stream
(:mod:`dlm.rng`): a row equals the reference run alone on the same canvas with that seed.

**Reused logits (MDLM's ``ddpm_cache``).** A step that unmasks nothing leaves the canvas as it was, so a model
whose logits do not depend on the time (``time_conditioning: false``, the released MDLM and DiDi-Instruct
checkpoints) would give the next step the same logits: the row goes on drawing at the next times, within one
forward, until a draw unmasks something. The tokens are those of the sampler that runs a forward at every time
step (DiDi-Instruct's ``ancestral``, MDLM's ``ddpm``); only the wasted forwards go. A time-conditioned model
needs ``reuse_logits: false`` (refused otherwise): every time step then takes a forward at its own time, and a
row whose draw unmasks nothing idles the step (a commit's :class:`~dlm.messages.Idle`).

**Time for the model.** :meth:`Ancestral.prepare` attaches each row's noise level ``σ = −log α_t`` at its current
time (:class:`~dlm.messages.NoiseLevel`), which the model gets in its plan.

**Schedule.** ``T`` is the iteration manager's step budget (``window.total_steps``: the ``ancestral`` iteration's
``steps``). Under a manager with several blocks each block runs a schedule of its own, of ``T`` steps times the
block's share of the generation region (``blockwise``: its steps per block), and a row's time restarts at each
new block (semi-autoregressive ancestral sampling, dlm's composition; the references sample the whole canvas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import row_spans
from dlm.errors import DecodingError
from dlm.memory import RowMemory
from dlm.messages import Commit, Idle, ModelCapabilities, NoiseLevel, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


class AncestralConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    eps: float = Field(1e-5, gt=0.0, lt=1.0, description="last time of the schedule, linspace(1, eps, T + 1)")
    noise_eps: float = Field(1e-3, ge=0.0, lt=1.0,
                             description="ε of the log-linear noise schedule, alpha_t = 1 - (1 - ε) t")
    noise_removal: Literal["ancestral", "greedy"] = Field(
        "ancestral", description="the last step at t = eps: a draw from p (DiDi-Instruct) or its argmax (MDLM)")
    reuse_logits: bool = Field(True, description="a step that unmasks nothing goes on to the next time with the same "
                                                 "logits (MDLM's ddpm_cache); false for time-conditioned models")


def timesteps(steps: int, eps: float) -> Tensor:
    """``linspace(1, eps, steps + 1)`` in float32, as MDLM's and DiDi-Instruct's samplers build it."""
    return torch.linspace(1, eps, steps + 1)


def alphas(t: Tensor, s: Tensor | None, noise_eps: float) -> tuple[Tensor, Tensor]:
    """``(α_t, α_s)`` of the log-linear schedule (DiDi-Instruct's ``LogLinear``: ``1 − (1 − ε)·t``, float32 as
    the reference computes it); ``s`` None: the noise-removal step, ``α_s = 1``."""
    alpha_t = 1 - (1 - noise_eps) * t
    alpha_s = torch.ones_like(alpha_t) if s is None else 1 - (1 - noise_eps) * s
    return alpha_t, alpha_s


def subs_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """float64 ``log p_θ`` [.., V]: MASK's logit −∞, then normalised (MDLM's SUBS parameterisation)."""
    x = logits.to(torch.float64).clone()
    x[..., mask_id] = -torch.inf
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


def gumbel_argmax(q: Tensor, u: Tensor) -> Tensor:
    """The references' ``_sample_categorical`` with the uniforms ``u``: ``argmax(q / (1e-10 − log(u + 1e-10)))``."""
    return (q / (1e-10 - (u + 1e-10).log())).argmax(dim=-1)


@dataclass
class AncestralMemory(RowMemory):
    """Per batch row: the time steps its schedule has taken in its current block (``k``: the next step is from
    ``t_k``; ``k = T`` is the noise-removal step) and that block."""

    movable = True  # no columns

    index: Tensor  # [B] long (host)
    block: Tensor  # [B] long (host): -1 before the row's first step

    @staticmethod
    def fresh(batch: int) -> "AncestralMemory":
        return AncestralMemory(index=torch.zeros(batch, dtype=torch.long), block=torch.full((batch,), -1))


class Ancestral(DecodingStrategy):
    """MDLM / DiDi-Instruct ancestral sampling (see the module doc)."""

    Config = AncestralConfig
    joinable = True
    requires = {"step_budget": "it runs MDLM's time schedule over the iteration's step budget (window.total_steps)"}

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if self.config.reuse_logits and capabilities.time_conditioned:
            return ("the model is time-conditioned (its logits depend on the step's time), so a step that unmasks "
                    "nothing cannot lend its logits to the next time; set decoding.reuse_logits: false")
        return None

    def start(self, state: GenerationState) -> AncestralMemory:
        return AncestralMemory.fresh(state.batch_size)

    def _steps(self, state: GenerationState, window: Window) -> Tensor:
        """[b] host: the steps ``T`` of each row's schedule in its current block."""
        total = window.total_steps
        if total is None:
            raise DecodingError("decoding 'ancestral' needs the schedule's step count (window.total_steps), which the "
                                "iteration manager gives: use iteration ancestral (or blockwise)")
        width = (window.block_end - window.block_start).clamp(min=1)
        return torch.clamp(torch.round(total * width / max(state.gen_length, 1)).long(), min=1)

    def _place(self, state: GenerationState, window: Window) -> tuple[Tensor, Tensor]:
        """Each row's step index and schedule length ([b] host), restarting rows that entered a new block."""
        m: AncestralMemory = self.memory(state)
        rows = window.rows.cpu()
        fresh = m.block[rows] != window.block
        m.index[rows[fresh]] = 0
        m.block[rows] = window.block
        return m.index[rows], self._steps(state, window)

    def prepare(self, state: GenerationState, window: Window) -> Window:
        index, steps = self._place(state, window)
        sigma = torch.empty(len(index), dtype=torch.float32)
        for i, (k, n) in enumerate(zip(index.tolist(), steps.tolist())):
            alpha_t, _ = alphas(timesteps(n, self.config.eps)[min(k, n)], None, self.config.noise_eps)
            sigma[i] = -torch.log(alpha_t)  # DiDi-Instruct's _sigma_from_alphat
        return window.extend(NoiseLevel(sigma.to(window.eligible.device)))

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        m: AncestralMemory = self.memory(state)
        c, mask_id = self.config, window.mask_id
        index, steps = self._place(state, window)
        rows = window.rows.cpu()
        select = torch.zeros_like(window.eligible)
        tokens = torch.full(window.eligible.shape, mask_id, dtype=torch.long, device=window.eligible.device)
        lo, hi = row_spans(window)
        active = window.eligible.any(dim=1).cpu()
        for i in active.nonzero()[:, 0].tolist():
            a, z, n = int(lo[i]), int(hi[i]), int(steps[i])
            eligible = window.eligible[i, a:z]
            log_p = subs_log_probs(logits[i, a:z], mask_id)  # [w, V]
            p = log_p.exp()
            grid = timesteps(n, c.eps)
            k = int(index[i])
            while True:
                if k > n:
                    raise DecodingError(f"row {int(rows[i])} still has masked positions after the {n} steps and the "
                                        "noise-removal step of its schedule")
                if k == n and c.noise_removal == "greedy":
                    drawn = log_p.argmax(dim=-1)
                else:
                    t = grid[k]
                    alpha_t, alpha_s = alphas(t, None if k == n else t - (1 - c.eps) / n, c.noise_eps)
                    q = p * (alpha_s - alpha_t)
                    q[:, mask_id] = 1 - alpha_s
                    u = generator.rand(window.rows[i : i + 1], tuple(q.shape))[0]
                    drawn = gumbel_argmax(q, u)
                k += 1
                newly = eligible & (drawn != mask_id)
                if k > n or not c.reuse_logits or bool(newly.any()):
                    break
            select[i, a:z], tokens[i, a:z] = newly, torch.where(newly, drawn, mask_id)
            m.index[rows[i]] = k
        idle = active.to(select.device) & ~select.any(dim=1)
        return Commit(select, tokens, Idle(idle) if not c.reuse_logits else None)
