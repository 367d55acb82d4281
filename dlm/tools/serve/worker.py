"""The model workers: one thread owns the pipelines and runs queued requests as rows of batches.

Two workers, chosen by ``dlm serve --batching``:

- :class:`EngineWorker` (``continuous``, the default): continuous batching over :class:`dlm.engine.Engine`,
  one engine per pipeline variant. A request's rows join the running generation at the next step boundary
  and leave it as soon as they are done, so a newcomer never waits for a batch to finish; rows give exactly
  what they give alone whenever they joined. Admission is bounded by a memory budget (the KV buffers and the
  widest step's logits of every running and queued row, :func:`dlm.engine.row_bytes`): beyond it a request
  gets 429, and one that could never fit gets 400.
- :class:`BatchWorker` (``static``), described below.

Static batching: requests that can share a generation (same generation length and temperature; seeds are per row) are
gathered, up to ``max_batch_size`` rows, into one :meth:`~dlm.pipeline.Pipeline.generate` call. Rows give
exactly what they give alone (left padding, per-row NFE, per-row random streams), so batching never changes
an answer. The trace hook runs after every denoising step: it turns each row's canvas into text deltas and
per-step views, hands them to the request's asyncio queue, and cancels rows whose client went away or whose
answer is settled (stop string, ``max_tokens``), so they stop costing compute.

Rows do not join a running batch: the canvas, the per-row bookkeeping and the cache's KV buffers are sized
for the batch when a generation starts, and the blockwise managers move every row through the same block
columns together, so a newcomer at block k would need its block 0 while the others are at block k. A new
batch starts as soon as the running one ends, with everything queued by then.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from dlm.engine import Engine, Request, row_bytes
from dlm.tools.serve.text import RowText
from dlm.tools.serve.variants import Key, Variants


class QueueFull(Exception):
    """The bounded queue (or memory budget) is full; ``retry_after`` is a guess in seconds of when there will be
    room."""

    def __init__(self, retry_after: int, what: str = "the request queue is full") -> None:
        super().__init__(f"{what}; retry in {retry_after} s")
        self.retry_after = retry_after


class Unavailable(Exception):
    """The worker is shutting down and takes no new requests."""


class TooLarge(Exception):
    """The request alone needs more memory than the server's whole budget: it can never run."""


@dataclass
class RowUpdate:
    """What one step changed for one choice of a request."""

    index: int  # choice index in the request
    delta: str  # newly committed prefix text
    finish_reason: str | None
    view: dict[str, Any] | None = None  # the per-step view, when the request asked for it


@dataclass
class Finished:
    """The request's generation is over: usage and per-choice NFE."""

    prompt_tokens: int
    completion_tokens: int
    nfe: list[int]
    tokens_per_forward: list[float]
    texts: list[str]  # the final text of each choice


@dataclass
class Failed:
    """The request's generation raised; the message is safe to show the client."""

    message: str


@dataclass(eq=False)
class Job:
    """One request: its rows (a prompt per choice), their settings, and the queue its events go to."""

    prompts: list[list[int]]  # token ids of each row (choice)
    seeds: list[int]  # one per row
    key: Key  # (generation length, temperature): rows of one batch share it
    max_tokens: int
    stop: tuple[str, ...] = ()
    steps: bool = False  # send the per-step view
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set from the event loop when the client goes away
    finished: bool = False  # Finished was sent
    texts: list[RowText] = field(default_factory=list)
    reserved: int = 0  # bytes of the memory budget this job holds (continuous batching)

    def cancel(self) -> None:
        self.cancelled = True

    def push(self, item: Any) -> None:
        """Hand ``item`` to the request's event loop (thread-safe); dropped when that loop is gone."""
        if self.loop is None:
            self.queue.put_nowait(item)
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # loop closed: the server is shutting down
            pass


