"""The registry of checks (:data:`CHECKS`: kind -> check name -> check) and the entry points:
:func:`run_check` runs one check and reports an :class:`Outcome`, :func:`check_component` and the
``check_<kind>`` shorthands run them all and raise on failures (naming the plugin API version checked
against, :data:`dlm.messages.PLUGIN_API`), :func:`contract_test` makes a pytest test with one case per check."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel, ValidationError

from dlm.cache.base import CacheManager
from dlm.decoding.base import DecodingStrategy
from dlm.iteration.base import IterationManager
from dlm.models.base import ModelAdapter
from dlm.registry import GROUPS, resolve
from dlm.messages import PLUGIN_API
from dlm.testing.contracts.cache import (
    _cache_batched,
    _cache_concurrent,
    _cache_deterministic,
    _cache_exact,
    _cache_joins,
    _cache_plans,
)
from dlm.testing.contracts.core import SMALL_ITERATION, ContractReport, ContractViolation, NotApplicable, Outcome
from dlm.testing.contracts.decoding import (
    _decoding_batched,
    _decoding_commits,
    _decoding_concurrent,
    _decoding_deterministic,
    _decoding_generation,
    _decoding_joins,
    _decoding_memory,
)
from dlm.testing.contracts.fixtures import model_config_for
from dlm.testing.contracts.iteration import (
    _iteration_batched,
    _iteration_concurrent,
    _iteration_deterministic,
    _iteration_joins,
    _iteration_never_rewrites,
    _iteration_terminates,
    _iteration_windows,
)
from dlm.testing.contracts.model import (
    _model_batched,
    _model_capabilities,
    _model_concurrent,
    _model_deterministic,
    _model_joins,
    _model_kv_forward,
    _model_logits,
    _model_soft_inputs,
)
from dlm.testing.contracts.probes import check_config


Check = Callable[[type, Mapping[str, Any] | None], None]
CHECKS: dict[str, dict[str, Check]] = {
    "decoding": {"config": check_config, "commits": _decoding_commits, "deterministic": _decoding_deterministic,
                 "batched": _decoding_batched, "memory": _decoding_memory, "generation": _decoding_generation,
                 "concurrent": _decoding_concurrent, "joins": _decoding_joins},
    "cache": {"config": check_config, "plans": _cache_plans, "exact_at_refresh": _cache_exact,
              "deterministic": _cache_deterministic, "batched": _cache_batched, "concurrent": _cache_concurrent,
              "joins": _cache_joins},
    "iteration": {"config": check_config, "windows": _iteration_windows, "never_rewrites": _iteration_never_rewrites,
                  "terminates": _iteration_terminates, "deterministic": _iteration_deterministic,
                  "batched": _iteration_batched, "concurrent": _iteration_concurrent, "joins": _iteration_joins},
    "model": {"config": check_config, "capabilities": _model_capabilities, "logits": _model_logits,
              "kv_forward": _model_kv_forward, "soft_inputs": _model_soft_inputs, "deterministic": _model_deterministic, "batched": _model_batched,
              "concurrent": _model_concurrent, "joins": _model_joins},
}
BASES = {"decoding": DecodingStrategy, "cache": CacheManager, "iteration": IterationManager, "model": ModelAdapter}


def _component(kind: str, component: type | str) -> tuple[type, str]:
    if kind not in CHECKS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(GROUPS)}")
    if isinstance(component, str):
        return resolve(kind, component), component
    if not (isinstance(component, type) and issubclass(component, BASES[kind])):
        raise ContractViolation(f"{component!r} is not a subclass of {BASES[kind].__name__}")
    if not (isinstance(getattr(component, "Config", None), type) and issubclass(component.Config, BaseModel)):
        raise ContractViolation(f"{component.__name__} has no pydantic `Config` class attribute")
    return component, component.__name__


def default_config(kind: str, cls: type, name: str | None = None) -> dict[str, Any]:
    """The config the kit uses when none is given: a tiny checkpoint for a model known by ``name``;
    the fields of :data:`SMALL_ITERATION` an iteration manager has (16-token generations); else ``{}``."""
    if kind == "model" and name is not None:
        return model_config_for(name)
    if kind == "iteration":
        small = {k: v for k, v in SMALL_ITERATION.items() if k in cls.Config.model_fields}
        try:
            cls.Config.model_validate(small)
            return small
        except ValidationError:
            return {}
    return {}


@contextmanager
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they cost 50x in spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_check(kind: str, component: type | str, check: str, config_dict: Mapping[str, Any] | None = None) -> Outcome:
    """Run one named check of ``kind`` on ``component`` (a class, or a registered name)."""
    if check not in CHECKS.get(kind, {}):
        raise ValueError(f"no check {check!r} for {kind}; checks are {', '.join(CHECKS.get(kind, {}))}")
    try:
        cls, _ = _component(kind, component)
        if config_dict is None:
            config_dict = default_config(kind, cls, component if isinstance(component, str) else None)
        with _one_thread():
            CHECKS[kind][check](cls, config_dict)
    except NotApplicable as why:
        return Outcome(check, "skipped", str(why))
    except Exception as err:  # a contract failure, or the component raising where it must not
        detail = str(err) if isinstance(err, ContractViolation) else f"raised {type(err).__name__}: {err}"
        return Outcome(check, "failed", detail)
    return Outcome(check, "passed")


def check_component(kind: str, component: type | str, config_dict: Mapping[str, Any] | None = None,
                    *, checks: list[str] | None = None) -> ContractReport:
    """Run every check of ``kind`` (or ``checks``); raise :class:`ContractViolation` listing all failures."""
    label = component if isinstance(component, str) else getattr(component, "__name__", repr(component))
    report = ContractReport(kind, str(label))
    for check in checks or CHECKS[kind]:
        report.outcomes.append(run_check(kind, component, check, config_dict))
    return report.raise_for_failures()


def check_decoding_strategy(cls: type | str, config_dict: Mapping[str, Any] | None = None) -> ContractReport:
    return check_component("decoding", cls, config_dict)


def check_cache_manager(cls: type | str, config_dict: Mapping[str, Any] | None = None) -> ContractReport:
    return check_component("cache", cls, config_dict)


def check_iteration_manager(cls: type | str, config_dict: Mapping[str, Any] | None = None) -> ContractReport:
    """``config_dict`` should keep the generation short (e.g. 16 tokens): every check runs generations."""
    return check_component("iteration", cls, config_dict)


def check_model_adapter(cls: type | str, config_dict: Mapping[str, Any] | None = None) -> ContractReport:
    """``config_dict`` points the adapter at a tiny checkpoint (for a name, one is written when it can be)."""
    return check_component("model", cls, config_dict)


def contract_test(kind: str, component: type | str, config_dict: Mapping[str, Any] | None = None):
    """A pytest test function running each check of ``kind`` as its own case; assign it at module level::

        test_contract = contract_test("decoding", MyStrategy, {"gamma": 0.5})
    """
    import pytest

    @pytest.mark.parametrize("check", list(CHECKS[kind]))
    def test_contract(check: str) -> None:
        outcome = run_check(kind, component, check, config_dict)
        if outcome.status == "skipped":
            pytest.skip(outcome.detail)
        if outcome.status == "failed":
            pytest.fail(f"{kind} component {component!r}, check {check!r} (plugin API {PLUGIN_API}): "
                        f"{outcome.detail}", pytrace=False)

    return test_contract
