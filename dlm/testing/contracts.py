"""Contract test kit: check a component against the contract of its interface, on tiny random checkpoints.

The same checks run over every registered component in dlm's own suite (tests/test_contracts.py), and a
plugin author calls them from the plugin's tests::

    from dlm.testing.contracts import check_decoding_strategy, contract_test

    def test_my_strategy_keeps_the_contract():
        check_decoding_strategy(MyStrategy, {"gamma": 0.5})   # raises ContractViolation naming each failure

    test_contract = contract_test("decoding", MyStrategy, {"gamma": 0.5})  # or: one pytest case per check

What each kind must do (one named check each, see :data:`CHECKS`):

- every kind: ``config`` — the ``Config`` is a frozen pydantic model; ``model_dump`` → ``model_validate``
  gives an equal config (also through JSON, as YAML does) and an unknown field is rejected;
  ``deterministic`` — the same seed gives the same result; ``batched`` — a left-padded batch gives what
  each prompt gives alone (row r of a batch draws random numbers from stream ``seed + r``, see dlm.rng);
- decoding: ``commits`` — on synthetic logits (MASK-favouring, flat, peaked, -inf entries, float32/64/bf16)
  it commits at least one position per row that has an eligible one, only eligible positions, never MASK,
  tokens inside the vocabulary; ``generation`` — it drives a real generation to the end;
- cache: ``plans`` — plans stay within the canvas, name the window's rows, cover the window, and the
  model's writes into the KV buffer stay inside the planned rows and columns; ``exact_at_refresh`` —
  a refresh forward (and any uncached whole-canvas forward) gives the logits of a full no-cache forward;
- iteration: ``windows`` — windows lie in the generation region, name rows that are not done, and only
  masked positions are eligible; ``never_rewrites`` — prompt and committed tokens never change (a finished
  row may only fill the columns after its first end token with end tokens); ``terminates``;
- model: ``capabilities``; ``logits`` — shape [rows, W, vocab] and finite; ``kv_forward`` — a forward
  through a KV buffer, and a block-only forward reading it, equal the plain forward.

Everything runs in float64 on CPU with 2-layer d=32 LLaDA-layout checkpoints written by
:func:`dlm.testing.make_llada_checkpoint` into a temporary directory, and 16-token generations.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from dlm.cache.base import CacheManager, ForwardPlan
from dlm.cache.none import NoCache, NoCacheConfig
from dlm.decoding.base import DecodingStrategy
from dlm.decoding.low_confidence import LowConfidence, LowConfidenceConfig
from dlm.errors import CompositionError
from dlm.iteration.base import IterationManager
from dlm.iteration.blockwise import Blockwise, BlockwiseConfig
from dlm.models.base import ModelAdapter
from dlm.pipeline import GenerationOutput, Pipeline
from dlm.registry import GROUPS, resolve
from dlm.rng import RowRNG
from dlm.state import GenerationState, Window
from dlm.testing import checkpoints

DTYPE = torch.float64
CPU = torch.device("cpu")
PROMPTS = ([5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19])  # lengths differ: left padding
SMALL_ITERATION = {"gen_length": 16, "block_length": 8, "steps": 16}
ATOL, RTOL = 1e-8, 1e-6


class ContractViolation(AssertionError):
    """A component breaks its interface's contract; the message names the component and each check."""


class NotApplicable(Exception):
    """A check that does not apply to this component (e.g. a cache the test model cannot serve)."""


@dataclass(frozen=True)
class Outcome:
    check: str
    status: str  # "passed", "skipped" or "failed"
    detail: str = ""


@dataclass
class ContractReport:
    """What :func:`check_component` found, one :class:`Outcome` per check."""

    kind: str
    component: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def raise_for_failures(self) -> "ContractReport":
        if self.failures:
            lines = "\n".join(f"  [{o.check}] {o.detail}" for o in self.failures)
            raise ContractViolation(f"{self.kind} component {self.component} breaks its contract:\n{lines}")
        return self


def _fail(message: str) -> None:
    raise ContractViolation(message)


# --- tiny fixtures ----------------------------------------------------------------------------------

