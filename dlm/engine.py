"""Continuous batching: one pipeline serves a stream of requests, rows joining running generations.

An :class:`Engine` keeps a few running generations (*cohorts*, each a :class:`~dlm.state.GenerationState`)
and a queue of rows waiting to start. Each :meth:`Engine.step`:

1. **admits** queued rows at the step boundary: the newcomers are started by the pipeline (their own canvas,
   their components' run memory, their random streams) and appended to the running cohort
   (:meth:`~dlm.state.GenerationState.cat`). The generation region sits at a multiple of ``bucket`` columns;
   a newcomer whose prompt is longer than the room before it makes the cohort grow on the left
   (:meth:`~dlm.state.GenerationState.shift`: every running row keeps computing exactly what it did), and
   when the rows that needed the room leave, the padding every row has is dropped again;
2. runs **one step** of every cohort (one forward per cohort, its rows batched);
3. **retires** the rows that are done: their outputs are handed back and the cohort keeps only the others
   (:meth:`~dlm.state.GenerationState.take`), so a finished row stops costing compute at once.

A row gives exactly what it gives alone whenever it joined: every component keeps its memory per row, rows
are independent in the forward (padding is masked, positions are the row's own), each row draws from its own
random stream, and each row moves through its blocks at its own pace. Pipelines whose components do not
declare ``joinable`` still never make a newcomer wait: it starts a cohort of its own (so does one whose run
memory cannot move with the canvas, when its prompt does not fit).

Admission is bounded by the caller (the server checks a memory budget, :func:`row_bytes`) and by
``max_rows``, the rows running at once over all cohorts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from dlm.errors import InputError
from dlm.pipeline import GenerationOutput, Pipeline
from dlm.state import GenerationState

__all__ = ["Engine", "Request", "Result", "row_bytes"]


@dataclass
class Request:
    """One row to generate: its prompt ids, its random seed, and a tag that comes back with its result."""

    ids: list[int]
    seed: int
    tag: Any = None


@dataclass
class Result:
    """A finished row: its tag and its output (a one-row :class:`~dlm.pipeline.GenerationOutput`)."""

    tag: Any
    output: GenerationOutput


@dataclass
class Failure:
    """Rows whose cohort raised in a step: their tags and the error."""

    tags: list[Any]
    error: BaseException


@dataclass
class Engine:
    """Rows of many requests through one :class:`~dlm.pipeline.Pipeline` at once (see the module doc)."""

    pipeline: Pipeline
    max_rows: int = 16  # rows running at once, all cohorts together
    bucket: int = 8  # a new cohort's generation region starts at a multiple of this many columns
    on_step: Callable[[GenerationState], None] | None = None  # called after each cohort's step
    cohorts: list[GenerationState] = field(default_factory=list)
    queue: deque = field(default_factory=deque)
    stats: dict = field(default_factory=lambda: {"steps": 0, "joins": 0, "cohorts": 0, "forwards": 0, "shifts": 0})

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise InputError(f"max_rows must be at least 1, got {self.max_rows}")
        if self.bucket < 1:
            raise InputError(f"bucket must be at least 1, got {self.bucket}")
        self._gen_length = getattr(self.pipeline.iteration.config, "gen_length", None)

    # --- the caller's side ----------------------------------------------------------------------------

    def submit(self, requests: Iterable[Request]) -> None:
        """Queue rows; they join at the next step boundary (their prompts are checked now)."""
        items = list(requests)
        self.pipeline._as_rows(None, [r.ids for r in items])  # ids in the vocabulary, no MASK: refused now
        self.queue.extend(items)

    @property
    def running(self) -> int:
        """Rows in the running cohorts."""
        return sum(c.batch_size for c in self.cohorts)

    @property
    def idle(self) -> bool:
        return not self.cohorts and not self.queue

    def step(self) -> tuple[list[Result], list[Failure]]:
        """Admit what fits, run one step of every cohort, retire the rows that are done."""
        self.admit()
        results, failures, kept = [], [], []
        for state in self.cohorts:
            try:
                if not self.pipeline.done(state):
                    self.pipeline.step(state)
                    self.stats["forwards"] += 1
                    if self.on_step is not None:
                        self.on_step(state)
                state = self._retire(state, results)
            except Exception as err:  # a failing cohort fails its own rows only
                failures.append(Failure(list(state.tags), err))
                continue
            if state is not None:
                kept.append(state)
        self.cohorts = kept
        self.stats["steps"] += 1
        return results, failures

    def cancel(self, tags: set) -> None:
        """Stop the rows with these tags (queued ones are dropped; running ones end at once, no result)."""
        self.queue = deque(r for r in self.queue if r.tag not in tags)
        kept = []
        for state in self.cohorts:
            stay = [i for i, t in enumerate(state.tags) if t not in tags]
            if len(stay) < state.batch_size:
                state = state.take(stay) if stay else None
            if state is not None:
                kept.append(state)
        self.cohorts = kept

    # --- admission and retirement -----------------------------------------------------------------------

    def admit(self) -> None:
        """Start queued rows while there is room: in the running cohort (made wider on the left when a
        newcomer's prompt needs it), or, when the pipeline cannot join rows, in a cohort of their own."""
        room = self.max_rows - self.running
        if room <= 0 or not self.queue:
            return
        batch = [self.queue.popleft() for _ in range(min(room, len(self.queue)))]
        if not self.pipeline.joinable:
            self.cohorts.append(self._start(batch, self._region(max(len(r.ids) for r in batch))))
            self.stats["cohorts"] += 1
            return
        rest = []
        for req in batch:
            home = self._home(len(req.ids))
            if home is None:
                rest.append(req)
            else:
                self._join(home, [req])
        if rest:
            need = self._region(max(len(r.ids) for r in rest))
            wider = [i for i, c in enumerate(self.cohorts) if c.shiftable]
            if wider:  # make room on the left of the fullest cohort: its rows compute what they did
                i = max(wider, key=lambda i: self.cohorts[i].batch_size)
                self.cohorts[i] = self.cohorts[i].shift(need - self.cohorts[i].gen_start)
                self.stats["shifts"] += 1
                self._join(i, rest)
            else:
                self.cohorts.append(self._start(rest, need))
                self.stats["cohorts"] += 1

    def _join(self, home: int, reqs: list[Request]) -> None:
        cohort = self.cohorts[home]
        self.cohorts[home] = cohort.cat(self._start(reqs, cohort.gen_start))
        self.stats["joins"] += len(reqs)

    def _home(self, prompt_length: int) -> int | None:
        """The running cohort a newcomer with this prompt length joins (the fullest that fits), or None."""
        fits = [(c.batch_size, i) for i, c in enumerate(self.cohorts) if c.gen_start >= prompt_length]
        return max(fits)[1] if fits else None

    def _region(self, prompt_length: int) -> int:
        """Where a new cohort's generation region starts: the prompt rounded up to the bucket, within context."""
        caps = self.pipeline.model.capabilities
        limit = caps.max_length - (self._gen_length or 0)
        return max(prompt_length, min(math.ceil(prompt_length / self.bucket) * self.bucket, limit))

    def _trim(self, state: GenerationState) -> GenerationState:
        """Drop whole buckets of padding that every row of ``state`` has on its left (less to compute)."""
        spare = int(state.pad.min()) // self.bucket * self.bucket
        if spare and state.shiftable:
            self.stats["shifts"] += 1
            return state.shift(-spare)
        return state

    def _start(self, reqs: list[Request], gen_start: int) -> GenerationState:
        return self.pipeline.start(input_ids=[r.ids for r in reqs], seeds=[r.seed for r in reqs],
                                   gen_start=gen_start, tags=[r.tag for r in reqs])

    def _retire(self, state: GenerationState, results: list[Result]) -> GenerationState | None:
        """Hand back the done rows of ``state``; return the state of the others (None when none is left)."""
        done = state.done.cpu()
        if not bool(done.any()):
            return state
        finished = done.nonzero()[:, 0]
        out = self.pipeline.output(state.take(finished))
        for i, r in enumerate(finished.tolist()):
            results.append(Result(state.tags[r], _row(out, i)))
        stay = (~done).nonzero()[:, 0]
        return self._trim(state.take(stay)) if len(stay) else None


def _row(out: GenerationOutput, i: int) -> GenerationOutput:
    return GenerationOutput(
        sequences=[out.sequences[i]], generated=[out.generated[i]],
        texts=None if out.texts is None else [out.texts[i]], nfe=[out.nfe[i]],
        tokens_per_step=[out.tokens_per_step[i]], seconds=out.seconds, state=None,
    )


def row_bytes(pipeline: Pipeline, prompt_length: int, *, dtype_bytes: int | None = None) -> int:
    """Bytes one row needs while it runs: its share of the KV buffers (a cache that keeps one) and of the
    widest step's logits (the whole canvas in the logits' dtype, plus the float64 softmax the strategies
    take): the part a dLLM server runs out of first."""
    model, caps = pipeline.model, pipeline.model.capabilities
    gen = getattr(pipeline.iteration.config, "gen_length", 0) or 0
    length = prompt_length + gen
    item = dtype_bytes or torch.finfo(getattr(model, "dtype", torch.float32)).bits // 8
    vocab = caps.vocab_size or 0
    logits = length * vocab * (item + 8)
    kv = 0
    net = getattr(model, "net", None)
    if type(pipeline.cache).__name__ != "NoCache" and net is not None and hasattr(net, "spec"):
        spec = net.spec
        kv = 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * length * item
    return int(kv + logits)
