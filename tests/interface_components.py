"""Small components that use each extension of the interfaces, as a plugin author would write them.

Each is the smallest honest user of one capability: per-row strategy memory (:class:`AgreeTwice`), a wider
logits span and finishing rows (:class:`ExitWhenConfident`), per-row column sets (:class:`RecomputePending`),
candidate steps (:class:`FirstCandidate`) and provisional tokens (:class:`DraftAll`); plus deliberately
broken variants the contract kit must catch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache import ForwardPlan, NoCache, PrefixCache, Window
from dlm.decoding import Candidates, Commit, DecodingStrategy, RowRNG, propose, threshold_select, top_k_select
from dlm.state import GenerationState


class Empty(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AgreeTwice(DecodingStrategy):
    """Commit the positions whose proposal is the same in two consecutive steps of the block (a KLASS-like
    stability rule), plus the most confident one. Memory: each row's previous proposals, reset per block."""

    Config = Empty

    def start(self, state: GenerationState) -> None:
        self.previous = torch.full_like(state.canvas, -1)  # [B, L] proposal at the row's last step, -1 none
        self.block = torch.full((state.batch_size,), -1, dtype=torch.long)  # [B] block the memory is of

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        rows, cols = window.rows, slice(window.start, window.end)
        stale = self.block[rows] != window.block  # rows entering a new block forget the old one
        self.previous[rows[stale]] = -1
        self.block[rows] = window.block
        stable = self.previous[rows, cols] == tokens
        select = threshold_select(confidence, window.eligible, 2.0) | (stable & window.eligible)
        self.previous[rows, cols] = tokens
        return Commit(select, tokens)

    def finish(self) -> None:
        del self.previous, self.block


class LeakyAgreeTwice(AgreeTwice):
    """Broken: memory made once per object and never reset, so a generation sees the previous one's."""

    def start(self, state: GenerationState) -> None:
        if not hasattr(self, "previous"):
            self.previous = torch.full((16, 64), -1, dtype=torch.long)
            self.block = torch.full((16,), -1, dtype=torch.long)

    def finish(self) -> None:
        pass


class SharedAgreeTwice(AgreeTwice):
    """Broken: one memory for every row (indexed by window column, not by row)."""

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        cols = slice(window.start, window.end)
        stable = self.previous[0, cols][None, :] == tokens
        select = threshold_select(confidence, window.eligible, 2.0) | (stable & window.eligible)
        self.previous[0, cols] = tokens[-1]
        return Commit(select, tokens)


class ExitConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    confidence: float = Field(0.5, ge=0.0, description="finish a row once its mean pending confidence reaches this")


class ExitWhenConfident(DecodingStrategy):
    """Top-k decoding with an early exit (SchED / Prophet shaped): logits of the whole generation region every
    step; a row whose mean top-1 probability over its pending positions reaches ``confidence`` is finished
    with its proposals."""

    Config = ExitConfig

    def prepare(self, state: GenerationState, window: Window) -> Window:
        self.pending = state.pending()  # [B, L] for the finish decision
        return window.widen(min(state.gen_start, window.start), state.length)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)  # [b, S] over the span
        lo = window.start - window.logits_start
        w_tokens, w_conf = tokens[:, lo : lo + window.width], confidence[:, lo : lo + window.width]
        select = top_k_select(w_conf, window.eligible, window.quota.clamp(min=1))
        pending = self.pending[window.rows, window.logits_start : window.logits_end]
        mean = (confidence * pending).sum(dim=1) / pending.sum(dim=1).clamp(min=1)
        return Commit(select, w_tokens, finish=mean >= self.config.confidence, fill=tokens)


class RecomputePending(PrefixCache):
    """A dKV-Cache-shaped policy: a full refresh at each block's first step; otherwise each row computes only
    its still-masked columns and the columns committed since its last forward, as a per-row column set."""

    Config = Empty

    def start(self, state: GenerationState, model) -> None:
        super().start(state, model)
        self.seen = state.masked().clone()  # [B, L] masked as of each row's last forward

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        rows = window.rows
        masked = state.masked()[rows]
        if window.first_step:
            self.seen[rows] = masked
            return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=0, end=state.length,
                               kv=self.kv, key_end=state.length, refresh=True)
        need = masked | (self.seen[rows] & ~masked)  # still masked, or committed since the last forward
        need[:, window.logits_start - self.shift : window.logits_end - self.shift] = True
        self.seen[rows] = masked
        count = int(need.sum(dim=1).max())
        # each row's columns first (ascending), then repeats of its first column to reach ``count``
        order = torch.sort((~need).long(), dim=1, stable=True).indices[:, :count]  # [b, count]
        first = order[:, :1].expand_as(order)
        ranks = torch.arange(count)[None, :]
        columns = torch.where(ranks < need.sum(dim=1, keepdim=True), order, first)
        return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=int(columns.min()),
                           end=int(columns.max()) + 1, kv=self.kv, key_end=state.length, refresh=False,
                           columns=columns)


class CandidateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token: int = Field(5, ge=0, description="token the second candidate writes at the first eligible position")
    keep: bool = Field(True, description="name the kept candidate (a broken variant leaves it out)")


class FirstCandidate(DecodingStrategy):
    """Evaluate two candidates per row (the canvas as it is, and the canvas with ``token`` at its first
    eligible position), decide from the first one's logits by LLaDA's top-k rule, and keep the first."""

    Config = CandidateConfig

    def prepare(self, state: GenerationState, window: Window) -> Window:
        b, w = window.eligible.shape
        select = torch.zeros(b, 2, w, dtype=torch.bool)
        first = window.eligible.int().argmax(dim=1)
        select[torch.arange(b), 1, first] = True
        tokens = torch.full((b, 2, w), self.config.token, dtype=torch.long)
        return replace(window, candidates=Candidates(select, tokens))

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits[:, 0], mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        keep = torch.zeros(len(window.rows), dtype=torch.long) if self.config.keep else None
        return Commit(top_k_select(confidence, window.eligible, window.quota.clamp(min=1)), tokens, keep=keep)


class DraftAll(DecodingStrategy):
    """Jacobi-shaped: fill every eligible position with its proposal as a provisional draft, commit the most
    confident one; drafts are revised by later steps until committed."""

    Config = Empty

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        select = threshold_select(confidence, window.eligible, 2.0)
        return Commit(select, tokens, drafts=window.eligible & ~select)


__all__ = ["AgreeTwice", "LeakyAgreeTwice", "SharedAgreeTwice", "ExitWhenConfident", "RecomputePending",
           "FirstCandidate", "DraftAll", "NoCache"]


class BlockOnly(PrefixCache):
    """Broken: cached steps compute the block alone, whatever logits span the window asks for."""

    Config = Empty

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        refresh = window.first_step
        return ForwardPlan(rows=window.rows, all_rows=len(window.rows) == state.batch_size,
                           start=0 if refresh else window.block_start, end=state.length if refresh else window.block_end,
                           kv=self.kv, key_end=state.length, refresh=refresh)


class ColumnsMissingTheWindow(RecomputePending):
    """Broken: its column sets leave out the window's last column."""

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        plan = super().plan(state, window)
        if plan.columns is None:
            return plan
        last = window.end - 1 - self.shift
        cols = torch.where(plan.columns == last, plan.columns[:, :1], plan.columns)
        return ForwardPlan(rows=plan.rows, all_rows=plan.all_rows, start=int(cols.min()), end=int(cols.max()) + 1,
                           kv=plan.kv, key_end=plan.key_end, refresh=False, columns=cols)