_TMP: list[Path] = []
_CHECKPOINTS: dict[int, Path] = {}
_MODELS: dict[tuple[str, int], ModelAdapter] = {}
FAMILIES = ("llada", "fast_dllm_v2", "dream")  # test models tried, in order, for a cache or iteration manager


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
        cls = resolve("model", family)
        path = tiny_checkpoint(n_layers) if family == "llada" else model_config_for(family)["path"]
        _MODELS[family, n_layers] = cls.load(cls.Config(path=path), dtype=DTYPE, device=CPU)
    return _MODELS[family, n_layers]


def model_for(component: CacheManager | IterationManager) -> ModelAdapter:
    """The first tiny model of :data:`FAMILIES` that ``component`` accepts (its ``check`` passes)."""
    reasons = []
    for family in FAMILIES:
        if family == "llada" or family in _checkpoint_writers():
            model = tiny_model(family=family)
            problem = component.check(model.capabilities)
            if problem is None:
                return model
            reasons.append(f"{family}: {problem}")
    raise NotApplicable("no tiny test model fits: " + "; ".join(reasons))


def _checkpoint_writers() -> dict[str, Callable[[Path], Path]]:
    """Model name -> writer of a tiny random checkpoint in that family's layout."""
    writers = {"llada": lambda d: checkpoints.make_llada_checkpoint(d, n_kv_heads=2, seed=7)}
    try:
        from dlm.testing.qwen2 import make_qwen2_checkpoint
    except ImportError:
        return writers
    writers["dream"] = lambda d: make_qwen2_checkpoint(d, seed=7)
    writers["fast_dllm_v2"] = lambda d: make_qwen2_checkpoint(d, bd_size=SMALL_ITERATION["block_length"], seed=7)
    return writers


def model_config_for(name: str) -> dict[str, Any]:
    """``{"path": ...}`` of a tiny checkpoint for model ``name`` (a known family, or a writer found as
    ``dlm.testing.checkpoints.make_<name>_checkpoint``)."""
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


# --- decoding strategies -----------------------------------------------------------------------------


