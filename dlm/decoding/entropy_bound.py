"""``entropy_bound``: DiffusionGemma's sampler as a decoding strategy: a linear temperature schedule, entropy-bound
acceptance, renoising of what was not accepted, and the stable-and-confident adaptive stop.

From transformers' ``models/diffusion_gemma/generation_diffusion_gemma.py`` (5.13+), one denoising step
(``_denoising_step``), at step ``n`` of a canvas (``cur_step = N - n`` steps remain, ``N = max_denoising_steps``):

1. **Temperature** (``LinearTemperatureScheduleLogitsProcessor``): the logits are divided by
   ``t = t_min + (t_max - t_min) · cur_step / N`` (float32), so ``t_max`` at the first step, falling towards ``t_min``.
2. **Sampling**: a token per position from ``softmax(logits / t)`` (``torch.multinomial``), and the argmax.
3. **Acceptance** (``EntropyBoundSampler.accept_canvas``, the entropy-bounded rule of Ben-Hamu et al., 2025,
   arXiv 2505.24857): the ``k`` lowest-entropy positions such that ``sum(entropies) - max(entropies) <=
   entropy_bound`` keep their sampled token.
4. **Renoising** (``renoise_canvas``): every other position gets a fresh uniformly random token — so a token
   accepted at one step is renoised at the next if it is not accepted again.
5. **Adaptive stop** (``StableAndConfidentStoppingCriteria``): the canvas is done when its argmax equals the
   argmax of each of the last ``stability_threshold`` steps and the mean entropy of the tempered logits is below
   ``confidence_threshold``; or after ``N`` steps. The canvas' tokens are then **the argmax of that step** (the
   reference appends ``argmax_canvas``), committed all at once.
6. **Self-conditioning**: the step's tempered logits are the next step's soft input. The strategy attaches to its
   window a :class:`~dlm.messages.SoftInputs` at the step's temperature, over its run memory's
   :class:`~dlm.memory.SoftStore`: record the canvas, and feed it from the second step of the canvas on (a canvas'
   first step, and so a row whose canvas finished, gets none, as the reference zeroes them). The model records the
   soft embedding of its logits and feeds it back its own way (DiffusionGemma: through its self-conditioning
   block); the model must declare ``soft_inputs`` (:meth:`EntropyBound.check`).

Draws come from each row's own stream, in the reference's order (the multinomial, then the renoising randint,
also at the step that stops), so at batch 1 a seed gives the reference's tokens under ``torch.manual_seed``. A row
samples at its eligible positions only (its whole canvas on a noise model): a batch's window is the union of its
rows' blocks, which depends on the other rows.

**On a masked model** (``canvas: masked``) the rule is an entropy-bound acceptance among the masked positions:
the accepted ones are committed with their sampled tokens and the rest stay masked (remasking *is* the renoising
there); the temperature schedule applies; the adaptive stop does not (a masked block ends when it is full), so a
stop setting is refused there. Settings left out default to the model's generation_config.json where it has one
(DiffusionGemma), else to transformers' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.memory import RowMemory, SoftStore
from dlm.messages import Commit, Drafts, SoftInputs, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState

DEFAULTS = {"max_denoising_steps": 48, "entropy_bound": 0.1, "t_min": 0.4, "t_max": 0.8, "stability_threshold": 1,
            "confidence_threshold": 0.005}  # transformers' DiffusionGemmaGenerationConfig defaults


class EntropyBoundConfig(BaseModel):
    """Settings named as transformers names them; None: the model's generation_config.json (else transformers')."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entropy_bound: float | None = Field(None, gt=0, description="the acceptance's bound on sum - max of entropies")
    t_min: float | None = Field(None, ge=0, description="temperature at the last step")
    t_max: float | None = Field(None, ge=0, description="temperature at the first step")
    max_denoising_steps: int | None = Field(None, gt=0, description="steps of a canvas at most")
    stability_threshold: int | None = Field(None, ge=0, description="steps the argmax must stay the same to stop")
    confidence_threshold: float | None = Field(None, gt=0, description="mean entropy below which a stable canvas "
                                                                       "stops")
    defaults: dict[str, float] = Field(default_factory=dict, description="filled by the pipeline from the model "
                                                                         "(generation_config.json); not for YAML")

    def setting(self, key: str):
        value = getattr(self, key)
        if value is None:
            value = self.defaults.get(key, DEFAULTS[key])
        return value


@dataclass
class StopHistory(RowMemory):
    """Per row: the argmax canvases of the last ``stability_threshold`` steps ([B, S, W], -1 before any), and the
    soft embeddings of the last step's tempered logits (self-conditioning)."""

    argmax: Tensor
    soft: SoftStore


