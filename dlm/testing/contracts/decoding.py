"""Checks of a decoding strategy: ``commits`` on :func:`synthetic_windows` (logits and windows that
stress a strategy), ``deterministic`` and ``batched`` (per-row random streams, on synthetic windows and in a
real generation), and ``generation`` (it drives a tiny-model generation to the end)."""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.cache.none import NoCache, NoCacheConfig
from dlm.decoding.base import DecodingStrategy
from dlm.iteration.blockwise import Blockwise, BlockwiseConfig
from dlm.rng import RowRNG
from dlm.messages import Window
from dlm.testing.contracts.core import CPU, SMALL_ITERATION, _fail
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