def synthetic_windows(mask_id: int = 2, vocab: int = 24, seed: int = 0) -> list[tuple[Tensor, Window]]:
    """Logits and windows that stress a strategy: MASK as the favourite, flat and peaked rows, -inf
    logits, ties, quotas of 0 or above the eligible count, a row with nothing eligible, three dtypes."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i, (b, w, scale, dtype) in enumerate([
        (1, 1, 1.0, torch.float32), (3, 8, 3.0, torch.float64), (2, 4, 0.1, torch.float32),
        (4, 8, 12.0, torch.float64), (3, 6, 1.0, torch.bfloat16), (2, 8, 0.0, torch.float64),
        (3, 5, 40.0, torch.float32), (5, 3, 2.0, torch.float64),
    ]):
        logits = torch.randn(b, w, vocab, generator=g, dtype=torch.float64) * scale
        if i % 2 == 0:  # the model favours MASK in some positions
            favour = torch.rand(b, w, generator=g) < 0.5
            logits[..., mask_id] = torch.where(favour, logits.max(dim=-1).values + 5.0, logits[..., mask_id])
        if i in (3, 6):  # -inf entries, as with logits_eos_inf
            logits[..., 0] = -torch.inf
            logits[..., vocab - 3 :] = -torch.inf
        eligible = torch.rand(b, w, generator=g) < 0.6
        eligible[:, 0] |= ~eligible.any(dim=1)
        if b >= 3 and i % 3 == 1:
            eligible[b - 1] = False  # a row with nothing eligible commits nothing
        count = eligible.sum(dim=1)
        quota = (torch.rand(b, generator=g) * (count + 2).to(torch.float64)).long()  # 0 … count+1
        rows = torch.arange(b, dtype=torch.long) * 2  # row ids are batch indices, not 0..b-1
        window = Window(rows=rows, start=10, end=10 + w, eligible=eligible, quota=quota, step=i % 3, mask_id=mask_id)
        cases.append((logits.to(dtype), window))
    return cases


def _rng(seed: int, window: Window) -> RowRNG:
    """Per-row streams as the pipeline makes them (row r seeded with seed + r), enough for ``window.rows``."""
    return RowRNG(seed, int(window.rows.max()) + 1, CPU)


def _check_commit(strategy: DecodingStrategy, logits: Tensor, window: Window, generator: RowRNG, case: int):
    commit = strategy.select(logits, window, generator)
    select, tokens = commit.select, commit.tokens
    where = f"synthetic case {case} (logits {tuple(logits.shape)} {logits.dtype})"
    if select.shape != window.eligible.shape or select.dtype != torch.bool:
        _fail(f"{where}: select must be bool {tuple(window.eligible.shape)}, got {select.dtype} {tuple(select.shape)}")
    if tokens.shape != window.eligible.shape or tokens.dtype.is_floating_point:
        _fail(f"{where}: tokens must be integer ids {tuple(window.eligible.shape)}, got {tokens.dtype} "
              f"{tuple(tokens.shape)}")
    if bool((select & ~window.eligible).any()):
        _fail(f"{where}: committed a position that is not eligible")
    chosen = tokens[select]
    if bool((chosen == window.mask_id).any()):
        _fail(f"{where}: committed the MASK token")
    if bool(((chosen < 0) | (chosen >= logits.shape[-1])).any()):
        _fail(f"{where}: committed a token id outside the vocabulary [0, {logits.shape[-1]})")
    starved = (select.sum(dim=1) == 0) & window.eligible.any(dim=1)
    if bool(starved.any()):
        _fail(f"{where}: committed nothing for rows {starved.nonzero()[:, 0].tolist()} that have eligible positions")
    return commit


def _decoding_commits(cls, config_dict):
    strategy = cls(_config(cls, config_dict))
    for i, (logits, window) in enumerate(synthetic_windows()):
        _check_commit(strategy, logits, window, _rng(i, window), i)


def _decoding_deterministic(cls, config_dict):
    for i, (logits, window) in enumerate(synthetic_windows(seed=1)):
        a = cls(_config(cls, config_dict)).select(logits, window, _rng(3, window))
        b = cls(_config(cls, config_dict)).select(logits, window, _rng(3, window))
        if not (torch.equal(a.select, b.select) and torch.equal(a.tokens[a.select], b.tokens[b.select])):
            _fail(f"synthetic case {i}: two calls with the same seed commit different positions or tokens")
    make = lambda: (tiny_model(), Blockwise(BlockwiseConfig(**SMALL_ITERATION)), cls(_config(cls, config_dict)),
                    NoCache(NoCacheConfig()))
    _same_outputs(_generate(*make(), seed=5), _generate(*make(), seed=5), "two generations with seed 5")


def _decoding_batched(cls, config_dict):
    """Row r of a batch, drawing from stream seed + r, commits what it commits alone with that seed."""
    strategy = cls(_config(cls, config_dict))
    for i, (logits, window) in enumerate(synthetic_windows(seed=2)):
        batched = strategy.select(logits, window, _rng(i, window))
        for r in range(len(window.rows)):
            row = int(window.rows[r])
            one = Window(torch.zeros(1, dtype=torch.long), window.start, window.end, window.eligible[r : r + 1],
                         window.quota[r : r + 1], window.step, window.mask_id)
            alone = strategy.select(logits[r : r + 1], one, RowRNG(i + row, 1, CPU))
            sel = batched.select[r]
            if not (torch.equal(sel, alone.select[0]) and torch.equal(batched.tokens[r][sel], alone.tokens[0][sel])):
                _fail(f"synthetic case {i}: row {r} commits differently in a batch than alone")
    make = lambda: (tiny_model(), Blockwise(BlockwiseConfig(**SMALL_ITERATION)), cls(_config(cls, config_dict)),
                    NoCache(NoCacheConfig()))
    _batched_vs_single(make, "generation with blockwise/none")


def _decoding_generation(cls, config_dict):
    model = tiny_model()
    for iteration in (BlockwiseConfig(**SMALL_ITERATION), BlockwiseConfig(gen_length=16, block_length=4, steps=4)):
        it = Blockwise(iteration)
        out = _generate(model, it, cls(_config(cls, config_dict)), NoCache(NoCacheConfig()))
        _check_finished(out, model.capabilities.mask_id)
        for r, steps in enumerate(out.tokens_per_step):
            if sum(steps) != iteration.gen_length:
                _fail(f"row {r} committed {sum(steps)} tokens in all, not gen_length={iteration.gen_length}")


# --- cache managers ----------------------------------------------------------------------------------


def _full_plan(state: GenerationState, plan: ForwardPlan) -> ForwardPlan:
    return ForwardPlan(rows=plan.rows, all_rows=plan.all_rows, start=0, end=state.length, kv=None,
                       key_end=state.length, refresh=False)


def _kv_snapshot(plan: ForwardPlan) -> tuple[Tensor, Tensor] | None:
    return None if plan.kv is None else (plan.kv.keys.clone(), plan.kv.values.clone())


def _kv_changed(plan: ForwardPlan, snap: tuple[Tensor, Tensor]) -> Tensor:
    """[B, L] bool: buffer slots whose keys or values differ from ``snap``."""
    dk = (plan.kv.keys != snap[0]).any(-1).any(2).any(0)  # [layers, B, H, L, D] -> [B, L]
    dv = (plan.kv.values != snap[1]).any(-1).any(2).any(0)
    return dk | dv


def _check_plan(state: GenerationState, plan: ForwardPlan, window: Window, shift: int) -> None:
    where = f"block {state.block} step {window.step}"
    if not (0 <= plan.start < plan.end <= state.length):
        _fail(f"{where}: plan computes columns [{plan.start}, {plan.end}) outside the canvas [0, {state.length})")
    if not torch.equal(plan.rows.cpu(), window.rows.cpu()):
        _fail(f"{where}: plan rows {plan.rows.tolist()} are not the window's rows {window.rows.tolist()}")
    if plan.all_rows != (len(plan.rows) == state.batch_size):
        _fail(f"{where}: plan.all_rows={plan.all_rows} but it names {len(plan.rows)} of {state.batch_size} rows")
    if plan.start > window.start - shift or plan.end < window.end - shift:
        _fail(f"{where}: plan [{plan.start}, {plan.end}) does not cover the window [{window.start}, {window.end})")
    if plan.kv is not None:
        if not (plan.end <= plan.key_end <= state.length):
            _fail(f"{where}: key_end {plan.key_end} is outside [{plan.end}, {state.length}]")
        if plan.kv.keys.shape[1] != state.batch_size or plan.kv.length != state.length:
            _fail(f"{where}: the KV buffer holds {plan.kv.keys.shape[1]} rows x {plan.kv.length} columns, the "
                  f"canvas is {state.batch_size} x {state.length}")


def _cache_probe(shift: int, exact: bool) -> Callable:
    """A model probe checking plans, buffer writes and (``exact``) refresh logits."""
    stats: dict[str, Any] = {"last": None, "exact_steps": True}

    def on_forward(state, plan, window, forward):
        _check_plan(state, plan, window, shift)
        prev = stats["last"]
        if prev is not None and plan.kv is not None and prev[0] is plan.kv:
            between = _kv_changed(plan, prev[1])  # changes made outside any forward (e.g. in plan())
            outside = between.clone()
            outside[plan.rows] = False
            if bool(outside.any()):
                _fail(f"block {state.block} step {window.step}: the KV buffer changed between forwards in rows "
                      f"{outside.any(1).nonzero()[:, 0].tolist()}, which this step does not run")
        snap = _kv_snapshot(plan)
        logits = forward(state, plan, window)
        if snap is not None:
            allowed = torch.zeros(state.batch_size, state.length, dtype=torch.bool, device=state.device)
            allowed[plan.rows, plan.start : plan.end] = True
            stray = _kv_changed(plan, snap) & ~allowed
            if bool(stray.any()):
                r, c = stray.nonzero()[0].tolist()
                _fail(f"block {state.block} step {window.step}: the forward wrote KV slot (row {r}, column {c}) "
                      f"outside the planned rows {plan.rows.tolist()} x columns [{plan.start}, {plan.end})")
            stats["last"] = (plan.kv, _kv_snapshot(plan))
        full_uncached = plan.kv is None and plan.start == 0 and plan.end == state.length
        stats["exact_steps"] &= bool(plan.refresh or full_uncached)
        if exact and (plan.refresh or full_uncached):
            reference = forward(state, _full_plan(state, plan), window)
            if not torch.allclose(logits, reference, rtol=RTOL, atol=ATOL):
                err = (logits - reference).abs().max().item()
                _fail(f"block {state.block} step {window.step}: a refresh forward gives logits that differ from a "
                      f"full no-cache forward by {err:.3g}")
        return logits

    on_forward.stats = stats
    return on_forward


class _Staggered(LowConfidence):
    """Odd rows commit their whole window at once, even rows follow the quota: rows leave windows early."""

    def select(self, logits: Tensor, window: Window, generator: RowRNG):
        commit = super().select(logits, window, generator)
        odd = (window.rows % 2 == 1)[:, None]
        return type(commit)(torch.where(odd, window.eligible, commit.select), commit.tokens)


def _cache_runs(cls, config_dict, exact: bool):
    model = model_for(cls(_config(cls, config_dict)))
    for iteration, decoding in (
        (BlockwiseConfig(**SMALL_ITERATION), LowConfidence(LowConfidenceConfig())),
        (BlockwiseConfig(**SMALL_ITERATION), _Staggered(LowConfidenceConfig())),
        (BlockwiseConfig(gen_length=16, block_length=4, steps=4), LowConfidence(LowConfidenceConfig())),
    ):
        on_forward = _cache_probe(model.capabilities.logit_shift, exact)
        it = Blockwise(iteration)
        out = _generate(_ModelProbe(model, on_forward), it, decoding, cls(_config(cls, config_dict)))
        _check_finished(out, model.capabilities.mask_id)
        if exact and on_forward.stats["exact_steps"]:  # e.g. every block completed in its refresh
            reference = _generate(model, Blockwise(iteration), type(decoding)(LowConfidenceConfig()),
                                  NoCache(NoCacheConfig()))
            _same_outputs(out, reference, "every forward was exact (refresh or uncached), so tokens must equal the no-cache generation")


def _cache_plans(cls, config_dict):
    _cache_runs(cls, config_dict, exact=False)


def _cache_exact(cls, config_dict):
    _cache_runs(cls, config_dict, exact=True)


def _cache_make(cls, config_dict):
    model = model_for(cls(_config(cls, config_dict)))
    return lambda: (model, Blockwise(BlockwiseConfig(**SMALL_ITERATION)), LowConfidence(LowConfidenceConfig()),
                    cls(_config(cls, config_dict)))


def _cache_deterministic(cls, config_dict):
    make = _cache_make(cls, config_dict)
    a, b = _generate(*make()), _generate(*make())
    _same_outputs(a, b, "two generations with the same seed")
    if a.nfe != b.nfe:
        _fail(f"two generations with the same seed report NFE {a.nfe} and {b.nfe}")


def _cache_batched(cls, config_dict):
    _batched_vs_single(_cache_make(cls, config_dict), "blockwise/low_confidence")


# --- iteration managers ------------------------------------------------------------------------------


class _IterationProbe:
    """Wraps an iteration manager's ``window`` to check each window and the canvas changes before it."""

    def __init__(self, manager: IterationManager) -> None:
        self.manager, self.previous, self.windows = manager, None, 0
        self._window = manager.window
        manager.window = self.window  # instance attribute: the pipeline calls this one

    def window(self, state: GenerationState) -> Window:
        self.check_canvas(state)
        window = self._window(state)
        self.windows += 1
        rows = window.rows.cpu()
        where = f"window {self.windows}"
        if len(rows) == 0 or len(set(rows.tolist())) != len(rows) or int(rows.min()) < 0 or int(rows.max()) >= state.batch_size:
            _fail(f"{where}: rows {rows.tolist()} must be distinct batch rows and at least one")
        if bool(state.done[window.rows].any()):
            _fail(f"{where}: names rows that are done: {window.rows[state.done[window.rows]].tolist()}")
        if not (state.gen_start <= window.start < window.end <= state.length):
            _fail(f"{where}: [{window.start}, {window.end}) is not inside the generation region "
                  f"[{state.gen_start}, {state.length})")
        if window.eligible.shape != (len(rows), window.width) or window.eligible.dtype != torch.bool:
            _fail(f"{where}: eligible must be bool {(len(rows), window.width)}, got {tuple(window.eligible.shape)}")
        masked = state.masked()[window.rows, window.start : window.end]
        if bool((window.eligible & ~masked).any()):
            _fail(f"{where}: marks positions eligible that are not masked (they would be rewritten)")
        if window.quota.shape != (len(rows),) or bool((window.quota < 0).any()):
            _fail(f"{where}: quota must be [{len(rows)}] and non-negative, got {window.quota.tolist()}")
        if window.mask_id != state.mask_id:
            _fail(f"{where}: mask_id {window.mask_id} is not the model's {state.mask_id}")
        return window

    def check_canvas(self, state: GenerationState) -> None:
        canvas, done = state.canvas.clone(), state.done.clone()
        if self.previous is not None:
            before, was_done = self.previous
            changed = canvas != before
            if bool(changed[:, : state.gen_start].any()):
                _fail(f"after window {self.windows}: a prompt or padding column changed")
            if bool(changed[was_done].any()):
                _fail(f"after window {self.windows}: a finished row changed")
            gen, old = canvas[:, state.gen_start :], before[:, state.gen_start :]
            ends = torch.isin(gen, torch.tensor(state.eos_ids, device=gen.device))
            first_end = torch.where(ends.any(1), ends.int().argmax(1), gen.shape[1])
            after_end = torch.arange(gen.shape[1], device=gen.device)[None, :] > first_end[:, None]
            rewritten = (old != state.mask_id) & (gen != old) & ~(after_end & ends)
            if bool(rewritten.any()):
                r, c = rewritten.nonzero()[0].tolist()
                _fail(f"after window {self.windows}: row {r} generation column {c} was rewritten from "
                      f"{int(old[r, c])} to {int(gen[r, c])}")
        self.previous = (canvas, done)