class EntropyBound(DecodingStrategy):
    """DiffusionGemma's entropy-bound sampler (acceptance, renoising, temperature schedule, adaptive stop)."""

    Config = EntropyBoundConfig
    provides = frozenset({"finishes_canvases"})
    # on a masked model it is an entropy-bound acceptance among the masked positions (select); on a noise-canvas
    # model the iteration must be revisable (dlm.compat refuses the others); the adaptive stop's settings on a
    # masked model are refused by check()

    def start(self, state: GenerationState) -> StopHistory | None:
        if not state.revisable:
            return None
        keep = int(self.config.setting("stability_threshold"))
        width = state.progress.canvas if hasattr(state.progress, "canvas") else state.gen_length
        return StopHistory(torch.full((state.batch_size, keep, width), -1, dtype=torch.long, device=state.device),
                           SoftStore(state.batch_size, state.length))

    def temperature(self, step: Tensor) -> Tensor:
        """[b] float32 temperatures at canvas steps ``step`` [b], as the reference's float32 arithmetic."""
        n = int(self.config.setting("max_denoising_steps"))
        t_min, t_max = float(self.config.setting("t_min")), float(self.config.setting("t_max"))
        remaining = (n - step).to(torch.int32)
        return t_min + (t_max - t_min) * (remaining / n)

    def prepare(self, state: GenerationState, window: Window) -> Window:
        """On a revisable canvas: ask for self-conditioning (record the canvas' soft embeddings at the step's
        temperature; feed them from the canvas' second step on)."""
        if not state.revisable:
            return window
        canvas = torch.zeros(len(window.rows), state.length, dtype=torch.bool, device=state.device)
        canvas[:, window.start : window.end] = True
        feed = canvas & ~window.first_step.to(state.device)[:, None]
        temps = self.temperature(window.step).to(state.device)
        return window.extend(SoftInputs(self.memory(state).soft, feed=feed, record=canvas, temperature=temps))

    def accept(self, entropy: Tensor, eligible: Tensor) -> Tensor:
        """[b, W] bool: the lowest-entropy eligible positions whose entropies' sum minus max is within the bound."""
        entropy = entropy.masked_fill(~eligible, torch.inf)
        ordered, order = torch.sort(entropy, dim=-1)
        chosen = torch.cumsum(ordered, dim=-1) - ordered <= float(self.config.setting("entropy_bound"))
        chosen[:, 0] |= eligible.any(dim=1)  # the lowest-entropy eligible position, always (0 <= bound)
        return torch.zeros_like(chosen).scatter(-1, order, chosen) & eligible

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        rows = window.rows
        temps = self.temperature(window.step).to(logits.device)  # [b]
        # float32 as the reference on noise canvases; float64 on a masked model, whose batched logits differ from
        # the row's alone in the last float32 bits (padding keys), enough to move a float32 draw
        tempered = (logits.float() if state.revisable else logits.double()) / temps[:, None, None]
        probs = torch.softmax(tempered, dim=-1, dtype=tempered.dtype)
        if not state.revisable:  # a masked model never proposes MASK
            probs[..., window.mask_id] = 0
        # each row draws at its eligible positions only: a batch's window spans the union of its rows' blocks, so
        # a draw over the whole window would follow the batch (the bug that kept masked models refused)
        sampled = generator.multinomial(rows, probs, where=window.eligible)  # [b, W]
        argmax = tempered.argmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=tempered).entropy()  # [b, W]
        accepted = self.accept(entropy, window.eligible)
        if not state.revisable:  # a masked model: commit the accepted positions, the rest stays masked
            return Commit(accepted, sampled)
        vocab = state.progress.vocab
        noise = generator.randint(rows, vocab, (window.width,))  # the renoising draw, every step as the reference
        current = state.canvas[rows, window.start : window.end]
        redrafted = torch.where(accepted, sampled, current)
        redrafted = torch.where(accepted, redrafted, noise)
        finish = self._stop(state, window, argmax, entropy) | (window.step + 1 >= int(
            self.config.setting("max_denoising_steps"))).to(logits.device)
        select = window.eligible & finish[:, None]
        tokens = torch.where(finish[:, None], argmax, redrafted)
        return Commit(select, tokens, Drafts(window.eligible & ~finish[:, None]))

    def _stop(self, state: GenerationState, window: Window, argmax: Tensor, entropy: Tensor) -> Tensor:
        """[b] bool: stable (the argmax of the last ``stability_threshold`` steps) and confident; records the argmax."""
        mem: StopHistory = self.memory(state)
        rows = window.rows
        history = mem.argmax[rows]  # [b, S, W]
        history[window.first_step.to(history.device)] = -1  # a new canvas: no history yet
        stable = (history == argmax[:, None]).all(dim=-1).all(dim=-1)
        if history.shape[1]:
            mem.argmax[rows] = torch.cat((history[:, 1:], argmax[:, None]), dim=1)
        confident = entropy.mean(dim=-1) < float(self.config.setting("confidence_threshold"))
        return stable & confident

    def check(self, capabilities) -> str | None:
        """A masked model has no canvas to stop: refuse the adaptive stop's settings there; a noise-canvas model
        must take the self-conditioning input (soft inputs)."""
        if capabilities.canvas == "noise" and not capabilities.soft_inputs:
            return ("on noise canvases it feeds each step the soft embedding of the last step's tempered logits "
                    "(self-conditioning, a plan's SoftInputs), and the model does not declare soft_inputs")
        if capabilities.canvas == "masked" and (self.config.stability_threshold is not None
                                                or self.config.confidence_threshold is not None):
            return ("the adaptive stop (stability_threshold, confidence_threshold) applies to noise canvases only; "
                    "a masked model's block ends when it is full")
        return None
