"""``smoothing``: dInfer's iteration smoothing (Ma et al. 2025, "dInfer: An Efficient Inference Framework for
Diffusion Language Models", arXiv 2510.08666; code inclusionAI/dInfer, ``IterationSmooth`` in
``python/dinfer/decoding/generate_uniform.py`` and ``H2Embed`` in ``python/dinfer/model/modeling_fused_olmoe.py``).

``blockwise``'s schedule, with two changes in every step a row takes part in, ``t`` being the number of forwards
the row ran before this one (dInfer's ``iter_no``, counted over the whole generation, not per block):

- **Soft inputs.** A still-masked column is fed ``E[MASK] + w · softmax(ℓ) @ E`` instead of ``E[MASK]``, where ``ℓ``
  are the logits the last forward that computed the column predicted for it, and ``w`` the weight of that forward:
  ``w_t = min(cont_weight_init + cont_weight_growth · t, cont_weight)``. Committed columns are fed their token's
  embedding. Each forward records the expected embeddings of the masked columns it computes (and stores: with a
  cache, the columns its plan stores; a refresh stores the whole canvas), so the window carries a
  :class:`~dlm.messages.SoftInputs` (feed and record the masked columns, scale ``w_t``) that the model runs.
- **A threshold that falls.** The decoding strategy decides with ``max(1 − threshold_decay · t, τ)``, τ its own
  threshold (a :class:`~dlm.messages.ThresholdFloor`): the first steps commit little but the single most confident
  token, while the soft inputs take shape.

Why an iteration manager: in dInfer it is a diffusion iteration that owns the model input and hands the decoder an
``iter_threshold``, composed with any of its threshold decoders (``threshold``, ``credit``, ``hierarchical``) and
its caches. Here the iteration manager states both changes as window extensions: every cache composes without
knowing them (``none``, ``prefix``, ``dual``, and ``vicinity``, which dInfer merged by hand into
``IterSmoothWithVicinityCache``), and the decoding strategy must read the floor (the feature ``threshold_floor``),
the model must take soft inputs (``soft_inputs``): other compositions are refused when the pipeline is built.

The soft store is run memory on the state (:class:`SmoothingProgress`), per row: rows give in a batch, and when
they join a running generation, what they give alone. ``cont_weight_init: 0, cont_weight: 0`` feeds hard inputs
only; with ``threshold_decay: 0`` too, every step decides at threshold 1: the plain pipeline at τ = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from pydantic import Field
from torch import Tensor

from dlm.iteration.base import BlockProgress
from dlm.iteration.blockwise import Blockwise, BlockwiseConfig
from dlm.memory import SoftStore
from dlm.messages import ModelCapabilities, SoftInputs, ThresholdFloor, Window
from dlm.state import GenerationState


class SmoothingConfig(BlockwiseConfig):
    """``blockwise``'s fields, and dInfer's smoothing schedule (its defaults)."""

    cont_weight: float = Field(0.3, ge=0.0, description="largest weight of the soft embedding added to a masked input")
    cont_weight_init: float = Field(0.15, ge=0.0, description="weight of the soft embedding recorded by the first forward")
    cont_weight_growth: float = Field(0.02, ge=0.0, description="weight added per forward, up to cont_weight")
    threshold_decay: float = Field(
        0.02, ge=0.0, description="the decoding threshold is max(1 - threshold_decay * t, its own) at forward t")


@dataclass
class SmoothingProgress(BlockProgress):
    """``blockwise``'s progress and the rows' soft store (the columns' recorded soft embeddings)."""

    soft: SoftStore | None = None


def smoothing_weight(config: SmoothingConfig, t: Tensor) -> Tensor:
    """[b] float64: the weight ``min(cont_weight_init + cont_weight_growth · t, cont_weight)`` of forward ``t``."""
    return torch.clamp(config.cont_weight_init + config.cont_weight_growth * t, max=config.cont_weight)


def threshold_floor(config: SmoothingConfig, t: Tensor) -> Tensor:
    """[b] float64: ``1 − threshold_decay · t``, the floor of the decoding threshold at forward ``t``."""
    return 1 - t * config.threshold_decay


class IterationSmoothing(Blockwise):
    """``blockwise`` with soft inputs and a falling threshold floor (see the module doc)."""

    Config = SmoothingConfig
    joinable = True
    requires = {
        "soft_inputs": "iteration smoothing feeds each masked column the expected embedding of its last prediction "
                       "(a plan's SoftInputs), which only an adapter declaring capabilities.soft_inputs runs (every "
                       "adapter on dlm's transformer does)",
        "threshold_floor": "iteration smoothing lowers the decoding threshold from 1 step by step (a window's "
                           "ThresholdFloor), which this rule does not read",
    }

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = super().start(prompts, capabilities, device, **({} if gen_start is None else {"gen_start": gen_start}))
        p = state.progress
        state.progress = SmoothingProgress(**{f.name: getattr(p, f.name) for f in fields(p)},
                                           soft=SoftStore(state.batch_size, state.length))
        return state

    def window(self, state: GenerationState) -> Window:
        window = super().window(state)
        t = state.nfe[window.rows].to(torch.float64)  # forwards each row ran: dInfer's iteration number
        masked = state.masked()[window.rows]  # [b, L]
        soft = SoftInputs(state.progress.soft, feed=masked, record=masked, scale=smoothing_weight(self.config, t))
        return window.extend(ThresholdFloor(threshold_floor(self.config, t)), soft)