class BatchWorker(threading.Thread):
    """Gathers compatible queued jobs into batches and generates them, one batch at a time."""

    def __init__(self, variants: Variants, *, max_batch_size: int = 16, max_queue: int = 64) -> None:
        super().__init__(name="dlm-serve-worker", daemon=True)
        self.variants = variants
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.running_rows = 0
        self.stats = {"batches": 0, "rows": 0, "cancelled_rows": 0, "largest_batch": 0, "failed_batches": 0}
        self._batch_seconds = 0.5  # moving average, for Retry-After

    # --- the event loop's side ----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` or :class:`Unavailable` instead of growing without bound."""
        with self._cond:
            if self._stopping or not self.is_alive():
                raise Unavailable("the model worker is not running")
            if len(self._queue) >= self.max_queue:
                waves = len(self._queue) / self.max_batch_size + 1
                raise QueueFull(max(1, math.ceil(self._batch_seconds * waves)))
            self._queue.append(job)
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the running step: running rows are cancelled, queued jobs fail."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.push(Failed("the server is shutting down"))
        if self.is_alive():
            self.join(timeout)

    # --- the worker thread --------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            t0 = time.perf_counter()
            try:
                self._generate(batch)
            except Exception as err:  # a failing batch must not take the worker down
                self.stats["failed_batches"] += 1
                for job in batch:
                    if not job.finished:
                        job.push(Failed(f"generation failed: {type(err).__name__}: {err}"))
            finally:
                self.running_rows = 0
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.perf_counter() - t0)

    def _next_batch(self) -> list[Job] | None:
        """Wait for work; take the oldest job and every queued job sharing its key, while rows fit."""
        with self._cond:
            while True:
                while self._queue and self._queue[0].cancelled:
                    self._queue.popleft().push(Failed("cancelled"))
                if self._stopping:
                    return None
                if self._queue:
                    break
                self._cond.wait()
            first = self._queue.popleft()
            batch, rows = [first], len(first.prompts)
            for job in list(self._queue):
                if job.key == first.key and not job.cancelled and rows + len(job.prompts) <= self.max_batch_size:
                    self._queue.remove(job)
                    batch.append(job)
                    rows += len(job.prompts)
            self.running_rows = rows
            return batch

    def _generate(self, batch: list[Job]) -> None:
        pipe = self.variants.pipeline(batch[0].key)
        caps, tok = pipe.model.capabilities, pipe.model.tokenizer
        rows: list[tuple[Job, int]] = []
        for job in batch:
            job.texts = [
                RowText(tok, mask_id=caps.mask_id, end_ids=caps.eos_ids, max_tokens=job.max_tokens, stop=job.stop)
                for _ in job.prompts
            ]
            rows += [(job, i) for i in range(len(job.prompts))]
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(rows))
        trace = StepTrace(self, rows, tok, caps.mask_id)
        out = pipe.generate(
            input_ids=[job.prompts[i] for job, i in rows],
            seeds=[job.seeds[i] for job, i in rows],
            trace=trace,
        )
        updates: dict[Job, list[RowUpdate]] = {}
        for r, (job, i) in enumerate(rows):
            text = job.texts[i]
            if not text.complete and not job.finished:
                delta = text.update(out.generated[r].tolist(), final=True)
                updates.setdefault(job, []).append(RowUpdate(i, delta, text.finish_reason))
        for job, items in updates.items():
            job.push(items)
        trace.finish_jobs(out.state, force=True)


