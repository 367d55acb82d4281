"""Checks of a decoding strategy: ``commits`` on :func:`synthetic_windows` (logits and windows that
stress a strategy), ``deterministic`` and ``batched`` (per-row random streams and per-row memory, on synthetic
windows and in a real generation), ``memory`` (the strategy object keeps no per-run state: its memory is on
the state, so a second generation gives what a fresh strategy gives), ``generation`` (it drives a tiny-model
generation to the end), ``concurrent`` (two generations through one pipeline at once) and ``joins`` (rows
joining a running generation, for a strategy declaring ``joinable = True``).

On synthetic windows the kit drives a strategy as the pipeline does: ``start`` on a canvas holding the
window (eligible positions masked, the rest committed), its memory kept on the state
(``state.memory["decoding"]``), ``prepare`` (a widened logits span gets random logits around the window's),
``select(state, window, logits, generator)``. Windows carry per-row geometry, and in some cases the rows are
at different steps and blocks. A strategy that attaches candidates is checked in real generations only."""

from __future__ import annotations

import torch
from torch import Tensor

from typing import Callable

from dlm import compat
from dlm.cache.none import NoCache, NoCacheConfig
from dlm.decoding.base import DecodingStrategy
from dlm.iteration.blockwise import Blockwise, BlockwiseConfig
from dlm.iteration.canvases import Canvases, CanvasesConfig
from dlm.messages import Candidates, Commit, Edits, Finish, Geometry, Idle, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.testing.contracts.core import CPU, OTHER_PROMPTS, PROMPTS, SMALL_ITERATION, NotApplicable, _fail
from dlm.testing.contracts.fixtures import model_for, tiny_model
from dlm.testing.contracts.probes import (
    _batched_vs_single,
    _check_finished,
    _concurrent,
    _config,
    _generate,
    _holds_only_config,
    _joins,
    _not_joinable,
    _same_outputs,
)


def synthetic_windows(mask_id: int = 2, vocab: int = 24, seed: int = 0) -> list[tuple[Tensor, Window]]:
    """Logits and windows that stress a strategy: MASK as the favourite, flat and peaked rows, -inf
    logits, ties, quotas of 0 or above the eligible count, a row with nothing eligible, three dtypes, rows
    at different steps and blocks of their schedules (per-row geometry)."""
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
        geometry = Geometry.uniform(b, step=i % 3, block=i % 2, block_start=10, block_end=10 + w, total_steps=16)
        if b > 1 and i % 2 == 1:  # rows at different places: one joined later, one is further on
            geometry = Geometry(step=torch.arange(b) % 3, block=torch.arange(b) % 2,
                                block_start=torch.full((b,), 10), block_end=torch.full((b,), 10 + w),
                                total_steps=16)
        window = Window(rows=rows, start=10, end=10 + w, eligible=eligible, quota=quota, mask_id=mask_id,
                        geometry=geometry)
        cases.append((logits.to(dtype), window))
    return cases


def _rng(seed: int, window: Window) -> RowRNG:
    """Per-row streams as the pipeline makes them (row r seeded with seed + r), enough for ``window.rows``."""
    return RowRNG(seed, int(window.rows.max()) + 1, CPU)


def _synthetic_state(window: Window, batch: int) -> GenerationState:
    """A canvas around ``window``: its eligible positions masked, every other position committed."""
    length = window.end + 4
    canvas = torch.full((batch, length), 5, dtype=torch.long)
    region = canvas[window.rows, window.start : window.end]
    canvas[window.rows, window.start : window.end] = region.masked_fill(window.eligible, window.mask_id)
    zeros = torch.zeros(batch, dtype=torch.long)
    return GenerationState(canvas=canvas, pad=zeros, prompt_lengths=zeros + 1, gen_start=1, gen_length=length - 1,
                           mask_id=window.mask_id, eos_ids=(0,), nfe=zeros.clone(),
                           done=torch.zeros(batch, dtype=torch.bool))


def _one_row(window: Window, r: int) -> Window:
    """Row ``r`` of ``window`` as a window of its own (batch row 0), with its own geometry."""
    g = window.geometry
    geometry = Geometry(g.step[r : r + 1], g.block[r : r + 1], g.block_start[r : r + 1], g.block_end[r : r + 1],
                        g.total_steps)
    return Window(rows=torch.zeros(1, dtype=torch.long), start=window.start, end=window.end,
                  eligible=window.eligible[r : r + 1], quota=window.quota[r : r + 1], mask_id=window.mask_id,
                  geometry=geometry)