def _iteration_make(cls, config_dict):
    model = model_for(cls(_config(cls, config_dict)))
    return lambda: (model, cls(_config(cls, config_dict)), LowConfidence(LowConfidenceConfig()),
                    NoCache(NoCacheConfig()))


def _iteration_run(cls, config_dict) -> tuple[GenerationOutput, _IterationProbe]:
    model, manager, decoding, cache = _iteration_make(cls, config_dict)()
    probe = _IterationProbe(manager)
    out = _generate(model, manager, decoding, cache)
    probe.check_canvas(out.state)
    return out, probe


def _iteration_windows(cls, config_dict):
    _, probe = _iteration_run(cls, config_dict)
    if probe.windows == 0:
        _fail("the generation ran no step")


def _iteration_never_rewrites(cls, config_dict):
    _iteration_run(cls, config_dict)


def _iteration_terminates(cls, config_dict):
    out, _ = _iteration_run(cls, config_dict)
    if not bool(out.state.done.all()):
        _fail("the generation loop ended with rows not marked done")
    _check_finished(out, out.state.mask_id)


def _iteration_deterministic(cls, config_dict):
    make = _iteration_make(cls, config_dict)
    _same_outputs(_generate(*make(), seed=3), _generate(*make(), seed=3), "two generations with seed 3")