class StepTrace:
    """The trace hook of one batch: per-row deltas and views after every step, and row cancellation."""

    def __init__(self, worker: BatchWorker, rows: list[tuple[Job, int]], tokenizer, mask_id: int) -> None:
        self.worker, self.rows, self.tokenizer, self.mask_id = worker, rows, tokenizer, mask_id
        self.step = 0
        self.previous: list[list[int]] | None = None
        self.gone: set[int] = set()  # rows whose client went away

    def __call__(self, state) -> None:
        self.step += 1
        generated = state.canvas[:, state.gen_start :].tolist()  # [B][G]
        if self.previous is None:
            self.previous = [[self.mask_id] * state.gen_length for _ in self.rows]
        nfe, done = state.nfe.tolist(), state.done.tolist()
        updates: dict[Job, list[RowUpdate]] = {}
        cancel, gone = [], []
        for r, (job, i) in enumerate(self.rows):
            text = job.texts[i]
            if text.complete or r in self.gone:
                continue
            if job.cancelled or self.worker.stopping:
                gone.append(r)
                continue
            now, before = generated[r], self.previous[r]
            committed = [p for p, (a, b) in enumerate(zip(now, before)) if a != b]
            self.previous[r] = now
            if not committed and not done[r]:
                continue  # the row took no part in this step
            delta = text.update(now, final=bool(done[r]))
            view = self._view(state, now, committed, nfe[r]) if job.steps else None
            updates.setdefault(job, []).append(RowUpdate(i, delta, text.finish_reason, view))
            if text.complete and not done[r]:
                cancel.append(r)  # the answer is settled: stop spending forwards on it
        for job, items in updates.items():
            job.push(items)
        self.finish_jobs(state)
        if gone:
            self.gone.update(gone)
            self.worker.stats["cancelled_rows"] += sum(1 for r in gone if not done[r])
        if cancel or gone:
            state.cancel(cancel + gone)

    def finish_jobs(self, state, *, force: bool = False) -> None:
        """Send :class:`Finished` to every job whose choices are all complete (all jobs when ``force``), so
        a client gets its end as soon as its own rows end, not when the whole batch does."""
        jobs = [j for j in dict.fromkeys(j for j, _ in self.rows)
                if not j.finished and (force or all(t.complete for t in j.texts))]
        if not jobs:
            return
        nfe = state.nfe.tolist()
        committed = [sum(steps) for steps in state.tokens_per_step]
        for job in jobs:
            idx = [r for r, (j, _) in enumerate(self.rows) if j is job]
            job.finished = True
            job.push(Finished(
                prompt_tokens=sum(len(p) for p in job.prompts),
                completion_tokens=sum(t.tokens for t in job.texts),
                nfe=[nfe[r] for r in idx],
                tokens_per_forward=[round(committed[r] / max(nfe[r], 1), 3) if committed else 0.0 for r in idx],
                texts=[t.text for t in job.texts],
            ))

    def _view(self, state, now: list[int], committed: list[int], nfe: int) -> dict[str, Any]:
        return {
            "step": self.step,
            "nfe": nfe,
            "block": int(state.block),
            "canvas": [None if t == self.mask_id else t for t in now],
            "committed": committed,
            "pieces": [self.tokenizer.decode([now[p]]) for p in committed],
        }


