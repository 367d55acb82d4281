"""Helpers the checks of several kinds share: :class:`_ModelProbe` (a model wrapper that sees every
forward), bounded generations (:func:`_generate` fails instead of hanging), comparisons of generations
(same seed, batched vs alone), and the ``config`` check every kind runs (:func:`check_config`)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from dlm.cache.base import ForwardPlan
from dlm.errors import CompositionError
from dlm.models.base import ModelAdapter
from dlm.pipeline import GenerationOutput, Pipeline
from dlm.state import GenerationState, Window
from dlm.testing.contracts.core import PROMPTS, NotApplicable, _fail


# --- probes: wrappers that check each step without changing what runs -------------------------------


class _ModelProbe:
    """Delegates to a model adapter; ``on_forward(state, plan, window, logits, forward)`` sees every call."""

    def __init__(self, model: ModelAdapter, on_forward: Callable) -> None:
        self._model, self._on_forward = model, on_forward

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def forward(self, state: GenerationState, plan: ForwardPlan, window: Window) -> Tensor:
        return self._on_forward(state, plan, window, self._model.forward)


def _generate(model, iteration, decoding, cache, prompts=PROMPTS, *, seed=0) -> GenerationOutput:
    """One generation, failing if it takes more steps than it could need (so no check can hang)."""
    try:
        pipe = Pipeline(model, iteration, decoding, cache, seed=seed)
    except CompositionError as err:
        raise NotApplicable(f"cannot be composed with the tiny test model: {err}") from err
    return pipe.generate(input_ids=[list(p) for p in prompts], trace=_step_bound())


def _step_bound() -> Callable[[GenerationState], None]:
    """A trace hook failing once a generation takes more steps than it has masked positions (+ slack)."""
    counter = {"steps": 0}

    def trace(state: GenerationState) -> None:
        counter["steps"] += 1
        if counter["steps"] > 2 * state.gen_length + 8:
            _fail(f"the generation did not end after {counter['steps']} steps ({state.gen_length} tokens to fill)")

    return trace


def _same_outputs(a: GenerationOutput, b: GenerationOutput, what: str) -> None:
    for r, (x, y) in enumerate(zip(a.generated, b.generated)):
        if not torch.equal(x, y):
            _fail(f"{what}: row {r} differs: {x.tolist()} vs {y.tolist()}")


def _check_finished(out: GenerationOutput, mask_id: int) -> None:
    for r, gen in enumerate(out.generated):
        if bool((gen == mask_id).any()):
            _fail(f"row {r} still holds MASK after the generation ended: {gen.tolist()}")
        if out.nfe[r] < 1:
            _fail(f"row {r} reports NFE {out.nfe[r]}")


def _batched_vs_single(make: Callable[[], tuple], what: str) -> None:
    batched = _generate(*make())
    for r, prompt in enumerate(PROMPTS):
        alone = _generate(*make(), prompts=[prompt], seed=r)  # the pipeline seeds row r with seed + r
        if not torch.equal(batched.generated[r], alone.generated[0]):
            _fail(
                f"{what}: prompt {r} gives {batched.generated[r].tolist()} in a left-padded batch but "
                f"{alone.generated[0].tolist()} alone"
            )


# --- config --------------------------------------------------------------------------------------------


def _config(cls: type, config_dict: Mapping[str, Any] | None) -> BaseModel:
    try:
        return cls.Config.model_validate(dict(config_dict or {}))
    except ValidationError as err:
        _fail(f"Config rejects {dict(config_dict or {})!r}: {err}")


def check_config(cls: type, config_dict: Mapping[str, Any] | None = None) -> None:
    """Frozen pydantic config: round trip through model_dump (python and JSON), unknown fields rejected."""
    config = _config(cls, config_dict)
    for mode in ("python", "json"):
        again = cls.Config.model_validate(config.model_dump(mode=mode))
        if again != config:
            _fail(f"Config does not survive model_dump(mode={mode!r}) -> model_validate: {config!r} != {again!r}")
    if not cls.Config.model_config.get("frozen"):
        _fail("Config is not frozen (use model_config = ConfigDict(frozen=True, extra='forbid'))")
    for name in cls.Config.model_fields:
        try:
            setattr(config, name, getattr(config, name))
        except (ValidationError, TypeError, AttributeError):
            continue
        _fail(f"Config field {name!r} can be assigned after validation; the config must be frozen")
    try:
        cls.Config.model_validate({**config.model_dump(), "no_such_field_": 1})
    except ValidationError:
        pass
    else:
        _fail("Config accepts an unknown field; set extra='forbid' so YAML typos are reported")
