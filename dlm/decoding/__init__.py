"""Decoding strategies: which masked positions a step commits, with which tokens.

The public API for plugin authors (everything a strategy needs, stable across releases):

- :class:`DecodingStrategy`: the interface (``select(state, window, logits, generator)``; optional ``start``
  returning the run memory kept on the state (a :class:`~dlm.memory.RowMemory`, read back with
  ``self.memory(state)``) and ``prepare`` for wider logits and candidate steps);
- :class:`RowRNG` (per-row random streams); the messages (:class:`~dlm.messages.Window`,
  :class:`~dlm.messages.Commit` and their extensions) are imported from :mod:`dlm.messages`, their one home;
- proposals: :func:`propose` (argmax or Gumbel-max tokens, never MASK, with float64 softmax confidence over
  the full vocabulary, MASK included), :func:`gumbel_noise`, and Dream / v2-style :func:`filtered_probs` + :func:`draw`;
  :func:`row_spans` (each row's own columns of a window whose rows are at different blocks; :func:`draw_spans`
  for a proposal at a temperature) and :func:`row_rand` (uniform draws over them), so a row draws what it draws
  alone;
- selection rules: :func:`top_k_select` (the schedule's quota) and :func:`threshold_select` (``≥ τ``, or
  ``> τ`` with ``strict=True``, always the most confident).
"""

from dlm._compat import moved
from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import (
    draw_spans, gumbel_noise, propose, row_rand, row_spans, threshold_select, top_k_select,
)
from dlm.decoding.sampling import draw, filtered_probs
from dlm.rng import RowRNG

__all__ = [
    "DecodingStrategy", "RowRNG",
    "propose", "gumbel_noise", "filtered_probs", "draw", "top_k_select", "threshold_select", "row_spans", "row_rand",
    "draw_spans",
]
__getattr__ = moved("dlm.decoding", {n: f"dlm.messages:{n}" for n in ("Window", "Commit", "Candidates")})