class EngineWorker(threading.Thread):
    """Continuous batching: queued requests join running generations at step boundaries (module doc)."""

    def __init__(self, variants: Variants, *, max_batch_size: int = 16, max_queue: int = 64,
                 memory_budget: int | None = None) -> None:
        super().__init__(name="dlm-serve-engine", daemon=True)
        self.variants = variants
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.memory_budget = memory_budget
        self._incoming: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._engines: dict[Key, Engine] = {}
        self._jobs: dict[Job, int] = {}  # admitted jobs: rows still running
        self.reserved = 0  # bytes of the running and queued rows (the memory budget's count)
        self.stats = {"batches": 0, "rows": 0, "cancelled_rows": 0, "largest_batch": 0, "failed_batches": 0,
                      "joins": 0, "steps": 0}
        self._step_seconds = 0.05  # moving average, for Retry-After

    # --- the event loop's side ----------------------------------------------------------------------

    def job_bytes(self, job: Job) -> int:
        pipe = self.variants.pipeline(job.key)
        return sum(row_bytes(pipe, len(p)) for p in job.prompts)

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` (queue or memory budget), :class:`TooLarge` or
        :class:`Unavailable` instead of growing without bound."""
        need = self.job_bytes(job)
        with self._cond:
            if self._stopping or not self.is_alive():
                raise Unavailable("the model worker is not running")
            if self.memory_budget is not None and need > self.memory_budget:
                raise TooLarge(f"the request needs about {need / 2**20:.1f} MiB while it runs (KV buffers and logits), "
                               f"more than the server's memory budget of {self.memory_budget / 2**20:.1f} MiB; "
                               "ask for fewer tokens or choices, or start the server with a larger --memory-budget")
            if len(self._incoming) >= self.max_queue:
                raise QueueFull(self._retry_after())
            if self.memory_budget is not None and self.reserved + need > self.memory_budget:
                raise QueueFull(self._retry_after(),
                                f"the server's memory budget ({self.memory_budget / 2**20:.1f} MiB) is taken by the "
                                "running and queued requests")
            self.reserved += need
            job.reserved = need
            self._incoming.append(job)
            self._cond.notify()

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._step_seconds * 8))

    @property
    def queued(self) -> int:
        return len(self._incoming) + sum(len(e.queue) for e in list(self._engines.values()))

    @property
    def running_rows(self) -> int:
        return sum(e.running for e in list(self._engines.values()))

    @property
    def stopping(self) -> bool:
        return self._stopping

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._incoming)
            self._incoming.clear()
            self._cond.notify_all()
        for job in pending:
            job.push(Failed("the server is shutting down"))
        if self.is_alive():
            self.join(timeout)

    # --- the worker thread --------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._incoming and not self._busy():
                    self._cond.wait()
                if self._stopping:
                    break
                incoming = self._take_incoming()
            for job in incoming:
                self._admit(job)
            self._drop_cancelled()
            t0 = time.perf_counter()
            for key, engine in list(self._engines.items()):
                if not engine.idle:
                    self._step(engine)
            self._step_seconds = 0.8 * self._step_seconds + 0.2 * (time.perf_counter() - t0)
            self.stats["steps"] += 1
        for engine in self._engines.values():  # shutting down: end every running row
            for job in {t[0] for c in engine.cohorts for t in c.tags} | {r.tag[0] for r in engine.queue}:
                if not job.finished:
                    job.push(Failed("the server is shutting down"))

    def _take_incoming(self) -> list[Job]:
        """The oldest queued jobs that fit their engine's free rows now (called holding the lock). The others
        stay in the bounded queue, so ``--max-queue`` counts every request that waits for rows."""
        taken, room = [], {}
        while self._incoming:
            job = self._incoming[0]
            if job.cancelled:
                taken.append(self._incoming.popleft())  # _admit answers it at once
                continue
            engine = self._engines.get(job.key)
            if job.key not in room:
                room[job.key] = self.max_batch_size - (engine.running + len(engine.queue) if engine else 0)
            if len(job.prompts) > room[job.key] and room[job.key] < self.max_batch_size:
                break  # first come, first served: it starts when rows leave
            room[job.key] -= len(job.prompts)
            taken.append(self._incoming.popleft())
        return taken

    def _busy(self) -> bool:
        return any(not e.idle for e in self._engines.values())

    def _engine(self, key: Key) -> Engine:
        engine = self._engines.get(key)
        if engine is None:
            engine = Engine(self.variants.pipeline(key), max_rows=self.max_batch_size)
            engine.on_step = lambda state, e=engine: self._on_step(e, state)
            engine.pending_cancel = set()
            self._engines[key] = engine
        return engine

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            self._release(job)
            job.push(Failed("cancelled"))
            return
        pipe = self.variants.pipeline(job.key)
        caps, tok = pipe.model.capabilities, pipe.model.tokenizer
        job.texts = [RowText(tok, mask_id=caps.mask_id, end_ids=caps.eos_ids, max_tokens=job.max_tokens,
                             stop=job.stop) for _ in job.prompts]
        job.previous = [None] * len(job.prompts)
        engine = self._engine(job.key)
        try:
            engine.submit(Request(ids, seed, (job, i)) for i, (ids, seed) in enumerate(zip(job.prompts, job.seeds)))
        except Exception as err:
            self._release(job)
            job.push(Failed(f"generation failed: {type(err).__name__}: {err}"))
            return
        self._jobs[job] = len(job.prompts)
        self.stats["rows"] += len(job.prompts)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.cancelled or self._stopping]:
            tags = {(job, i) for i in range(len(job.prompts))}
            for engine in self._engines.values():
                running = {t for c in engine.cohorts for t in c.tags}
                self.stats["cancelled_rows"] += len(tags & running)
                engine.cancel(tags)
            self._forget(job)

    def _step(self, engine: Engine) -> None:
        before = engine.stats["joins"]
        results, failures = engine.step()
        self.stats["joins"] += engine.stats["joins"] - before
        self.stats["largest_batch"] = max(self.stats["largest_batch"], max((c.batch_size for c in engine.cohorts),
                                                                          default=0))
        for failure in failures:  # a failing step fails only the requests of its rows
            self.stats["failed_batches"] += 1
            for job in {t[0] for t in failure.tags}:
                if not job.finished:
                    job.push(Failed(f"generation failed: {type(failure.error).__name__}: {failure.error}"))
                engine.cancel({(job, i) for i in range(len(job.prompts))})
                self._forget(job)
        updates: dict[Job, list[RowUpdate]] = {}
        for result in results:
            job, i = result.tag
            if job not in self._jobs:
                continue
            job.outputs = getattr(job, "outputs", {})
            job.outputs[i] = result.output
            text = job.texts[i]
            if not text.complete:
                delta = text.update(result.output.generated[0].tolist(), final=True)
                updates.setdefault(job, []).append(RowUpdate(i, delta, text.finish_reason))
            self._row_done(job)
        for job, items in updates.items():
            job.push(items)
        self._finish_jobs()
        if engine.pending_cancel:
            engine.cancel(engine.pending_cancel)
            for job, i in engine.pending_cancel:
                if job in self._jobs:
                    self._row_done(job)
            engine.pending_cancel = set()
            self._finish_jobs()

    def _on_step(self, engine: Engine, state) -> None:
        """After a cohort's step: each row's text delta and per-step view; settled rows are stopped."""
        generated = state.canvas[:, state.gen_start:].tolist()
        nfe, done, steps = state.nfe.tolist(), state.done.tolist(), state.steps.tolist()
        block = getattr(state.progress, "block", None)
        blocks = block.tolist() if block is not None else [0] * state.batch_size
        updates: dict[Job, list[RowUpdate]] = {}
        for r, (job, i) in enumerate(state.tags):
            text = job.texts[i]
            if text.complete or job.cancelled:
                continue
            now = generated[r]
            before = job.previous[i] or [state.mask_id] * len(now)
            committed = [p for p, (a, b) in enumerate(zip(now, before)) if a != b]
            job.previous[i] = now
            if not committed:
                continue
            delta = text.update(now, final=bool(done[r]))
            view = None
            if job.steps:
                view = {"step": steps[r], "nfe": nfe[r], "block": blocks[r],
                        "canvas": [None if t == state.mask_id else t for t in now], "committed": committed,
                        "pieces": [state_piece(self.variants, job, now[p]) for p in committed]}
            updates.setdefault(job, []).append(RowUpdate(i, delta, text.finish_reason, view))
            if text.complete and not done[r]:
                engine.pending_cancel.add((job, i))  # settled: stop spending forwards on it
                job.outputs = getattr(job, "outputs", {})
                job.outputs[i] = _partial(state, r)
        for job, items in updates.items():
            job.push(items)

    def _row_done(self, job: Job) -> None:
        self._jobs[job] -= 1

    def _finish_jobs(self) -> None:
        for job in [j for j, left in self._jobs.items() if left <= 0]:
            outputs = getattr(job, "outputs", {})
            nfe = [outputs[i].nfe[0] if i in outputs else 0 for i in range(len(job.prompts))]
            tpf = []
            for i in range(len(job.prompts)):
                o = outputs.get(i)
                tpf.append(round(sum(o.tokens_per_step[0]) / max(o.nfe[0], 1), 3) if o is not None else 0.0)
            job.finished = True
            job.push(Finished(prompt_tokens=sum(len(p) for p in job.prompts),
                              completion_tokens=sum(t.tokens for t in job.texts), nfe=nfe, tokens_per_forward=tpf,
                              texts=[t.text for t in job.texts]))
            self._forget(job)

    def _forget(self, job: Job) -> None:
        if self._jobs.pop(job, None) is not None or getattr(job, "reserved", 0):
            self._release(job)

    def _release(self, job: Job) -> None:
        with self._cond:
            self.reserved -= getattr(job, "reserved", 0)
            job.reserved = 0


def state_piece(variants: Variants, job: Job, token: int) -> str:
    return variants.base.model.tokenizer.decode([token])


def _partial(state, r: int):
    """A running row's output so far (a row stopped because its answer is settled)."""
    from dlm.pipeline import GenerationOutput

    return GenerationOutput(sequences=[state.sequence(r).cpu()], generated=[state.generated(r).cpu()], texts=None,
                            nfe=[int(state.nfe[r])], tokens_per_step=[state.tokens_per_step[r]])
