"""Small components that use each extension of the interfaces (plugin API 2.0), as a plugin author would
write them.

Each is the smallest honest user of one capability: per-row strategy memory kept on the state
(:class:`AgreeTwice`), a wider logits span and finishing rows (:class:`ExitWhenConfident`), per-row column
sets (:class:`RecomputePending`), candidate steps planned by the cache (:class:`FirstCandidate`) and
provisional tokens (:class:`DraftAll`); each keeps only its config on ``self``, reads each row's own
geometry, and declares ``joinable``. Plus deliberately broken variants the contract kit must catch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache import NoCache, PrefixCache
from dlm.decoding import DecodingStrategy, RowRNG, propose, threshold_select, top_k_select
from dlm.memory import RowMemory, shared_field
from dlm.messages import CacheEnv, Candidates, Commit, Drafts, Finish, ForwardPlan, Keep, KVStore, Window
from dlm.state import GenerationState


class Empty(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- 1. per-row strategy memory, on the state ----------------------------------------------------------


@dataclass
class AgreeMemory(RowMemory):
    """AgreeTwice's run memory, one entry per batch row."""

    previous: Tensor  # [B, L] proposal at the row's last step, -1 none
    block: Tensor  # [B] (host) block the row's memory is of, -1 none


class AgreeTwice(DecodingStrategy):
    """Commit the positions whose proposal is the same in two consecutive steps of the block (a KLASS-like
    stability rule), plus the most confident one. Memory: each row's previous proposals, reset per block."""

    Config = Empty
    joinable = True

    def start(self, state: GenerationState) -> AgreeMemory:
        return AgreeMemory(previous=torch.full_like(state.canvas, -1),
                           block=torch.full((state.batch_size,), -1, dtype=torch.long))

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        m: AgreeMemory = self.memory(state)
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        rows, cols = window.rows, slice(window.start, window.end)
        host = rows.cpu()
        stale = m.block[host] != window.block  # [b]: rows entering a new block forget the old one (per row)
        m.previous[rows[stale.to(rows.device)]] = -1
        m.block[host] = window.block
        stable = m.previous[rows, cols] == tokens
        select = threshold_select(confidence, window.eligible, 2.0) | (stable & window.eligible)
        m.previous[rows, cols] = tokens
        return Commit(select, tokens)


class LeakyAgreeTwice(AgreeTwice):
    """Broken: memory made once per object (kept on ``self``) and never reset, so a generation sees the
    previous one's."""

    def start(self, state: GenerationState) -> AgreeMemory:
        if not hasattr(self, "kept"):
            self.kept = AgreeMemory(previous=torch.full((16, 64), -1, dtype=torch.long),
                                    block=torch.full((16,), -1, dtype=torch.long))
        return self.kept


class SharedAgreeTwice(AgreeTwice):
    """Broken: one memory for every row (indexed by window column, not by row)."""

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        m: AgreeMemory = self.memory(state)
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        cols = slice(window.start, window.end)
        stable = m.previous[0, cols][None, :] == tokens
        select = threshold_select(confidence, window.eligible, 2.0) | (stable & window.eligible)
        m.previous[0, cols] = tokens[-1]
        return Commit(select, tokens)


# --- 3. logits beyond the window, finishing rows ----------------------------------------------------------


class ExitConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    confidence: float = Field(0.5, ge=0.0, description="finish a row once its mean pending confidence reaches this")


class ExitWhenConfident(DecodingStrategy):
    """Top-k decoding with an early exit (SchED / Prophet shaped): logits of the whole generation region every
    step; a row whose mean top-1 probability over its pending positions reaches ``confidence`` is finished
    with its proposals. The pending positions beyond the window come from the state (``state.pending()``)."""

    Config = ExitConfig
    joinable = True

    def prepare(self, state: GenerationState, window: Window) -> Window:
        return window.widen(min(state.gen_start, window.start), state.length)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)  # [b, S] over the span
        lo = window.start - window.logits_start
        w_tokens, w_conf = tokens[:, lo : lo + window.width], confidence[:, lo : lo + window.width]
        select = top_k_select(w_conf, window.eligible, window.quota.clamp(min=1))
        pending = state.pending()[window.rows, window.logits_start : window.logits_end]
        mean = (confidence * pending).sum(dim=1) / pending.sum(dim=1).clamp(min=1)
        return Commit(select, w_tokens, Finish(mean >= self.config.confidence, tokens))


# --- 4. per-row column sets ----------------------------------------------------------------------------


@dataclass
class RecomputeMemory(RowMemory):
    """RecomputePending's run memory: the KV store, and what each row had masked at its last forward."""

    kv: KVStore
    seen: Tensor  # [B, L] bool: masked as of each row's last forward
    shift: int = shared_field(default=0)