def _select(strategy: DecodingStrategy, logits: Tensor, window: Window, generator: RowRNG) -> tuple[Commit, Window]:
    """One step as the pipeline runs it on a fresh generation holding ``window``."""
    state = _synthetic_state(window, int(window.rows.max()) + 1)
    state.memory["decoding"] = strategy.start(state)
    step = strategy.prepare(state, window)
    if step.get(Candidates) is not None:
        raise NotApplicable("the strategy attaches candidates; it is checked in real generations")
    if step.widened:
        if step.logits_start < 0 or step.logits_end > state.length:
            _fail(f"prepare widened the logits span to [{step.logits_start}, {step.logits_end}), outside the "
                  f"canvas [0, {state.length})")
        g = torch.Generator().manual_seed(int(window.start))
        span = torch.randn(logits.shape[0], step.logits_end - step.logits_start, logits.shape[-1], generator=g)
        span = span.to(logits.dtype)
        lo = window.start - step.logits_start
        span[:, lo : lo + window.width] = logits
        logits = span
    return strategy.select(state, step, logits, generator), step


def _check_commit(strategy: DecodingStrategy, logits: Tensor, window: Window, generator: RowRNG, case: int):
    commit, window = _select(strategy, logits, window, generator)
    if not isinstance(commit, Commit):
        _fail(f"synthetic case {case}: select returned {type(commit).__name__}, not a dlm.messages.Commit")
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
    finish, idle = commit.get(Finish), commit.get(Idle)
    if finish is not None:
        starved &= ~finish.rows
    if idle is not None:
        starved &= ~idle.rows
    if bool(starved.any()):
        _fail(f"{where}: committed nothing for rows {starved.nonzero()[:, 0].tolist()} that have eligible positions")
    edits = commit.get(Edits)
    if edits is not None:
        _check_edits(edits, window, select, where)
    return commit


def _check_edits(edits: Edits, window: Window, select: Tensor, where: str) -> None:
    """An Edits extension rewrites only placed tokens of each row's block (never eligible, never to MASK)."""
    span = (len(window.rows), window.logits_end - window.logits_start)
    if tuple(edits.mask.shape) != span or tuple(edits.tokens.shape) != span or edits.mask.dtype != torch.bool:
        _fail(f"{where}: Edits must be a bool mask and tokens {span} over the logits span, got "
              f"{tuple(edits.mask.shape)} {edits.mask.dtype} and {tuple(edits.tokens.shape)}")
    if edits.hold is not None and tuple(edits.hold.shape) != span[:1]:
        _fail(f"{where}: Edits.hold must be [{span[0]}] bool, got {tuple(edits.hold.shape)}")
    cols = torch.arange(window.logits_start, window.logits_end)[None, :]
    inside = (cols >= window.block_start[:, None]) & (cols < window.block_end[:, None])
    eligible = torch.zeros(span, dtype=torch.bool)
    eligible[:, window.start - window.logits_start : window.end - window.logits_start] = window.eligible | select
    if bool((edits.mask & ~inside).any()):
        _fail(f"{where}: edited a position outside its row's block")
    if bool((edits.mask & eligible).any()):
        _fail(f"{where}: edited a masked position or one it also commits (masked positions are committed by select)")
    if bool((edits.mask & (edits.tokens == window.mask_id)).any()):
        _fail(f"{where}: edited a token into MASK")


def _iteration_for(model, gen_length: int = SMALL_ITERATION["gen_length"], block_length: int | None = None,
                   steps: int | None = None):
    """The iteration a generation check runs a strategy under: blockwise on a masked model, canvases (whole
    canvases of the model's length) on a noise-canvas model."""
    if model.capabilities.canvas == "noise":
        return Canvases(CanvasesConfig(gen_length=gen_length))
    block = block_length or SMALL_ITERATION["block_length"]
    steps = steps or SMALL_ITERATION["steps"] * gen_length // SMALL_ITERATION["gen_length"]
    return Blockwise(BlockwiseConfig(gen_length=gen_length, block_length=block, steps=steps))


def _decoding_setups(cls, config_dict) -> list[tuple[str, Callable[[], tuple]]]:
    """(label, make) of each setting the generation checks run in: the first tiny model the strategy accepts,
    and the noise-canvas model too when the strategy declares it finishes canvases (``finishes_canvases``)."""
    strategy = cls(_config(cls, config_dict))
    models = [model_for(strategy)]
    if "finishes_canvases" in compat.provides(cls) and models[0].capabilities.canvas != "noise":
        noise = tiny_model(family="diffusion_gemma")
        if not compat.model_problems("decoding", strategy, noise.capabilities):
            models.append(noise)

    def make(model):
        return lambda: (model, _iteration_for(model), cls(_config(cls, config_dict)), NoCache(NoCacheConfig()))

    return [(f"{type(_iteration_for(m)).__name__.lower()}/none on {m.capabilities.canvas} model", make(m))
            for m in models]


