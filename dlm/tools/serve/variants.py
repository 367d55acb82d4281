"""Pipelines for per-request settings, all sharing one loaded model.

A request's ``max_tokens`` becomes a generation length rounded up to the iteration manager's block length
(its top-k ``steps`` scaled so each block keeps its steps), and its ``temperature`` replaces the decoding
strategy's. Requests with the same (generation length, temperature) can be rows of one batch; the seed is
per row (:meth:`dlm.pipeline.Pipeline.generate` ``seeds=``), so it never splits a batch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from dlm.config import ComponentChoice
from dlm.errors import ConfigError
from dlm.pipeline import Pipeline

Key = tuple[int, float | None]  # (generation length, temperature or None for the config's)


@dataclass(frozen=True)
class Limits:
    """What requests may ask of this pipeline, derived from its config and model."""

    context: int  # the model's context in tokens (prompt + generation)
    default_tokens: int  # the config's gen_length: max_tokens when a request gives none
    granule: int | None  # generation lengths are multiples of this (the block length); None: fixed length
    max_tokens: int  # the largest max_tokens a request may ask for
    temperature: float | None  # the decoding strategy's temperature; None: it has no temperature setting

    def gen_length(self, max_tokens: int) -> int:
        """The generation length serving ``max_tokens``: rounded up to the block length."""
        if self.granule is None:
            return self.default_tokens
        return self.granule * math.ceil(max_tokens / self.granule)


class Variants:
    """Builds and keeps (LRU, bounded) the pipelines requests need, from one base pipeline."""

    def __init__(self, base: Pipeline, *, max_tokens: int | None = None, keep: int = 16) -> None:
        if base.config is None:
            raise ConfigError("the server needs a pipeline built from a config (Pipeline.from_config / from_yaml)")
        self.base, self.keep = base, keep
        self._built: OrderedDict[Key, Pipeline] = OrderedDict()
        cfg = base.config
        it = cfg.iteration.config.model_dump()
        context = base.model.capabilities.max_length
        if "gen_length" in it:
            granule = it.get("block_length") or base.model.capabilities.block_size or 1
        else:
            granule = None
        default = int(it.get("gen_length", 0)) or None
        if granule is None:
            if default is None:
                raise ConfigError(
                    f"iteration {cfg.iteration.name!r} has no gen_length setting, so the server cannot size answers"
                )
            longest = default
        else:
            longest = (context - 1) // granule * granule  # leave room for a one-token prompt
        if max_tokens is not None:  # refused, never silently capped (docs/errors.md)
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise ConfigError(f"--max-tokens must be a positive integer, got {max_tokens!r}")
            if max_tokens > longest:
                raise ConfigError(
                    f"--max-tokens {max_tokens} is beyond what this model can answer: at most {longest} tokens "
                    f"(context {context}, one token left for the prompt"
                    + (f", in blocks of {granule})" if granule else ", the fixed gen_length)")
                    + f"; give --max-tokens {longest} or less"
                )
            if default is not None and max_tokens < default:
                raise ConfigError(
                    f"--max-tokens {max_tokens} is below the config's iteration.gen_length {default}, the length "
                    f"of an answer that names no max_tokens; lower gen_length (--set iteration.gen_length=...) or "
                    f"raise --max-tokens to at least {default}"
                )
            longest = max_tokens
        dec = cfg.decoding.config.model_dump()
        self.limits = Limits(
            context=context,
            default_tokens=min(default or longest, longest),
            granule=granule,
            max_tokens=longest,
            temperature=float(dec["temperature"]) if "temperature" in dec else None,
        )

    def key(self, max_tokens: int, temperature: float | None) -> Key:
        if temperature is not None and temperature == self.limits.temperature:
            temperature = None
        return self.limits.gen_length(max_tokens), temperature

    def pipeline(self, key: Key) -> Pipeline:
        """The pipeline for ``key`` (built on first use; the model is shared, never reloaded)."""
        if key in self._built:
            self._built.move_to_end(key)
            return self._built[key]
        gen_length, temperature = key
        cfg = self.base.config
        iteration = _with(cfg.iteration, **_length_fields(cfg.iteration.config.model_dump(), gen_length))
        decoding = cfg.decoding if temperature is None else _with(cfg.decoding, temperature=temperature)
        cache = cfg.cache.cls(cfg.cache.config)
        config = cfg.model_copy(update={"iteration": iteration, "decoding": decoding})
        pipe = Pipeline(
            self.base.model, iteration.cls(iteration.config), decoding.cls(decoding.config), cache,
            seed=cfg.run.seed, config=config,
        )
        self._built[key] = pipe
        while len(self._built) > self.keep:
            self._built.popitem(last=False)
        return pipe


def _length_fields(it: dict, gen_length: int) -> dict:
    """Iteration fields for ``gen_length``: blockwise schedules keep their steps per block, global ones
    (Dream's) keep their steps per token."""
    if "gen_length" not in it or it["gen_length"] == gen_length:
        return {}
    out = {"gen_length": gen_length}
    if "steps" in it:
        block = it.get("block_length")
        if block:
            out["steps"] = it["steps"] // (it["gen_length"] // block) * (gen_length // block)
        else:
            out["steps"] = max(1, math.ceil(it["steps"] * gen_length / it["gen_length"]))
    return out


def _with(choice: ComponentChoice, **fields) -> ComponentChoice:
    if not fields:
        return choice
    config = choice.cls.Config.model_validate({**choice.config.model_dump(), **fields})
    return ComponentChoice(name=choice.name, cls=choice.cls, config=config)
