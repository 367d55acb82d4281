"""Terminal display of the canvas being denoised (``dlm generate --show``)."""

from __future__ import annotations

from typing import TextIO

from dlm.state import GenerationState

MASK_GLYPH = "_"


class CanvasPrinter:
    """A trace callback printing, after each step, each row's generation region (masks as ``_``)."""

    def __init__(self, pipeline, stream: TextIO) -> None:
        self.tokenizer = pipeline.model.tokenizer
        self.stream = stream
        self.step = 0

    def render(self, state: GenerationState, row: int) -> str:
        ids = state.generated(row).tolist()
        if self.tokenizer is None:
            return " ".join(MASK_GLYPH if t == state.mask_id else str(t) for t in ids)
        pieces = []
        for t in ids:
            if t == state.mask_id:
                pieces.append(MASK_GLYPH)
            elif t in state.eos_ids:
                pieces.append("·")
            else:
                pieces.append(self.tokenizer.decode([t]).replace("\n", "⏎") or "?")
        return "".join(pieces)

    def __call__(self, state: GenerationState) -> None:
        self.step += 1
        committed = state.last_commits.tolist()
        for r in range(state.batch_size):
            tag = f"step {self.step:>3} row {r}" if state.batch_size > 1 else f"step {self.step:>3}"
            print(f"{tag} | {self.render(state, r)} | +{committed[r]}", file=self.stream, flush=True)
