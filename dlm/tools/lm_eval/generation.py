"""lm-eval's generation settings mapped onto a pipeline: generation length, sampling, stop strings.

``max_gen_toks`` becomes the iteration manager's ``gen_length``, rounded **up** to a whole number of blocks
(``block_length``, else the model's attention block size), with ``steps`` scaled so that each block keeps its
number of steps (or, without blocks, the same tokens per step). A task without ``max_gen_toks`` keeps the
config's ``gen_length``. ``do_sample: false`` (or no ``do_sample``) sets the decoding strategy's
``temperature`` to 0; ``do_sample: true`` sets it to the task's ``temperature`` (default 1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from dlm.config import PipelineConfig, build_config
from dlm.errors import ConfigError
from dlm.messages import ModelCapabilities

USED_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}


@dataclass(frozen=True)
class GenSettings:
    """The parts of lm-eval's ``gen_kwargs`` that change the pipeline (requests sharing them share a batch)."""

    max_gen_toks: int | None
    temperature: float  # 0: greedy


def gen_settings(gen_kwargs: dict[str, Any]) -> tuple[GenSettings, tuple[str, ...]]:
    """Settings and stop strings of one request (keys outside :data:`USED_KEYS` are not used)."""
    until = gen_kwargs.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    max_gen = gen_kwargs.get("max_gen_toks")
    if max_gen is not None and (not isinstance(max_gen, int) or max_gen <= 0):
        raise ConfigError(f"gen_kwargs: max_gen_toks must be a positive integer, got {max_gen!r}")
    sample = bool(gen_kwargs.get("do_sample", False))
    temperature = float(gen_kwargs.get("temperature", 1.0) or 0.0) if sample else 0.0
    return GenSettings(max_gen, temperature), tuple(str(u) for u in until)


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (lm-eval leaves this to the model)."""
    cut = min((i for s in until if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _scaled_iteration(section: dict[str, Any], max_gen: int, capabilities: ModelCapabilities) -> dict[str, Any]:
    """The iteration section with ``gen_length`` = ``max_gen`` rounded up to whole blocks, steps scaled."""
    if "gen_length" not in section:
        raise ConfigError(
            f"iteration {section.get('name')!r} has no gen_length, so the task's max_gen_toks cannot be applied"
        )
    old = int(section["gen_length"])
    block = section.get("block_length") or capabilities.block_size or 1
    new = math.ceil(max_gen / block) * block
    out = {**section, "gen_length": new}
    if "steps" in section and new != old:
        steps, old_blocks = int(section["steps"]), old // block
        if old % block == 0 and steps % old_blocks == 0:
            out["steps"] = steps // old_blocks * (new // block)  # same steps per block
        else:
            out["steps"] = max(1, math.ceil(steps * new / old))  # same tokens per step
    return out


def variant_config(base: PipelineConfig, settings: GenSettings, capabilities: ModelCapabilities) -> PipelineConfig:
    """``base`` with the iteration and decoding sections adapted to ``settings``."""
    raw = base.to_dict()
    if settings.max_gen_toks is not None:
        raw["iteration"] = _scaled_iteration(raw["iteration"], settings.max_gen_toks, capabilities)
    if "temperature" in raw["decoding"]:
        raw["decoding"] = {**raw["decoding"], "temperature": settings.temperature}
    elif settings.temperature > 0:
        raise ConfigError(
            f"the task samples (do_sample: true) but decoding {raw['decoding']['name']!r} has no temperature; "
            "choose a strategy with one (e.g. low_confidence) or run the task greedily"
        )
    return build_config(raw, source=base.source)
