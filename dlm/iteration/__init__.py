"""Diffusion-iteration managers: the canvas, each step's window, and when blocks and rows are done.

The public API for plugin authors: :class:`IterationManager` (the interface), :class:`BlockProgress` (the
typed per-run progress a block schedule keeps in ``state.progress``), :func:`left_padded_canvas` (the
column-aligned canvas every built-in manager starts from; an empty prompt is unconditional generation for the
models :func:`needs_prompt` lets through), :func:`block_bounds` / :func:`in_bounds` /
:func:`block_window` (per-row block columns and the union window), :func:`transfer_schedule` (LLaDA's per-step quota) and :func:`stop_at_eos`;
for causal decoders :class:`SlidingWindowManager` with :func:`sliding_window` and :func:`first_pending`
(per-row windows that slide right).
"""

from dlm._compat import moved
from dlm.iteration.base import BlockProgress, IterationManager, left_padded_canvas, needs_prompt, stop_at_eos
from dlm.iteration.blockwise import block_bounds, block_window, in_bounds, transfer_schedule
from dlm.iteration.sliding import SlidingWindowManager, first_pending, sliding_window

__all__ = ["IterationManager", "BlockProgress", "left_padded_canvas", "needs_prompt", "stop_at_eos", "block_bounds", "in_bounds",
           "block_window", "transfer_schedule", "SlidingWindowManager", "sliding_window", "first_pending"]
__getattr__ = moved("dlm.iteration", {"Window": "dlm.messages:Window"})
