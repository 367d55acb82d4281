"""What a decoding strategy answers: the :class:`Commit` and its extensions. Part of :mod:`dlm.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dlm.messages.base import Message, _deprecated


@dataclass(frozen=True)
class Drafts:
    """Commit extension (Jacobi decoding): eligible positions to fill with a *provisional* token from
    ``Commit.tokens``, which later steps may revise; committed tokens never change."""

    mask: Tensor  # [b, W] bool


@dataclass(frozen=True)
class Finish:
    """Commit extension (early exit: SchED, Prophet): rows to finish now. Every position of theirs still
    pending in the logits span takes its token from ``fill`` ([b, S] over the span), and the row ends. The
    span must hold every pending position of a finishing row (widen it to the generation)."""

    rows: Tensor  # [b] bool
    fill: Tensor  # [b, S] long


@dataclass(frozen=True)
class Edits:
    """Commit extension (token editing: LLaDA2.1's T2T editing, DMax-style edit sampling): placed tokens of each
    row's current block rewritten, and the block held open for more steps.

    ``mask`` [b, S] over the logits span (like :class:`Finish`'s ``fill``; widen the window to the rows' blocks to
    edit beyond it): positions whose token becomes ``tokens`` [b, S]. The invariant, checked by
    :meth:`dlm.state.GenerationState.commit`: an edited position lies in its row's current block
    (``window.block_start``/``block_end``) and in the generation region (never the prompt), holds a placed token (a
    masked position is committed through ``select``; an edit never touches what ``select`` or drafts write in the
    same commit), and its new token is not MASK. Tokens outside a row's current block never change.

    ``hold`` [b] bool (None: no row): the strategy is not done with the row's current block. An iteration manager
    providing ``edits`` (:mod:`dlm.compat`) keeps a held row in its block for another step even when nothing in it
    is pending, and ends a held row at an end token only once its block is released (its tokens may still
    change). A strategy releases a block by a commit without ``hold`` for that row; until then it must bound the
    steps it holds (the loop has no other bound for held rows).

    The state records the edited positions of the last step (``state.edited``): a cache that reuses K/V must
    recompute them (they changed though they were committed).
    """

    mask: Tensor  # [b, S] bool
    tokens: Tensor  # [b, S] long
    hold: Tensor | None = None  # [b] bool


@dataclass(frozen=True)
class Keep:
    """Commit extension (candidate steps): the candidate whose K/V the cache keeps, per row."""

    index: Tensor  # [b] long


@dataclass(frozen=True)
class Idle:
    """Commit extension (stochastic samplers whose per-step count is random: MDLM's ancestral step, in which each
    masked position unmasks with a probability, may unmask none): rows that commit nothing in this step though
    they have eligible positions. Without it such a row is refused (the loop would not end); with it the strategy
    bounds the steps a row may idle (its schedule ends with a step that commits every remaining position), and
    an iteration manager must allow those steps (``ancestral`` does; ``blockwise`` allows at most
    ``block_length`` steps per block)."""

    rows: Tensor  # [b] bool


class Commit(Message):
    """A decoding strategy's decision: which window positions to commit, with which tokens.

    Families of algorithms attach their extensions: :class:`Drafts`, :class:`Finish`, :class:`Keep`, :class:`Edits`,
    :class:`Idle`.
    """

    __slots__ = ("select", "tokens", "extensions")

    def __init__(self, select: Tensor, tokens: Tensor, *extensions: Any, drafts: Tensor | None = None,
                 finish: Tensor | None = None, fill: Tensor | None = None, keep: Tensor | None = None) -> None:
        items = [e for e in extensions if e is not None]
        if drafts is not None or finish is not None or keep is not None:
            _deprecated("Commit(drafts=, finish=, fill=, keep=)", "Commit(select, tokens, Drafts(...), Finish(...), Keep(...))")
            if drafts is not None:
                items.append(Drafts(drafts))
            if finish is not None:
                items.append(Finish(finish, fill))
            if keep is not None:
                items.append(Keep(keep))
        object.__setattr__(self, "select", select)  # [b, W] bool, rows as in the window
        object.__setattr__(self, "tokens", tokens)  # [b, W] long, meaningful where ``select`` (or drafts)
        object.__setattr__(self, "extensions", tuple(items))

    def __setattr__(self, name, value) -> None:
        raise AttributeError("Commit is immutable; use extend()")

    def __repr__(self) -> str:
        return f"Commit(select={self.select!r}, tokens={self.tokens!r}, extensions={self.extensions!r})"

    def extend(self, *items: Any) -> "Commit":
        kept = tuple(e for e in self.extensions if not any(type(e) is type(i) for i in items))
        return Commit(self.select, self.tokens, *kept, *items)

    def without(self, kind: type) -> "Commit":
        return Commit(self.select, self.tokens, *(e for e in self.extensions if not isinstance(e, kind)))

    # --- names of plugin API 1.x, kept for one minor release ---
    @property
    def drafts(self) -> Tensor | None:
        _deprecated("Commit.drafts", "commit.get(Drafts).mask")
        d = self.get(Drafts)
        return None if d is None else d.mask

    @property
    def finish(self) -> Tensor | None:
        _deprecated("Commit.finish", "commit.get(Finish).rows")
        f = self.get(Finish)
        return None if f is None else f.rows

    @property
    def fill(self) -> Tensor | None:
        _deprecated("Commit.fill", "commit.get(Finish).fill")
        f = self.get(Finish)
        return None if f is None else f.fill

    @property
    def keep(self) -> Tensor | None:
        _deprecated("Commit.keep", "commit.get(Keep).index")
        k = self.get(Keep)
        return None if k is None else k.index


# --- model inputs -------------------------------------------------------------------------------------


