"""Checks of a decoding strategy: ``commits`` on :func:`synthetic_windows` (logits and windows that
stress a strategy), ``deterministic`` and ``batched`` (per-row random streams and per-row memory, on synthetic
windows and in a real generation), ``memory`` (a generation leaves nothing behind for the next one) and
``generation`` (it drives a tiny-model generation to the end).

On synthetic windows the kit drives a strategy as the pipeline does: ``start`` on a canvas holding the
window (eligible positions masked, the rest committed), ``prepare`` (a widened logits span gets random
logits around the window's), ``select``, ``finish``. A strategy that attaches candidates is checked in real
generations only."""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.cache.none import NoCache, NoCacheConfig
from dlm.decoding.base import DecodingStrategy
from dlm.iteration.blockwise import Blockwise, BlockwiseConfig
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.testing.contracts.core import CPU, PROMPTS, SMALL_ITERATION, NotApplicable, _fail
from dlm.testing.contracts.fixtures import tiny_model
from dlm.testing.contracts.probes import _batched_vs_single, _check_finished, _config, _generate, _same_outputs


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


def _select(strategy: DecodingStrategy, logits: Tensor, window: Window, generator: RowRNG) -> tuple[Commit, Window]:
    """One step as the pipeline runs it on a fresh generation holding ``window``."""
    state = _synthetic_state(window, int(window.rows.max()) + 1)
    strategy.start(state)
    try:
        step = strategy.prepare(state, window)
        if step.candidates is not None:
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
        return strategy.select(logits, step, generator), step
    finally:
        strategy.finish()


def _check_commit(strategy: DecodingStrategy, logits: Tensor, window: Window, generator: RowRNG, case: int):
    commit, window = _select(strategy, logits, window, generator)
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
    if commit.finish is not None:
        starved &= ~commit.finish
    if bool(starved.any()):
        _fail(f"{where}: committed nothing for rows {starved.nonzero()[:, 0].tolist()} that have eligible positions")
    return commit


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
    make = lambda: (tiny_model(), Blockwise(BlockwiseConfig(**SMALL_ITERATION)), cls(_config(cls, config_dict)),
                    NoCache(NoCacheConfig()))
    _same_outputs(_generate(*make(), seed=5), _generate(*make(), seed=5), "two generations with seed 5")


def _decoding_batched(cls, config_dict):
    """Row r of a batch, drawing from stream seed + r, commits what it commits alone with that seed."""
    strategy = cls(_config(cls, config_dict))
    for i, (logits, window) in enumerate(synthetic_windows(seed=2)):
        batched = _select(strategy, logits, window, _rng(i, window))[0]
        for r in range(len(window.rows)):
            row = int(window.rows[r])
            one = Window(torch.zeros(1, dtype=torch.long), window.start, window.end, window.eligible[r : r + 1],
                         window.quota[r : r + 1], window.step, window.mask_id)
            alone = _select(strategy, logits[r : r + 1], one, RowRNG(i + row, 1, CPU))[0]
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


OTHER_PROMPTS = ([20, 21, 22, 23], [24, 25, 26, 27, 28, 29], [30, 31])


def _decoding_memory(cls, config_dict):
    """Per-generation memory is gone after the generation: a strategy object that already ran one
    generation gives, in the next, exactly what a fresh one gives."""
    model = tiny_model()
    one_block = BlockwiseConfig(gen_length=8, block_length=8, steps=8)  # both generations end and start in block 0
    make = lambda strategy: (model, Blockwise(one_block), strategy, NoCache(NoCacheConfig()))
    used = cls(_config(cls, config_dict))
    _generate(*make(used), prompts=PROMPTS, seed=3)
    second = _generate(*make(used), prompts=OTHER_PROMPTS, seed=4)
    fresh = _generate(*make(cls(_config(cls, config_dict))), prompts=OTHER_PROMPTS, seed=4)
    _same_outputs(second, fresh, "a generation after another one, with the same strategy object, vs a fresh one")
    if second.nfe != fresh.nfe:
        _fail(f"a generation after another one takes NFE {second.nfe}, a fresh one {fresh.nfe}")
