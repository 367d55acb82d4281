"""The static worker, and what both workers share: the jobs, the messages they send, the bounded queue.

``dlm serve --batching`` chooses the worker; one thread owns the pipelines either way:

- ``continuous`` (the default): :class:`~dlm.tools.serve.continuous.EngineWorker`, continuous batching over
  :class:`dlm.engine.Engine`; rows join the running generation at each step boundary (see that module).
- ``static``: :class:`BatchWorker`. Requests that can share a generation (same generation length and
  temperature; seeds are per row) are gathered, up to ``max_batch_size`` rows, into one
  :meth:`~dlm.pipeline.Pipeline.generate` call, and a new batch starts when the running one ends, with
  everything queued by then. Rows give exactly what they give alone (left padding, per-row NFE, per-row random
  streams), so batching never changes an answer. The trace hook runs after every denoising step: it turns each
  row's canvas into text deltas (final tokens only) and per-step views (:mod:`dlm.tools.serve.view`), hands them to the request's asyncio queue, and cancels rows
  whose client went away or whose answer is settled (stop string, ``max_tokens``), so they stop costing compute.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


from dlm.tools.serve.text import RowText
from dlm.tools.serve.variants import Key, Variants
from dlm.tools.serve.view import RowCanvas, changes, row_canvases, step_view


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
    previous: list = field(default_factory=list)  # per row: its RowCanvas at the last step (continuous)
    outputs: dict = field(default_factory=dict)  # per row index: its output once it ended (continuous)

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


class QueuedWorker(threading.Thread):
    """What both workers share: the bounded queue of jobs, its condition, and stopping."""

    def __init__(self, variants: Variants, *, name: str, max_batch_size: int, max_queue: int) -> None:
        super().__init__(name=name, daemon=True)
        self.variants = variants
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.stats = {"batches": 0, "rows": 0, "cancelled_rows": 0, "largest_batch": 0, "failed_batches": 0}

    def counters(self) -> dict:
        """The counters ``/health`` reports (a worker adds those it reads live)."""
        return dict(self.stats)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _check_running(self) -> None:
        """Refuse new work once the worker stops (called holding the lock)."""
        if self._stopping or not self.is_alive():
            raise Unavailable("the model worker is not running")

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


class BatchWorker(QueuedWorker):
    """Gathers compatible queued jobs into batches and generates them, one batch at a time."""

    def __init__(self, variants: Variants, *, max_batch_size: int = 16, max_queue: int = 64) -> None:
        super().__init__(variants, name="dlm-serve-worker", max_batch_size=max_batch_size, max_queue=max_queue)
        self.running_rows = 0
        self._batch_seconds = 0.5  # moving average, for Retry-After

    # --- the event loop's side ----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` or :class:`Unavailable` instead of growing without bound."""
        with self._cond:
            self._check_running()
            if len(self._queue) >= self.max_queue:
                waves = len(self._queue) / self.max_batch_size + 1
                raise QueueFull(max(1, math.ceil(self._batch_seconds * waves)))
            self._queue.append(job)
            self._cond.notify()

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
        self.previous: list[RowCanvas | None] | None = None
        self.gone: set[int] = set()  # rows whose client went away

    def __call__(self, state) -> None:
        self.step += 1
        canvases = row_canvases(state)
        if self.previous is None:
            self.previous = [None] * len(self.rows)
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
            now = canvases[r]
            committed, revised = changes(now, self.previous[r], self.mask_id)
            self.previous[r] = now
            if not committed and not revised and not done[r]:
                continue  # the row took no part in this step
            delta = text.update(now.final(self.mask_id), final=bool(done[r]))
            view = step_view(step=self.step, nfe=nfe[r], block=int(state.block), now=now, committed=committed,
                             revised=revised, mask_id=self.mask_id, revisable=state.revisable,
                             decode=self.tokenizer.decode) if job.steps else None
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
