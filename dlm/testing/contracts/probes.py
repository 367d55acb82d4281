"""Helpers the checks of several kinds share: :class:`_ModelProbe` (a model wrapper that sees every
forward), bounded generations (:func:`_generate` fails instead of hanging), comparisons of generations
(same seed, batched vs alone), the checks every kind that runs generations shares (``concurrent``: two
generations through one pipeline at once; ``joins``: rows joining a running generation, see
:mod:`dlm.testing.joins`), the probe that a component object keeps no per-run state
(:func:`_holds_only_config`), and the ``config`` check every kind runs (:func:`check_config`)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from dlm.errors import CompositionError
from dlm.messages import ForwardPlan
from dlm.models.base import ModelAdapter
from dlm.pipeline import GenerationOutput, Pipeline
from dlm.state import GenerationState
from dlm.testing.contracts.core import OTHER_PROMPTS, PROMPTS, NotApplicable, _fail
from dlm.testing.joins import joined_outputs


# --- probes: wrappers that check each step without changing what runs -------------------------------


class _ModelProbe:
    """Delegates to a model adapter; ``on_forward(state, plan, forward)`` sees every call."""

    def __init__(self, model: ModelAdapter, on_forward: Callable) -> None:
        self._model, self._on_forward = model, on_forward

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def forward(self, state: GenerationState, plan: ForwardPlan) -> Tensor:
        return self._on_forward(state, plan, self._model.forward)


def _pipeline(model, iteration, decoding, cache, *, seed=0) -> Pipeline:
    try:
        return Pipeline(model, iteration, decoding, cache, seed=seed)
    except CompositionError as err:
        raise NotApplicable(f"cannot be composed with the tiny test model: {err}") from err


def _generate(model, iteration, decoding, cache, prompts=PROMPTS, *, seed=0, trace=None) -> GenerationOutput:
    """One generation, failing if it takes more steps than it could need (so no check can hang)."""
    pipe = _pipeline(model, iteration, decoding, cache, seed=seed)
    bound = _step_bound()

    def both(state: GenerationState) -> None:
        bound(state)
        if trace is not None:
            trace(state)

    return pipe.generate(input_ids=[list(p) for p in prompts], trace=both)


def _step_limit(gen_length: int) -> int:
    return 2 * gen_length + 8


def _step_bound() -> Callable[[GenerationState], None]:
    """A trace hook failing once a generation takes more steps than it has masked positions (+ slack)."""
    counter = {"steps": 0}

    def trace(state: GenerationState) -> None:
        counter["steps"] += 1
        if counter["steps"] > _step_limit(state.gen_length):
            _fail(f"the generation did not end after {counter['steps']} steps ({state.gen_length} tokens to fill)")

    return trace


def _same_outputs(a: GenerationOutput, b: GenerationOutput, what: str) -> None:
    for r, (x, y) in enumerate(zip(a.generated, b.generated)):
        if not torch.equal(x, y):
            _fail(f"{what}: row {r} differs: {x.tolist()} vs {y.tolist()}")


def _same_rows(got: list[tuple[list[int], int]], want: list[tuple[list[int], int]], what: str) -> None:
    """(tokens, NFE) per row, compared."""
    for r, ((tokens, nfe), (alone, alone_nfe)) in enumerate(zip(got, want)):
        if tokens != alone:
            _fail(f"{what}: row {r} gives {tokens} but {alone} alone")
        if nfe != alone_nfe:
            _fail(f"{what}: row {r} takes NFE {nfe} but {alone_nfe} alone")


def _rows_of(out: GenerationOutput) -> list[tuple[list[int], int]]:
    return [(g.tolist(), n) for g, n in zip(out.generated, out.nfe)]


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


# --- a component object holds only its config ------------------------------------------------------------


def _snapshot(obj: Any) -> dict[str, Any]:
    """What ``obj``'s attributes are now: identity, and a copy of tensors' contents."""
    return {k: (id(v), v.detach().clone() if isinstance(v, Tensor) else None) for k, v in vars(obj).items()}


def _holds_only_config(obj: Any, what: str) -> Callable[[], None]:
    """A probe to call at any time (after each step, after a generation): fails once ``obj`` gained, lost or
    replaced an attribute, or changed a tensor attribute's contents since now. Per-run memory belongs on
    the state (``start`` returns it), not on the component."""
    before = _snapshot(obj)

    def check() -> None:
        now = vars(obj)
        if set(now) != set(before):
            added, gone = sorted(set(now) - set(before)), sorted(set(before) - set(now))
            _fail(f"{what} object changed its attributes during a generation (added {added}, removed {gone}); "
                  "per-run memory belongs on the state: return it from start() and read it with "
                  "self.memory(state)")
        for k, (ident, tensor) in before.items():
            value = now[k]
            if id(value) != ident or (tensor is not None and not torch.equal(value, tensor)):
                _fail(f"{what} object's attribute {k!r} changed during a generation; per-run memory belongs on "
                      "the state: return it from start() and read it with self.memory(state)")

    return check


# --- two generations through one pipeline at once -----------------------------------------------------------

_SEEDS_A, _SEEDS_B = [0, 1, 2], [7, 8, 9]


def _concurrent(make: Callable[[], tuple], what: str, own: int | None = None) -> None:
    """Two generations through ONE pipeline object at once give what each gives alone: interleaved step by
    step (``Pipeline.start``/``Pipeline.step`` on two states), and from two threads calling ``generate``.
    ``own``: the index in ``make()`` of the component under test, which must keep no per-run state."""
    ids_a, ids_b = [list(p) for p in PROMPTS], [list(p) for p in OTHER_PROMPTS]
    alone_a = _rows_of(_pipeline(*make()).generate(input_ids=ids_a, seeds=_SEEDS_A, trace=_step_bound()))
    alone_b = _rows_of(_pipeline(*make()).generate(input_ids=ids_b, seeds=_SEEDS_B, trace=_step_bound()))
    components = make()
    pipe = _pipeline(*components)
    names = ("model adapter", "iteration manager", "decoding strategy", "cache manager")
    unchanged = (lambda: None) if own is None else _holds_only_config(components[own], f"the {names[own]}")
    a = pipe.start(input_ids=ids_a, seeds=_SEEDS_A)
    b = pipe.start(input_ids=ids_b, seeds=_SEEDS_B)
    limit = _step_limit(max(a.gen_length, b.gen_length))
    for step in range(limit + 1):
        if pipe.done(a) and pipe.done(b):
            break
        if step == limit:
            _fail(f"{what}: two interleaved generations did not end after {limit} steps each")
        for state in (a, b) if step % 2 == 0 else (b, a):  # both orders: neither generation leads
            if not pipe.done(state):
                pipe.step(state)
    _same_rows(_rows_of(pipe.output(a)), alone_a, f"{what}: generation A interleaved step by step with another "
               "on one pipeline")
    _same_rows(_rows_of(pipe.output(b)), alone_b, f"{what}: generation B interleaved step by step with another "
               "on one pipeline")
    unchanged()

    results: dict[str, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(name: str, ids, seeds) -> None:
        try:
            barrier.wait(timeout=60)
            results[name] = [_rows_of(pipe.generate(input_ids=ids, seeds=seeds, trace=_step_bound()))
                             for _ in range(2)]
        except BaseException as err:  # noqa: BLE001 - reported below, in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=("A", ids_a, _SEEDS_A), daemon=True),
               threading.Thread(target=worker, args=("B", ids_b, _SEEDS_B), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    if any(t.is_alive() for t in threads):
        _fail(f"{what}: two threads calling generate on one pipeline did not end")
    if errors:
        err = errors[0]
        _fail(f"{what}: a generation raised while another thread ran one on the same pipeline: "
              f"{type(err).__name__}: {err}")
    for name, want in (("A", alone_a), ("B", alone_b)):
        for got in results[name]:
            _same_rows(got, want, f"{what}: generation {name} from a thread, while another thread ran one on the "
                       "same pipeline")


# --- rows joining a running generation ----------------------------------------------------------------------

JOIN_SCHEDULES = ((0, 0, 1, 2, 3, 5), (0, 2, 2, 4, 8, 11))  # steps after which each of six rows joins


def _not_joinable(component: Any) -> None:
    if not getattr(component, "joinable", False):
        raise NotApplicable(f"{type(component).__name__} declares joinable = False: rows that arrive while a "
                            "generation runs start a generation of their own")


def _joins(make: Callable[[], tuple], what: str) -> None:
    """Rows joining a running generation at several steps give their alone tokens and NFE."""
    ids = [list(p) for p in PROMPTS + OTHER_PROMPTS]
    seeds = list(range(3, 3 + len(ids)))
    pipe = _pipeline(*make())
    if not pipe.joinable:
        raise NotApplicable("the kit's companion components are not joinable with it")  # never for dlm's own
    alone = [_rows_of(pipe.generate(input_ids=[row], seeds=[seed], trace=_step_bound()))[0]  # as alone_outputs,
             for row, seed in zip(ids, seeds)]  # bounded
    limit = len(ids) * _step_limit(pipe.start(input_ids=[ids[0]]).gen_length)
    for join_at in JOIN_SCHEDULES:
        joined = joined_outputs(pipe, ids, seeds, join_at, max_steps=limit)
        _same_rows(joined, alone, f"{what}: rows joining a running generation after steps {list(join_at)}")


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
