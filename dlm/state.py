"""The explicit generation state passed between the four components.

One :class:`GenerationState` holds the canvas and all per-row bookkeeping. Components read it; the only
place the canvas changes is :meth:`GenerationState.commit`, so every commit is checked in one spot.

Batches are **left-padded**: row ``r`` holds ``pad[r]`` padding columns, then its prompt, then the
generation region, which therefore starts at the same column ``gen_start`` in every row. A row's RoPE
position of column ``c`` is ``c - pad[r]`` and padding columns are masked out as keys, so a row computes what
it would compute alone. For ``blockwise`` the blocks are the same columns in every row; iteration managers
whose blocks follow each row's own positions (``block_diffusion``) keep their per-row block bookkeeping
themselves. Each iteration manager keeps its per-run progress (block, step, schedule) in a typed object of
its own in ``progress``, which no other component reads: they learn the geometry from the
:class:`~dlm.messages.Window`.

A position is *pending* while it holds MASK or a provisional (draft) token. Committed tokens never change, but
for one family: an editing strategy (a commit's :class:`~dlm.messages.Edits`) may rewrite placed tokens of a row's
current block, never outside it; ``edited`` records what the last step rewrote, ``held`` the rows whose current
block a strategy keeps open.

**Run memory lives here.** Each component's per-run memory is on the state, per row (see :mod:`dlm.memory`):
``progress`` (the iteration manager's), ``memory["cache"]`` and ``memory["decoding"]``, and the per-row
random streams ``rng``. The components keep only their configs, so one pipeline runs any number of
generations at once. Rows leave (:meth:`GenerationState.take`) and join (:meth:`GenerationState.cat`)
between steps: continuous batching (:mod:`dlm.engine`) is built on these two.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dlm._compat import moved
from dlm.errors import DecodingError
from dlm.memory import cat_rows, take_rows
from dlm.messages import Drafts, Edits, Finish, Idle

if TYPE_CHECKING:
    from dlm.messages import Commit, Window

__all__ = ["GenerationState"]

EDIT_RULES = (  # what an Edits commit may not do, as GenerationState.commit reports it
    "a position outside its row's current block or inside the prompt; only placed tokens of the row's current "
    "block may be edited",
    "a masked position, or one the same commit selects or drafts; masked positions are committed through select",
    "a token into MASK; an edit rewrites a placed token with another token",
)


__getattr__ = moved("dlm.state", {"Window": "dlm.messages:Window", "Commit": "dlm.messages:Commit"})


@dataclass
class GenerationState:
    """Canvas, per-row bookkeeping and the components' run memory of one batched generation."""

    canvas: Tensor  # [B, L] long: pad | prompt | generation region
    pad: Tensor  # [B] long: left-padding columns of each row
    prompt_lengths: Tensor  # [B] long
    gen_start: int  # first column of the generation region (same for every row)
    gen_length: int
    mask_id: int
    eos_ids: tuple[int, ...]  # end tokens of the model, EOS first
    nfe: Tensor  # [B] long: forward passes each row took part in
    done: Tensor  # [B] bool: row finished (all blocks complete or stopped at EOS)
    provisional: Tensor | None = None  # [B, L] bool: positions holding a revisable draft token (None: none yet)
    held: Tensor | None = None  # [B] bool: rows whose current block a decoding strategy holds open (Edits.hold)
    edited: Tensor | None = None  # [B, L] bool: placed tokens the last step's Edits rewrote (None: none); caches
    # that reuse K/V recompute them
    progress: Any = None  # the iteration manager's run memory (a RowMemory of its own); no other component reads it
    memory: dict[str, Any] = field(default_factory=dict)  # "cache", "decoding": the other components' run memory
    rng: Any = None  # the per-row random streams (dlm.rng.RowRNG), set when the generation starts
    tags: list | None = None  # per row: who the row belongs to (a request, an input index), kept through take/cat
    history: Tensor | None = None  # [B, H] long: tokens committed at each step a row took part in (its own count)
    steps: Tensor | None = None  # [B] long: steps each row took part in (entries of ``history`` used)
    last_commits: Tensor | None = None  # [B] long: tokens the last step committed per row (0 outside its window)
    last_window: Window | None = None  # the window of the step just taken (for traces)
    step_bound: int = 0  # host upper bound of ``steps`` (steps taken by the generation)
    cancels: int = 0  # changes of the row set from outside the loop (cancel, take, cat): cached row sets go stale
    # revisable canvases (DiffusionGemma): a row's pending positions may all be redrafted in a step without any being
    # committed; an iteration manager that declares ``revisable`` bounds the steps of a canvas instead
    revisable: bool = False

    def __post_init__(self) -> None:
        b = self.canvas.shape[0]
        if self.history is None:
            self.history = torch.zeros(b, 0, dtype=torch.long, device=self.canvas.device)
        if self.steps is None:
            self.steps = torch.zeros(b, dtype=torch.long, device=self.canvas.device)
        if self.last_commits is None:
            self.last_commits = torch.zeros(b, dtype=torch.long, device=self.canvas.device)
        if self.tags is None:
            self.tags = list(range(b))

    @property
    def batch_size(self) -> int:
        return self.canvas.shape[0]

    @property
    def length(self) -> int:
        return self.canvas.shape[1]

    @property
    def device(self) -> torch.device:
        return self.canvas.device

    @property
    def padded(self) -> bool:
        """True when some row has left padding (then attention needs a key mask).

        Read once per row set (``pad`` never changes), so the forwards do not wait for the device."""
        cached = self.__dict__.get("_padded")
        if cached is None:
            cached = self.__dict__["_padded"] = bool(self.pad.any())
        return cached

    def masked(self) -> Tensor:
        """[B, L] bool: positions still holding MASK."""
        return self.canvas == self.mask_id

    def count_forward(self, rows: Tensor) -> None:
        """Add one forward pass to the NFE of ``rows``."""
        self.nfe[rows] += 1

    def pending(self) -> Tensor:
        """[B, L] bool: positions not yet final (MASK or a provisional draft token)."""
        masked = self.masked()
        return masked if self.provisional is None else masked | self.provisional

    @property
    def block(self) -> int:
        """Largest block index of the step just taken (0 before the first step); per row: ``last_window``."""
        if self.last_window is None or not len(self.last_window.rows):
            return 0
        return int(self.last_window.geometry.block.max())

    @property
    def tokens_per_step(self) -> list[list[int]]:
        """Per row: tokens committed at each step it took part in."""
        history, steps = self.history.cpu(), self.steps.cpu()
        return [history[r, : int(steps[r])].tolist() for r in range(self.batch_size)]

    # --- rows leave and join ----------------------------------------------------------------------------

    def take(self, rows: Tensor | list[int]) -> "GenerationState":
        """A state holding only ``rows`` (in that order), with every component's run memory cut to them."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        dev = rows.to(self.device)
        changed = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("gen_start", "gen_length", "mask_id", "eos_ids", "cancels", "last_window", "step_bound",
                          "revisable"):
                continue
            if f.name == "memory":
                changed[f.name] = {k: take_rows(v, dev) for k, v in value.items()}
            else:
                changed[f.name] = take_rows(value, dev)
        return replace(self, **changed, last_window=None, cancels=self.cancels + 1)

    def cat(self, other: "GenerationState") -> "GenerationState":
        """This state's rows followed by ``other``'s: rows started (by the same pipeline) to join this run.

        The two must share the canvas layout (``gen_start``, ``gen_length``, the canvas length).
        """
        if (self.gen_start, self.gen_length, self.length) != (other.gen_start, other.gen_length, other.length):
            raise ValueError(
                f"cannot join a state with generation region at column {other.gen_start} ({other.gen_length} "
                f"tokens, canvas {other.length}) to one at column {self.gen_start} ({self.gen_length} tokens, canvas "
                f"{self.length}); start the newcomers with gen_start={self.gen_start}"
            )
        if self.provisional is not None or other.provisional is not None:
            a = self.provisional if self.provisional is not None else torch.zeros_like(self.canvas, dtype=torch.bool)
            b = other.provisional if other.provisional is not None else torch.zeros_like(other.canvas, dtype=torch.bool)
            provisional = torch.cat((a, b))
        else:
            provisional = None
        held = edited = None
        if self.held is not None or other.held is not None:
            held = torch.cat([s.held if s.held is not None else torch.zeros_like(s.done) for s in (self, other)])
        if self.edited is not None or other.edited is not None:
            edited = torch.cat([s.edited if s.edited is not None else torch.zeros_like(s.canvas, dtype=torch.bool)
                                for s in (self, other)])
        width = max(self.history.shape[1], other.history.shape[1])
        grow = lambda h: torch.nn.functional.pad(h, (0, width - h.shape[1]))  # noqa: E731
        if set(self.memory) != set(other.memory):
            raise ValueError(f"cannot join states with run memory {sorted(self.memory)} and {sorted(other.memory)}")
        return replace(
            self,
            canvas=torch.cat((self.canvas, other.canvas)),
            pad=torch.cat((self.pad, other.pad)),
            prompt_lengths=torch.cat((self.prompt_lengths, other.prompt_lengths)),
            nfe=torch.cat((self.nfe, other.nfe)),
            done=torch.cat((self.done, other.done)),
            provisional=provisional,
            held=held,
            edited=edited,
            progress=cat_rows(self.progress, other.progress, name="progress"),
            memory={k: cat_rows(v, other.memory[k], name=k) for k, v in self.memory.items()},
            rng=cat_rows(self.rng, other.rng, name="rng"),
            tags=list(self.tags) + list(other.tags),
            history=torch.cat((grow(self.history), grow(other.history))),
            steps=torch.cat((self.steps, other.steps)),
            last_commits=torch.cat((self.last_commits, other.last_commits)),
            last_window=None,
            step_bound=max(self.step_bound, other.step_bound),
            cancels=self.cancels + 1,
        )

    @property
    def shiftable(self) -> bool:
        """Every component's run memory can follow the canvas growing or shrinking on the left (:meth:`shift`)."""
        from dlm.memory import shiftable

        return shiftable(self.progress) and all(shiftable(v) for v in self.memory.values())

    def shift(self, n: int) -> "GenerationState":
        """This generation with ``n`` padding columns added on the left of every row (``n < 0``: ``-n`` removed,
        which must all be padding): the generation region moves to column ``gen_start + n``. Every row computes
        exactly what it computed before (its positions are its columns minus its padding, and both move), so
        a running generation can make room for a newcomer's longer prompt, or drop padding no row needs."""
        from dlm.memory import shift_columns

        if n < 0 and (int(self.pad.min()) < -n):
            raise ValueError(f"cannot drop {-n} columns: some row has only {int(self.pad.min())} padding columns")
        return replace(
            self,
            canvas=shift_columns(self.canvas, n, 1, self.eos_ids[0]),
            pad=self.pad + n,
            gen_start=self.gen_start + n,
            provisional=shift_columns(self.provisional, n, 1, False),
            edited=shift_columns(self.edited, n, 1, False),
            progress=None if self.progress is None else self.progress.shift_columns(n),
            memory={k: None if v is None else v.shift_columns(n) for k, v in self.memory.items()},
            last_window=None,
            cancels=self.cancels + 1,
        )

    # --- the one writer of the canvas -------------------------------------------------------------------

    def commit(self, window: Window, commit: Commit) -> None:
        """Write ``commit`` into the canvas, after checking the invariants every strategy must keep.

        Only eligible positions may be committed (or drafted), MASK is never written, and every row of the
        window with an eligible position commits at least one token (or finishes, or idles by design: a commit's
        :class:`~dlm.messages.Idle`). Edits (a commit's
        :class:`~dlm.messages.Edits`) rewrite only placed tokens of each row's current block, outside the prompt,
        never into MASK, and never where the same commit selects or drafts (:data:`EDIT_RULES`). This is the only writer
        of the canvas besides the iteration managers' own fill of ended rows (``stop_at_eos`` writes EOS
        after a row's first end token, which no component may read as a decision).
        """
        select = commit.select
        if select.shape != window.eligible.shape:
            raise DecodingError(
                f"commit has shape {tuple(select.shape)}, the window is {tuple(window.eligible.shape)}"
            )
        drafts, finish, edits, idle = commit.get(Drafts), commit.get(Finish), commit.get(Edits), commit.get(Idle)
        written = select if drafts is None else select | drafts.mask
        counts = select.sum(dim=1)
        starved = (counts == 0) & window.eligible.any(dim=1)
        if finish is not None:
            starved &= ~finish.rows
        if self.revisable and drafts is not None:  # a revisable canvas progresses by redrafting (bounded steps)
            starved &= ~drafts.mask.any(dim=1)
        if idle is not None:
            starved &= ~idle.rows
        checks = [(written & ~window.eligible).any(), (written & (commit.tokens == self.mask_id)).any(), starved.any()]
        if edits is not None:
            checks += self._edit_problems(window, written, edits)
        # the invariants in one host read (one synchronisation per step, not one per rule)
        ineligible, masks, stalled, *edit_problems = torch.stack(checks).tolist()
        if ineligible:
            raise DecodingError("a decoding strategy committed a position that is not eligible")
        if masks:
            raise DecodingError("a decoding strategy committed the MASK token")
        if stalled:
            raise DecodingError(
                "a decoding strategy committed no token for a row that still has masked positions; "
                "every step must commit at least one token per active row, or the loop would not end"
            )
        for problem, message in zip(edit_problems, EDIT_RULES):
            if problem:
                raise DecodingError(f"a decoding strategy edited {message}")
        rows, cols = window.rows, slice(window.start, window.end)
        self._apply_edits(window, edits)
        region = self.canvas[rows, cols]
        self.canvas[rows, cols] = torch.where(written, commit.tokens, region)
        if drafts is not None or self.provisional is not None:
            self._mark_provisional(window, select, None if drafts is None else drafts.mask)
        if finish is not None:
            counts = counts + self._finish(window, finish)
        self._record(rows, counts)
        self.last_window = window

    def _edit_problems(self, window: Window, written: Tensor, edits: Edits) -> list[Tensor]:
        """The :class:`~dlm.messages.Edits` invariants (one 0-d bool tensor each, in the order of EDIT_RULES)."""
        lo, hi = window.logits_start, window.logits_end
        b = len(window.rows)
        if tuple(edits.mask.shape) != (b, hi - lo) or tuple(edits.tokens.shape) != (b, hi - lo) or (
                edits.hold is not None and tuple(edits.hold.shape) != (b,)):
            raise DecodingError(f"Edits must be mask and tokens [{b}, {hi - lo}] over the logits span [{lo}, {hi}) "
                                f"and hold [{b}] (or None); got {tuple(edits.mask.shape)}, {tuple(edits.tokens.shape)}")
        cols = torch.arange(lo, hi, device=self.device)[None, :]  # [1, S]
        first = torch.clamp(window.block_start, min=self.gen_start).to(self.device)[:, None]
        inside = (cols >= first) & (cols < window.block_end.to(self.device)[:, None])
        span_written = torch.zeros_like(edits.mask)
        span_written[:, window.start - lo : window.end - lo] = written
        placed = self.canvas[window.rows, lo:hi] != self.mask_id
        return [(edits.mask & ~inside).any(), (edits.mask & (~placed | span_written)).any(),
                (edits.mask & (edits.tokens == self.mask_id)).any()]

    def _apply_edits(self, window: Window, edits: Edits | None) -> None:
        """Write checked edits; record them (``edited``) and the held rows (``held``) for the next step."""
        self.edited = None
        if edits is None:
            if self.held is not None:
                self.held[window.rows] = False
            return
        rows, lo, hi = window.rows, window.logits_start, window.logits_end
        self.canvas[rows, lo:hi] = torch.where(edits.mask, edits.tokens, self.canvas[rows, lo:hi])
        self.edited = torch.zeros_like(self.canvas, dtype=torch.bool)
        self.edited[rows, lo:hi] = edits.mask
        if self.held is None:
            self.held = torch.zeros_like(self.done)
        self.held[rows] = False if edits.hold is None else edits.hold

    def _record(self, rows: Tensor, counts: Tensor) -> None:
        """Per-row step history: ``counts`` [b] tokens committed by ``rows`` in this step."""
        self.last_commits.zero_()
        self.last_commits[rows] = counts
        # the history grows in chunks; a row's next entry is at its own step count, which never exceeds
        # ``step_bound`` (a host count, so growing needs no read of the device)
        if self.step_bound >= self.history.shape[1]:
            self.history = torch.nn.functional.pad(self.history, (0, max(16, self.history.shape[1])))
        self.history[rows, self.steps[rows]] = counts
        self.steps[rows] += 1
        self.step_bound += 1

    def _mark_provisional(self, window: Window, select: Tensor, drafts: Tensor | None) -> None:
        if self.provisional is None:
            self.provisional = torch.zeros_like(self.canvas, dtype=torch.bool)
        rows, cols = window.rows, slice(window.start, window.end)
        region = self.provisional[rows, cols] & ~select
        if drafts is not None:
            region |= drafts & ~select
        self.provisional[rows, cols] = region

    def _finish(self, window: Window, finish: Finish) -> Tensor:
        """Commit every pending position of the finishing rows from ``fill``; end them. [b] tokens written."""
        rows_finishing = finish.rows
        if finish.fill is None or rows_finishing.shape != window.rows.shape:
            raise DecodingError("a commit that finishes rows needs Finish(rows [b], fill [b, span] tokens)")
        lo, hi = window.logits_start, window.logits_end
        pending = self.pending()[window.rows] & rows_finishing[:, None]  # [b, L]
        outside = pending.clone()
        outside[:, lo:hi] = False
        if bool(outside.any()):
            raise DecodingError(
                f"a decoding strategy finished a row with pending positions outside its logits span [{lo}, {hi}); "
                "widen the window to the whole generation region to finish rows"
            )
        span = pending[:, lo:hi]
        if bool((span & (finish.fill == self.mask_id)).any()):
            raise DecodingError("a decoding strategy finished a row with the MASK token")
        rows = window.rows
        self.canvas[rows, lo:hi] = torch.where(span, finish.fill, self.canvas[rows, lo:hi])
        if self.provisional is not None:
            self.provisional[rows, lo:hi] &= ~span
        self.done[rows[rows_finishing]] = True
        return span.sum(dim=1)

    def noise(self, rows: Tensor, start: int, tokens: Tensor) -> None:
        """Start a revisable canvas: write ``tokens`` [b, W] (uniform noise) at columns ``[start, start + W)`` of
        ``rows`` as provisional (pending) tokens. Only a ``revisable`` state, only into masked positions: the
        iteration manager's initialisation of a canvas, never a decision."""
        end = start + tokens.shape[1]
        if not self.revisable:
            raise DecodingError("only a revisable state (an iteration manager that declares it) starts canvases "
                                "from noise")
        if bool((self.canvas[rows, start:end] != self.mask_id).any()):
            raise DecodingError(f"columns [{start}, {end}) already hold tokens; a canvas starts on masked columns")
        self.canvas[rows, start:end] = tokens
        if self.provisional is None:
            self.provisional = torch.zeros_like(self.canvas, dtype=torch.bool)
        self.provisional[rows, start:end] = True

    def cancel(self, rows: Tensor | list[int]) -> None:
        """Take ``rows`` out of the generation now, leaving their canvas as it is (masks included).

        For callers that stop a row from outside the loop (a trace hook whose client went away): the
        iteration managers never give a done row a window again, so it costs no further compute.
        """
        self.done[torch.as_tensor(rows, dtype=torch.long, device=self.device)] = True
        self.cancels += 1

    def generated(self, row: int) -> Tensor:
        """The generation region of ``row``."""
        return self.canvas[row, self.gen_start :]

    def sequence(self, row: int) -> Tensor:
        """Prompt and generation of ``row``, without its padding."""
        return self.canvas[row, int(self.pad[row]) :]
