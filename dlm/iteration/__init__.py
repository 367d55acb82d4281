"""Diffusion-iteration managers: the canvas, each step's window, and when blocks and rows are done.

The public API for plugin authors: :class:`IterationManager` (the interface), :class:`BlockProgress` (the
typed per-run progress a block schedule keeps in ``state.progress``), :func:`left_padded_canvas` (the
column-aligned canvas every built-in manager starts from), :func:`enter_block` / :func:`block_window` (block
bookkeeping and its window), :func:`transfer_schedule` (LLaDA's per-step quota) and :func:`stop_at_eos`;
for causal decoders :class:`SlidingWindowManager` with :func:`sliding_window` and :func:`first_pending`
(per-row windows that slide right).
"""

from dlm.iteration.base import BlockProgress, IterationManager, left_padded_canvas, stop_at_eos
from dlm.iteration.blockwise import block_window, enter_block, transfer_schedule
from dlm.iteration.sliding import SlidingWindowManager, first_pending, sliding_window
from dlm.messages import Window

__all__ = ["IterationManager", "BlockProgress", "Window", "left_padded_canvas", "stop_at_eos", "enter_block",
           "block_window", "transfer_schedule", "SlidingWindowManager", "sliding_window", "first_pending"]