class RecomputePending(PrefixCache):
    """A dKV-Cache-shaped policy: a full refresh at each row's block's first step; otherwise each row computes
    only its still-masked columns and the columns committed since its last forward, as a per-row column set.
    Rows at different steps share one forward: a row at its first step computes every column.

    Not ``joinable``: a column set stores the K/V of every column it computes (it cannot peek), and every row
    must compute the whole logits span of the step, so a row sharing a step with a row at another block would
    refresh columns it would not refresh alone. Rows arriving later start a generation of their own."""

    Config = Empty
    joinable = False

    def start(self, state: GenerationState, env: CacheEnv) -> RecomputeMemory:
        return RecomputeMemory(kv=env.new_kv(state.batch_size, state.length), seen=state.masked().clone(),
                               shift=env.capabilities.logit_shift)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: RecomputeMemory = self.memory(state)
        rows = window.rows
        masked = state.masked()[rows]
        first = window.first_step.to(state.device)  # [b], per row
        seen, m.seen[rows] = m.seen[rows], masked
        if bool(first.all()):
            return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=0, end=state.length,
                               kv=m.kv, key_end=state.length, refresh=True)
        need = masked | (seen & ~masked) | first[:, None]  # still masked, committed since, or refreshing
        need[:, window.logits_start - m.shift : window.logits_end - m.shift] = True
        count = int(need.sum(dim=1).max())
        # each row's columns first (ascending), then repeats of its first column to reach ``count``
        order = torch.sort((~need).long(), dim=1, stable=True).indices[:, :count]  # [b, count]
        first_col = order[:, :1].expand_as(order)
        ranks = torch.arange(count, device=state.device)[None, :]
        columns = torch.where(ranks < need.sum(dim=1, keepdim=True), order, first_col)
        return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=int(columns.min()),
                           end=int(columns.max()) + 1, kv=m.kv, key_end=state.length, refresh=False,
                           columns=columns)


# --- 5. candidate steps -----------------------------------------------------------------------------------


class CandidateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token: int = Field(5, ge=0, description="token the second candidate writes at the first eligible position")
    keep: bool = Field(True, description="name the kept candidate (a broken variant leaves it out)")


class FirstCandidate(DecodingStrategy):
    """Evaluate two candidates per row (the canvas as it is, and the canvas with ``token`` at its first
    eligible position), decide from the first one's logits by LLaDA's top-k rule, and keep the first."""

    Config = CandidateConfig
    joinable = True

    def prepare(self, state: GenerationState, window: Window) -> Window:
        b, w = window.eligible.shape
        select = torch.zeros(b, 2, w, dtype=torch.bool, device=window.eligible.device)
        first = window.eligible.int().argmax(dim=1)
        select[torch.arange(b), 1, first] = True
        tokens = torch.full((b, 2, w), self.config.token, dtype=torch.long, device=window.eligible.device)
        return window.extend(Candidates(select, tokens))

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits[:, 0], mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        commit = Commit(top_k_select(confidence, window.eligible, window.quota.clamp(min=1)), tokens)
        if self.config.keep:
            commit = commit.extend(Keep(torch.zeros(len(window.rows), dtype=torch.long, device=tokens.device)))
        return commit


# --- 6. provisional tokens --------------------------------------------------------------------------------


class DraftAll(DecodingStrategy):
    """Jacobi-shaped: fill every eligible position with its proposal as a provisional draft, commit the most
    confident one; drafts are revised by later steps until committed."""

    Config = Empty
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                     rows=window.rows)
        select = threshold_select(confidence, window.eligible, 2.0)
        return Commit(select, tokens, Drafts(window.eligible & ~select))


__all__ = ["AgreeTwice", "LeakyAgreeTwice", "SharedAgreeTwice", "ExitWhenConfident", "RecomputePending",
           "FirstCandidate", "DraftAll", "NoCache"]


# --- broken caches ----------------------------------------------------------------------------------------


class BlockOnly(PrefixCache):
    """Broken: cached steps compute the blocks alone, whatever logits span the window asks for."""

    Config = Empty

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        refresh = bool(window.first_step.all())
        start = 0 if refresh else int(window.block_start.min())
        end = state.length if refresh else int(window.block_end.max())
        return ForwardPlan(rows=window.rows, all_rows=len(window.rows) == state.batch_size, start=start, end=end,
                           kv=self.memory(state).kv, key_end=state.length, refresh=refresh)


class ColumnsMissingTheWindow(RecomputePending):
    """Broken: its column sets leave out the window's last column."""

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        plan = super().plan(state, window)
        if plan.columns is None:
            return plan
        last = window.end - 1 - self.memory(state).shift
        cols = torch.where(plan.columns == last, plan.columns[:, :1], plan.columns)
        return ForwardPlan(rows=plan.rows, all_rows=plan.all_rows, start=int(cols.min()), end=int(cols.max()) + 1,
                           kv=plan.kv, key_end=plan.key_end, refresh=False, columns=cols)
