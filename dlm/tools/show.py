"""Terminal display of the canvas being denoised (``dlm generate --show``).

Each step prints each row's generation region: a committed token as its text, MASK as ``_``. A provisional token
(a draft, or any token of a revisable canvas: DiffusionGemma redrafts its whole canvas every step until it is done)
is not final, and is shown so: ``‹x›``, or ``«x»`` when this step wrote or changed it (a revision). On a terminal
that takes colour, the same marks are dim and reverse video instead of brackets. The line ends with the tokens the
step committed (``+n``) and, on a revisable canvas, the provisional tokens it revised (``~n``).
"""

from __future__ import annotations

from typing import TextIO

from dlm.state import GenerationState

MASK_GLYPH = "_"
PROVISIONAL = ("‹", "›")  # a provisional token, unchanged by this step
REVISED = ("«", "»")  # a provisional token this step wrote or changed
COLOUR = {PROVISIONAL: ("\x1b[2m", "\x1b[0m"), REVISED: ("\x1b[7m", "\x1b[0m")}  # dim, reverse video


class CanvasPrinter:
    """A trace callback printing, after each step, each row's generation region (see the module doc)."""

    def __init__(self, pipeline, stream: TextIO, *, colour: bool | None = None) -> None:
        self.tokenizer = pipeline.model.tokenizer
        self.stream = stream
        self.colour = stream.isatty() if colour is None else colour
        self.step = 0
        self.previous: list[list[int]] | None = None

    def piece(self, state: GenerationState, t: int) -> str:
        if t == state.mask_id:
            return MASK_GLYPH
        if self.tokenizer is None:
            return str(t)
        if t in state.eos_ids:
            return "·"
        return self.tokenizer.decode([t]).replace("\n", "⏎") or "?"

    def render(self, state: GenerationState, row: int, provisional: list[bool] | None = None,
               before: list[int] | None = None) -> str:
        """Row ``row``'s generation region; ``provisional`` marks its provisional positions and ``before`` is the
        region at the previous step (a provisional token that differs from it is a revision)."""
        ids = state.generated(row).tolist()
        pieces = []
        for c, t in enumerate(ids):
            text = self.piece(state, t)
            if provisional is not None and provisional[c]:
                marks = REVISED if before is None or before[c] != t else PROVISIONAL
                left, right = COLOUR[marks] if self.colour else marks
                text = f"{left}{text}{right}"
            pieces.append(text)
        return ("" if self.tokenizer is not None else " ").join(pieces)

    def __call__(self, state: GenerationState) -> None:
        self.step += 1
        committed = state.last_commits.tolist()
        gen = state.canvas[:, state.gen_start:]
        provisional = (state.pending()[:, state.gen_start:] & (gen != state.mask_id)).tolist()
        before = self.previous if self.previous is not None and len(self.previous) == state.batch_size else None
        now = gen.tolist()
        for r in range(state.batch_size):
            tag = f"step {self.step:>3} row {r}" if state.batch_size > 1 else f"step {self.step:>3}"
            text = self.render(state, r, provisional[r], None if before is None else before[r])
            tail = f"+{committed[r]}"
            if state.revisable:
                old = None if before is None else before[r]
                revised = sum(p and (old is None or old[c] != t) for c, (t, p) in enumerate(zip(now[r], provisional[r])))
                tail += f" ~{revised}"
            print(f"{tag} | {text} | {tail}", file=self.stream, flush=True)
        self.previous = now