def _iteration_batched(cls, config_dict):
    _batched_vs_single(_iteration_make(cls, config_dict), "generation with low_confidence/none")


# --- model adapters ------------------------------------------------------------------------------------


def _load_model(cls, config_dict) -> ModelAdapter:
    return cls.load(_config(cls, config_dict), dtype=DTYPE, device=CPU)


def _model_state(model: ModelAdapter, prompts=PROMPTS) -> tuple[GenerationState, Window]:
    iteration = Blockwise(BlockwiseConfig(**SMALL_ITERATION))
    state = iteration.start([torch.tensor(p) for p in prompts], model.capabilities, CPU)
    return state, iteration.window(state)


def _whole(state: GenerationState, window: Window, kv=None) -> ForwardPlan:
    return ForwardPlan(rows=window.rows, all_rows=len(window.rows) == state.batch_size, start=0, end=state.length,
                       kv=kv, key_end=state.length, refresh=kv is not None)


def _model_capabilities(cls, config_dict):
    caps = _load_model(cls, config_dict).capabilities
    if not caps.eos_ids or caps.mask_id in caps.eos_ids:
        _fail(f"eos_ids {caps.eos_ids} must be non-empty and must not contain mask_id {caps.mask_id}")
    if caps.max_length < 1 or caps.logit_shift not in (0, 1):
        _fail(f"max_length {caps.max_length} must be positive and logit_shift {caps.logit_shift} 0 or 1")
    if caps.attention == "block_causal" and not caps.block_size:
        _fail("a block-causal model must declare its block_size")


