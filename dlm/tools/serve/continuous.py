"""Continuous batching in ``dlm serve`` (``--batching continuous``, the default): the :class:`EngineWorker`.

One thread owns the pipelines, with one :class:`dlm.engine.Engine` per pipeline variant (generation length,
temperature). A request's rows join the running generation at the next step boundary and leave as soon as
they are done, so a newcomer never waits for a batch to finish; rows give exactly what they give alone
whenever they joined. A request waits in the bounded queue (``--max-queue``) until its engine has free rows.
Admission is bounded by a memory budget (the KV buffers and the widest step's logits of every running and
queued row, :func:`dlm.engine.row_bytes`): beyond it a request gets 429, and one that could never fit gets 400.
The messages to the event loop and the static worker are in :mod:`dlm.tools.serve.worker`.
"""

from __future__ import annotations

import math
import time

from dlm.engine import Engine, Request, row_bytes
from dlm.tools.serve.text import RowText
from dlm.tools.serve.variants import Key, Variants
from dlm.tools.serve.view import changes, row_canvases, step_view
from dlm.tools.serve.worker import (
    Failed, Finished, Job, QueuedWorker, QueueFull, RowUpdate, TooLarge,
)

__all__ = ["EngineWorker"]


class EngineWorker(QueuedWorker):
    """Continuous batching: queued requests join running generations at step boundaries (module doc)."""

    def __init__(self, variants: Variants, *, max_batch_size: int = 16, max_queue: int = 64,
                 memory_budget: int | None = None) -> None:
        super().__init__(variants, name="dlm-serve-engine", max_batch_size=max_batch_size, max_queue=max_queue)
        self.memory_budget = memory_budget
        self._engines: dict[Key, Engine] = {}
        self._jobs: dict[Job, int] = {}  # admitted jobs: rows still running
        self._settled: set = set()  # tags of rows whose answer is settled in this step: they leave after it
        self.reserved = 0  # bytes of the running and queued rows (the memory budget's count)
        self.stats.update(steps=0)
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
            self._check_running()
            if self.memory_budget is not None and need > self.memory_budget:
                raise TooLarge(f"the request needs about {need / 2**20:.1f} MiB while it runs (KV buffers and logits), "
                               f"more than the server's memory budget of {self.memory_budget / 2**20:.1f} MiB; "
                               "ask for fewer tokens or choices, or start the server with a larger --memory-budget")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self._retry_after())
            if self.memory_budget is not None and self.reserved + need > self.memory_budget:
                raise QueueFull(self._retry_after(),
                                f"the server's memory budget ({self.memory_budget / 2**20:.1f} MiB) is taken by the "
                                "running and queued requests")
            self.reserved += need
            job.reserved = need
            self._queue.append(job)
            self._cond.notify()

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._step_seconds * 8))

    @property
    def queued(self) -> int:
        return len(self._queue) + sum(len(e.queue) for e in list(self._engines.values()))

    @property
    def running_rows(self) -> int:
        return sum(e.running for e in list(self._engines.values()))

    @property
    def joins(self) -> int:
        """Rows that joined a running generation, read from the engines as ``running_rows`` is: a client that
        has its joined row's first chunk sees the join counted (the step that admitted it may still run)."""
        return sum(e.stats["joins"] for e in list(self._engines.values()))

    def counters(self) -> dict:
        return {**self.stats, "joins": self.joins}

    # --- the worker thread --------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue and not self._busy():
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
        while self._queue:
            job = self._queue[0]
            if job.cancelled:
                taken.append(self._queue.popleft())  # _admit answers it at once
                continue
            engine = self._engines.get(job.key)
            if job.key not in room:
                room[job.key] = self.max_batch_size - (engine.running + len(engine.queue) if engine else 0)
            if len(job.prompts) > room[job.key] and room[job.key] < self.max_batch_size:
                break  # first come, first served: it starts when rows leave
            room[job.key] -= len(job.prompts)
            taken.append(self._queue.popleft())
        return taken

    def _busy(self) -> bool:
        return any(not e.idle for e in self._engines.values())

    def _engine(self, key: Key) -> Engine:
        engine = self._engines.get(key)
        if engine is None:
            engine = Engine(self.variants.pipeline(key), max_rows=self.max_batch_size)
            engine.on_step = self._on_step
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
        results, failures = engine.step()
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
            job.outputs[i] = result.output
            text = job.texts[i]
            if not text.complete:
                delta = text.update(result.output.generated[0].tolist(), final=True)
                updates.setdefault(job, []).append(RowUpdate(i, delta, text.finish_reason))
            self._row_done(job)
        for job, items in updates.items():
            job.push(items)
        self._finish_jobs()
        if self._settled:
            engine.cancel(self._settled)
            for job, _ in self._settled:
                if job in self._jobs:
                    self._row_done(job)
            self._settled = set()
            self._finish_jobs()

    def _on_step(self, state) -> None:
        """After a cohort's step: each row's text delta (final tokens only) and per-step view; settled rows are
        stopped."""
        canvases = row_canvases(state)
        nfe, done, steps = state.nfe.tolist(), state.done.tolist(), state.steps.tolist()
        block = getattr(state.progress, "block", None)
        blocks = block.tolist() if block is not None else [0] * state.batch_size
        decode = self.variants.base.model.tokenizer.decode
        updates: dict[Job, list[RowUpdate]] = {}
        for r, (job, i) in enumerate(state.tags):
            text = job.texts[i]
            if text.complete or job.cancelled:
                continue
            now = canvases[r]
            committed, revised = changes(now, job.previous[i], state.mask_id)
            job.previous[i] = now
            if not committed and not revised:
                continue
            delta = text.update(now.final(state.mask_id), final=bool(done[r]))
            view = None
            if job.steps:
                view = step_view(step=steps[r], nfe=nfe[r], block=blocks[r], now=now, committed=committed,
                                 revised=revised, mask_id=state.mask_id, revisable=state.revisable, decode=decode)
            updates.setdefault(job, []).append(RowUpdate(i, delta, text.finish_reason, view))
            if text.complete and not done[r]:
                self._settled.add((job, i))  # settled: stop spending forwards on it
                job.outputs[i] = _partial(state, r)
        for job, items in updates.items():
            job.push(items)

    def _row_done(self, job: Job) -> None:
        self._jobs[job] -= 1

    def _finish_jobs(self) -> None:
        for job in [j for j, left in self._jobs.items() if left <= 0]:
            outputs = job.outputs
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
        self._jobs.pop(job, None)
        self._release(job)

    def _release(self, job: Job) -> None:
        """Give back the job's share of the memory budget (once: it holds none afterwards)."""
        with self._cond:
            self.reserved -= job.reserved
            job.reserved = 0


def _partial(state, r: int):
    """A running row's output so far (a row stopped because its answer is settled)."""
    from dlm.pipeline import GenerationOutput

    return GenerationOutput(sequences=[state.sequence(r).cpu()], generated=[state.generated(r).cpu()], texts=None,
                            nfe=[int(state.nfe[r])], tokens_per_step=[state.tokens_per_step[r]])
