"""What a step shows of one row: its final tokens (the text stream's input) and its per-step view
(``dlm_stream: steps``).

A position is *final* once committed. Before that it holds MASK or a *provisional* token: a draft, or any token of
a revisable canvas (DiffusionGemma, ``state.revisable``: the whole canvas is redrafted every step until the decoding
strategy finishes it). The text stream reads provisional positions as MASK, so an OpenAI client never receives a
token a later step may change; the view carries the provisional canvas, marked:

- ``canvas``: every position's current token (``None``: MASK);
- ``provisional``: positions whose token is provisional (may still change);
- ``committed`` / ``pieces``: positions that became final at this step, and their text;
- ``revised`` / ``revised_pieces``: provisional positions whose token this step wrote or changed, and their text;
- ``revisable``: the state's mode (every pending position may change until its canvas is done).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class RowCanvas:
    """One row's generation region after a step: token ids and which of them are provisional."""

    ids: list[int]
    provisional: list[bool]

    def final(self, mask_id: int) -> list[int]:
        """The ids with provisional positions read as MASK: what the text stream may send."""
        return [mask_id if p else t for t, p in zip(self.ids, self.provisional)]


def row_canvases(state) -> list[RowCanvas]:
    """Each row's :class:`RowCanvas` (one read of the device for the whole batch)."""
    gen = state.canvas[:, state.gen_start:]
    provisional = state.pending()[:, state.gen_start:] & (gen != state.mask_id)
    return [RowCanvas(i, p) for i, p in zip(gen.tolist(), provisional.tolist())]


def changes(now: RowCanvas, before: RowCanvas | None, mask_id: int) -> tuple[list[int], list[int]]:
    """(committed, revised): positions final now that were not before, and provisional positions whose token
    changed (or appeared) since ``before`` (None: the row's first step, an all-MASK canvas before it)."""
    n = len(now.ids)
    old = before.ids if before is not None else [mask_id] * n
    was_final = [not p and t != mask_id for t, p in zip(old, before.provisional)] if before else [False] * n
    committed = [p for p in range(n) if not now.provisional[p] and now.ids[p] != mask_id and not was_final[p]]
    revised = [p for p in range(n) if now.provisional[p] and now.ids[p] != old[p]]
    return committed, revised


def step_view(*, step: int, nfe: int, block: int, now: RowCanvas, committed: list[int], revised: list[int],
              mask_id: int, revisable: bool, decode: Callable[[list[int]], str]) -> dict[str, Any]:
    """The per-step view of one row (the module doc lists its fields)."""
    return {
        "step": step, "nfe": nfe, "block": block, "revisable": revisable,
        "canvas": [None if t == mask_id else t for t in now.ids],
        "provisional": [p for p, v in enumerate(now.provisional) if v],
        "committed": committed, "pieces": [decode([now.ids[p]]) for p in committed],
        "revised": revised, "revised_pieces": [decode([now.ids[p]]) for p in revised],
    }