def _model_logits(cls, config_dict):
    model = _load_model(cls, config_dict)
    state, window = _model_state(model)
    logits = model.forward(state, _whole(state, window), window)
    vocab = logits.shape[-1] if logits.dim() == 3 else -1
    if tuple(logits.shape) != (len(window.rows), window.width, vocab):
        _fail(f"logits have shape {tuple(logits.shape)}, expected [rows={len(window.rows)}, W={window.width}, vocab]")
    if not bool(torch.isfinite(logits).all()):
        _fail("logits hold NaN or infinite values")
    if not 0 <= model.capabilities.mask_id < vocab:
        _fail(f"mask_id {model.capabilities.mask_id} is outside the vocabulary of {vocab} logits")


def _model_kv_forward(cls, config_dict):
    model = _load_model(cls, config_dict)
    if not model.capabilities.kv_cache:
        raise NotApplicable("the model declares kv_cache=False")
    state, window = _model_state(model)
    plain = model.forward(state, _whole(state, window), window)
    kv = model.new_kv(state.batch_size, state.length)
    through = model.forward(state, _whole(state, window, kv), window)
    if not torch.allclose(through, plain, rtol=RTOL, atol=ATOL):
        _fail("a whole-canvas forward through a KV buffer differs from the plain forward")
    shift = model.capabilities.logit_shift
    block = ForwardPlan(rows=window.rows, all_rows=True, start=window.start - shift, end=window.end - shift, kv=kv,
                        key_end=state.length, refresh=False)
    cached = model.forward(state, block, window)
    if not torch.allclose(cached, plain, rtol=RTOL, atol=ATOL):
        _fail("a window-only forward reading the K/V it just wrote differs from the plain forward "
              f"(max error {(cached - plain).abs().max().item():.3g})")