def _decoding_make(cls, config_dict):
    return _decoding_setups(cls, config_dict)[0][1]


def _decoding_commits(cls, config_dict):
    strategy = cls(_config(cls, config_dict))
    for i, (logits, window) in enumerate(synthetic_windows()):
        _check_commit(strategy, logits, window, _rng(i, window), i)


def _decoding_deterministic(cls, config_dict):
    for i, (logits, window) in enumerate(synthetic_windows(seed=1)):
        a = _select(cls(_config(cls, config_dict)), logits, window, _rng(3, window))[0]
        b = _select(cls(_config(cls, config_dict)), logits, window, _rng(3, window))[0]
        if not (torch.equal(a.select, b.select) and torch.equal(a.tokens[a.select], b.tokens[b.select])):
            _fail(f"synthetic case {i}: two calls with the same seed commit different positions or tokens")
    for label, make in _decoding_setups(cls, config_dict):
        _same_outputs(_generate(*make(), seed=5), _generate(*make(), seed=5), f"{label}: two generations with seed 5")


def _decoding_batched(cls, config_dict):
    """Row r of a batch, drawing from stream seed + r, commits what it commits alone with that seed."""
    strategy = cls(_config(cls, config_dict))
    for i, (logits, window) in enumerate(synthetic_windows(seed=2)):
        batched = _select(strategy, logits, window, _rng(i, window))[0]
        for r in range(len(window.rows)):
            row = int(window.rows[r])
            alone = _select(strategy, logits[r : r + 1], _one_row(window, r), RowRNG(i + row, 1, CPU))[0]
            sel = batched.select[r]
            if not (torch.equal(sel, alone.select[0]) and torch.equal(batched.tokens[r][sel], alone.tokens[0][sel])):
                _fail(f"synthetic case {i}: row {r} commits differently in a batch than alone")
    for label, make in _decoding_setups(cls, config_dict):
        _batched_vs_single(make, f"generation with {label}")


def _decoding_generation(cls, config_dict):
    for label, make in _decoding_setups(cls, config_dict):
        model = make()[0]
        for block, steps in ((None, None), (4, 4)):  # the small schedule, and 4 blocks of one step each
            it = _iteration_for(model, block_length=block, steps=steps)
            out = _generate(model, it, cls(_config(cls, config_dict)), NoCache(NoCacheConfig()))
            _check_finished(out, model.capabilities.mask_id)
            for r, steps in enumerate(out.tokens_per_step):
                committed, gen = sum(steps), it.config.gen_length
                ended = bool(torch.isin(out.generated[r][:committed], torch.tensor(model.capabilities.eos_ids)).any())
                if committed != gen and not (model.capabilities.canvas == "noise" and ended):
                    _fail(f"{label}: row {r} committed {committed} tokens in all, not gen_length={gen} (a row of "
                          "canvases may end early only after a canvas holding an end token)")


def _decoding_memory(cls, config_dict):
    """The strategy object holds only its config: no generation changes its attributes (run memory is on the
    state), and an object that already ran a generation gives, in the next, exactly what a fresh one gives."""
    model = _decoding_make(cls, config_dict)()[0]
    # one block (or canvas): both generations end and start in block 0
    make = lambda strategy: (model, _iteration_for(model, 8, 8), strategy, NoCache(NoCacheConfig()))  # noqa: E731
    used = cls(_config(cls, config_dict))
    unchanged = _holds_only_config(used, "the strategy")
    _generate(*make(used), prompts=PROMPTS, seed=3, trace=lambda state: unchanged())
    unchanged()
    second = _generate(*make(used), prompts=OTHER_PROMPTS, seed=4)
    fresh = _generate(*make(cls(_config(cls, config_dict))), prompts=OTHER_PROMPTS, seed=4)
    _same_outputs(second, fresh, "a generation after another one, with the same strategy object, vs a fresh one")
    if second.nfe != fresh.nfe:
        _fail(f"a generation after another one takes NFE {second.nfe}, a fresh one {fresh.nfe}")


def _decoding_concurrent(cls, config_dict):
    for label, make in _decoding_setups(cls, config_dict):
        _concurrent(make, label, own=2)


def _decoding_joins(cls, config_dict):
    _not_joinable(cls(_config(cls, config_dict)))
    for label, make in _decoding_setups(cls, config_dict):
        _joins(make, label)
