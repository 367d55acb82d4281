"""Tiny fixtures: random checkpoints (masked models, and a noise-canvas one: DiffusionGemma's layout, written by
:mod:`dlm.tools.diffusion_gemma_checkpoints`) written once into a temporary directory (removed at exit), the
float64 CPU models loaded from them and shared between checks, and :func:`model_for`, which picks the first
test model of :data:`FAMILIES` that a cache or iteration manager accepts."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from dlm import compat
from dlm.cache.base import CacheManager
from dlm.decoding.base import DecodingStrategy
from dlm.iteration.base import IterationManager
from dlm.models.base import ModelAdapter
from dlm.registry import entries, resolve
from dlm.tools import checkpoints
from dlm.testing.contracts.core import CPU, DTYPE, SMALL_ITERATION, NotApplicable


_TMP: list[Path] = []
_CHECKPOINTS: dict[int, Path] = {}
_MODELS: dict[tuple[str, int], ModelAdapter] = {}
_PARTNERS: dict[tuple, Any] = {}  # partner()'s finds (components hold only their config: sharing one is safe)
FAMILIES = ("llada", "fast_dllm_v2", "dream", "qwen2", "sdar", "diffusion_gemma", "llada_d2f")  # tried, in order
# test models that are a family's checkpoint loaded with options: name -> (family, model options)
VARIANTS = {"llada_d2f": ("llada", {"d2f_block_size": SMALL_ITERATION["block_length"]})}  # D2F's block-causal mask
NOISE_STEPS = 4  # max_denoising_steps of the noise-canvas model (its generation_config.json): short generations


def _tmp_root() -> Path:
    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="dlm-contracts-")))
        atexit.register(shutil.rmtree, _TMP[0], True)
    return _TMP[0]


def tiny_checkpoint(n_layers: int = 2) -> Path:
    """A random LLaDA-layout checkpoint (d=32, 4 heads, 2 KV heads, char vocabulary), written once."""
    if n_layers not in _CHECKPOINTS:
        _CHECKPOINTS[n_layers] = checkpoints.make_llada_checkpoint(
            _tmp_root() / f"llada-{n_layers}", n_layers=n_layers, n_kv_heads=2, seed=7
        )
    return _CHECKPOINTS[n_layers]


def tiny_model(n_layers: int = 2, family: str = "llada") -> ModelAdapter:
    """A tiny model of ``family`` (default: ``llada`` on :func:`tiny_checkpoint`), float64 on CPU; shared,
    so do not mutate it."""
    if (family, n_layers) not in _MODELS:
        name, options = VARIANTS.get(family, (family, {}))
        cls = resolve("model", name)
        path = tiny_checkpoint(n_layers) if name == "llada" else model_config_for(name)["path"]
        _MODELS[family, n_layers] = cls.load(cls.Config(path=path, **options), dtype=DTYPE, device=CPU)
    return _MODELS[family, n_layers]


def model_for(component: CacheManager | IterationManager | DecodingStrategy) -> ModelAdapter:
    """The first tiny model of :data:`FAMILIES` that ``component`` accepts (its ``check`` passes and its declared
    model requirements are met, :mod:`dlm.compat`)."""
    kind = _kind(component)
    reasons = []
    for family in FAMILIES:
        if family == "llada" or family in VARIANTS or family in _checkpoint_writers():
            model = tiny_model(family=family)
            problems = compat.model_problems(kind, component, model.capabilities)
            if not problems:
                return model
            reasons.append(f"{family}: {'; '.join(problems)}")
    raise NotApplicable("no tiny test model fits: " + "; ".join(reasons))


def _kind(component: Any) -> str:
    for kind, base in (("iteration", IterationManager), ("decoding", DecodingStrategy), ("cache", CacheManager)):
        if isinstance(component, base):
            return kind
    raise TypeError(f"{type(component).__name__} is not an iteration manager, decoding strategy or cache manager")


def partner(kind: str, default: Any, *others: Any) -> Any:
    """``default`` (a component of ``kind``) when it composes with ``others`` by their declarations
    (:mod:`dlm.compat`), else the first registered component of ``kind`` that does, with its default config.
    The kit drives a component with the most common partners, and with others only where it must (the
    ``jacobi`` iteration needs the ``jacobi`` decoding rule)."""
    def fits(candidate: Any) -> bool:
        components = {kind: candidate, **{_kind(o): o for o in others}}
        return not compat.problems(components)

    if fits(default):
        return default
    key = (kind, *(repr((type(c), getattr(c, "config", None))) for c in (default, *others)))
    if key in _PARTNERS:  # the search reads every registered component's metadata: once per composition
        return _PARTNERS[key]
    for name in entries(kind):
        try:
            cls = resolve(kind, name)
            candidate = cls(cls.Config())
        except Exception:  # noqa: BLE001 - a broken plugin or one without a default config is no partner
            continue
        if fits(candidate):
            _PARTNERS[key] = candidate
            return candidate
    raise NotApplicable(f"no registered {kind} component composes with "
                        + ", ".join(type(o).__name__ for o in others))


def _checkpoint_writers() -> dict[str, Callable[[Path], Path]]:
    """Model name -> writer of a tiny random checkpoint in that family's layout."""
    writers = {"llada": lambda d: checkpoints.make_llada_checkpoint(d, n_kv_heads=2, seed=7)}
    try:
        from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint
    except ImportError:
        return writers
    writers["dream"] = lambda d: make_qwen2_checkpoint(d, seed=7)
    writers["fast_dllm_v2"] = lambda d: make_qwen2_checkpoint(d, bd_size=SMALL_ITERATION["block_length"], seed=7)
    writers["qwen2"] = lambda d: make_qwen2_checkpoint(d, mask_token_id=None, extra_vocab=3, seed=7)  # plain AR config
    writers["wedlm"] = lambda d: make_qwen2_checkpoint(d, seed=7)
    from dlm.tools.moe_checkpoints import make_llada_moe_checkpoint

    writers["llada_moe"] = lambda d: make_llada_moe_checkpoint(d, num_key_value_heads=2, silent_router_rows=[1], seed=7)

    from dlm.tools.sdar_checkpoints import make_sdar_checkpoint

    writers["sdar"] = lambda d: make_sdar_checkpoint(d, block_size=SMALL_ITERATION["block_length"], seed=7)

    from dlm.tools.llada2_checkpoints import make_llada2_checkpoint

    writers["llada2"] = lambda d: make_llada2_checkpoint(d, num_key_value_heads=2, silent_router_rows=[0, 1], seed=7)

    from dlm.tools.diffusion_gemma_checkpoints import make_diffusion_gemma_checkpoint

    # the noise-canvas model: canvases of 8 from uniform noise, at most NOISE_STEPS steps each
    writers["diffusion_gemma"] = lambda d: make_diffusion_gemma_checkpoint(
        d, canvas_length=SMALL_ITERATION["block_length"], generation={"max_denoising_steps": NOISE_STEPS}, seed=7)

    from dlm.tools.mdlm_checkpoints import make_mdlm_checkpoint

    writers["mdlm"] = lambda d: make_mdlm_checkpoint(d, seed=7)
    return writers


def model_config_for(name: str) -> dict[str, Any]:
    """``{"path": ...}`` of a tiny checkpoint for model ``name`` (a known family, or a writer found as
    ``dlm.tools.checkpoints.make_<name>_checkpoint``)."""
    writer = _checkpoint_writers().get(name) or getattr(checkpoints, f"make_{name}_checkpoint", None)
    if writer is None:
        raise NotApplicable(
            f"no tiny checkpoint writer for model {name!r}; call check_model_adapter(cls, {{'path': ...}}) "
            "with a checkpoint of your own"
        )
    directory = _tmp_root() / f"model-{name}"
    if not (directory / "config.json").is_file():
        writer(directory)
    return {"path": str(directory)}