def _model_deterministic(cls, config_dict):
    model = _load_model(cls, config_dict)
    state, window = _model_state(model)
    if not torch.equal(model.forward(state, _whole(state, window), window),
                       model.forward(state, _whole(state, window), window)):
        _fail("two identical forwards give different logits")
    make = lambda: (model, Blockwise(BlockwiseConfig(**SMALL_ITERATION)), LowConfidence(LowConfidenceConfig()),
                    NoCache(NoCacheConfig()))
    out = _generate(*make())
    _check_finished(out, model.capabilities.mask_id)
    _same_outputs(out, _generate(*make()), "two generations with the same seed")


def _model_batched(cls, config_dict):
    model = _load_model(cls, config_dict)
    state, window = _model_state(model)
    batched = model.forward(state, _whole(state, window), window)
    for r, prompt in enumerate(PROMPTS):
        s1, w1 = _model_state(model, [prompt])
        alone = model.forward(s1, _whole(s1, w1), w1)
        if not torch.allclose(batched[r], alone[0], rtol=RTOL, atol=ATOL):
            _fail(f"prompt {r}: logits in a left-padded batch differ from its logits alone by "
                  f"{(batched[r] - alone[0]).abs().max().item():.3g}")


# --- registry of checks and entry points -----------------------------------------------------------------

Check = Callable[[type, Mapping[str, Any] | None], None]
CHECKS: dict[str, dict[str, Check]] = {
    "decoding": {"config": check_config, "commits": _decoding_commits, "deterministic": _decoding_deterministic,
                 "batched": _decoding_batched, "generation": _decoding_generation},
    "cache": {"config": check_config, "plans": _cache_plans, "exact_at_refresh": _cache_exact,
              "deterministic": _cache_deterministic, "batched": _cache_batched},
    "iteration": {"config": check_config, "windows": _iteration_windows, "never_rewrites": _iteration_never_rewrites,
                  "terminates": _iteration_terminates, "deterministic": _iteration_deterministic,
                  "batched": _iteration_batched},
    "model": {"config": check_config, "capabilities": _model_capabilities, "logits": _model_logits,
              "kv_forward": _model_kv_forward, "deterministic": _model_deterministic, "batched": _model_batched},
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
            pytest.fail(f"{kind} component {component!r}, check {check!r}: {outcome.detail}", pytrace=False)

    return test_contract
