"""``--model_args`` of the ``dlm`` lm-eval model: a pipeline config, dotted overrides and the estimator's knobs.

``config=PATH`` names a pipeline YAML (default: the embedded demo pipeline); any key with a dot
(``decoding.threshold=0.8``) or a run setting (``seed``, ``dtype``, ``threads``) overrides that config; the
keys below tune the evaluation itself. lm-eval adds ``batch_size``, ``max_batch_size`` and ``device`` on its
own; its default ``device`` (``cuda:0``, passed even on a CPU machine) is ignored, so the config's device
holds unless ``--device`` names another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlm.config import PipelineConfig, RunSettings, build_config, default_config_path, load_yaml
from dlm.errors import ConfigError

LM_EVAL_DEFAULT_DEVICE = "cuda:0"  # what lm-eval 0.4 passes as ``device`` when --device is not given


class EvalOptions(BaseModel):
    """Evaluation settings of the ``dlm`` model (everything in model_args that is not a pipeline override)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: Path | None = Field(None, description="pipeline YAML; default: the embedded demo pipeline")
    batch_size: int = Field(1, gt=0, description="prompts per generate call (lm-eval's --batch_size)")
    mc_num: int = Field(128, gt=0, description="Monte-Carlo samples per loglikelihood request")
    mc_batch: int = Field(32, gt=0, description="Monte-Carlo samples per forward")
    check_greedy: bool = Field(True, description="compute is_greedy (costs up to T forwards per request)")
    sampling_eps: float = Field(1e-3, gt=0.0, lt=1.0, description="smallest mask probability of Dream's estimate")

    @model_validator(mode="after")
    def _whole_batches(self) -> "EvalOptions":
        if self.mc_num % min(self.mc_batch, self.mc_num):
            raise ValueError(
                f"mc_num ({self.mc_num}) must be a multiple of mc_batch ({self.mc_batch}), "
                f"e.g. mc_num={self.mc_num - self.mc_num % self.mc_batch or self.mc_batch}"
            )
        return self


@dataclass(frozen=True)
class ModelArgs:
    """Parsed model_args: evaluation options and the validated pipeline config."""

    options: EvalOptions
    pipeline: PipelineConfig


def _batch_size(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith("auto"):
        raise ConfigError("model_args: batch_size 'auto' is not supported by dlm; give a number, e.g. --batch_size 16")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _device(device: Any, pipeline_device: str) -> str | None:
    """The device to override the config's with, or None to keep it (see the module docstring)."""
    if device is None or str(device) == LM_EVAL_DEFAULT_DEVICE:
        chosen = pipeline_device
    else:
        chosen = str(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and chosen.split(":")[0] == "cuda":
        chosen = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # torchrun: one GPU per process
    return None if chosen == pipeline_device else chosen


def parse_model_args(kwargs: dict[str, Any]) -> ModelArgs:
    """Split lm-eval's keyword arguments into evaluation options and pipeline overrides, validating both.

    Every problem raises :class:`~dlm.errors.ConfigError` with a one-line message.
    """
    kwargs = dict(kwargs)
    kwargs.pop("max_batch_size", None)  # only meaningful with batch_size auto, which is refused
    device = kwargs.pop("device", None)
    if "trust_remote_code" in kwargs:
        raise ConfigError("model_args: trust_remote_code is not accepted; dlm loads safetensors and never runs remote code")
    own = {k: v for k, v in kwargs.items() if k in EvalOptions.model_fields}
    overrides = {k: v for k, v in kwargs.items() if k not in own and ("." in k or k in RunSettings.model_fields)}
    unknown = [k for k in kwargs if k not in own and k not in overrides]
    if unknown:
        raise ConfigError(
            f"model_args: unknown key {unknown[0]!r}. Allowed: {', '.join(EvalOptions.model_fields)}, "
            f"{', '.join(k for k in RunSettings.model_fields if k != 'device')}, or a dotted pipeline override "
            "such as decoding.threshold=0.9"
        )
    if "batch_size" in own:
        own["batch_size"] = _batch_size(own["batch_size"])
    try:
        options = EvalOptions.model_validate(own)
    except ValidationError as err:
        first = err.errors()[0]
        where = "".join(f"{p}: " for p in first["loc"])
        got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
        raise ConfigError(f"model_args: {where}{first['msg'].removeprefix('Value error, ')}{got}") from None
    path = options.config if options.config is not None else default_config_path()
    if not path.is_file():
        raise ConfigError(f"model_args: config={path}: no such file; give the path of a pipeline YAML file")
    raw = load_yaml(path)
    source = str(path)
    pipeline = build_config(raw, source=source, overrides=overrides)
    moved = _device(device, pipeline.run.device)
    if moved is not None:
        pipeline = build_config(raw, source=source, overrides={**overrides, "device": moved})
    return ModelArgs(options, pipeline)
