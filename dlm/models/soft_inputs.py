"""Soft inputs on dlm's transformer: what :class:`~dlm.models.transformer.TransformerAdapter` does with a plan's
:class:`~dlm.messages.SoftInputs`.

Feeding adds the stored soft embedding to the token embedding of the marked columns; recording writes
``scale · softmax(logits / temperature) @ E`` (the expected input embedding under the predicted distribution, ``E``
the input embedding matrix) for the marked columns the row stores. This is the arithmetic of dInfer's ``H2Embed``
(inclusionAI/dInfer, ``python/dinfer/model/modeling_fused_olmoe.py``: ``E[x] + w · softmax(logits / τ) @ E`` at
masked positions), split in two so that the model, which owns ``E``, does both halves and no other component
needs the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlm.messages import SoftInputs


def soft_embeddings(embed: nn.Embedding, soft: SoftInputs, rows: Tensor, ids: Tensor, cols: Tensor) -> Tensor:
    """Input embeddings [b, q, dim] of the query tokens ``ids`` [b, q] at canvas columns ``cols`` ([1 or b, q]) of
    batch rows ``rows`` [b]: ``embed(ids)``, plus the stored soft embedding where ``soft.feed`` marks the column."""
    x = embed(ids)
    values = soft.store.values
    if values is None:  # nothing recorded yet: every input is hard
        return x
    b, q = ids.shape
    cols = cols.expand(b, q)
    feed = soft.feed.gather(1, cols)  # [b, q]
    stored = values[rows[:, None].expand(b, q), cols]  # [b, q, dim]
    return torch.where(feed[..., None], x + stored.to(x.dtype), x)


def record_soft(embed: nn.Embedding, soft: SoftInputs, rows: Tensor, logits: Tensor, cols: Tensor, stored: Tensor,
                shift: int, length: int) -> None:
    """Write the expected embeddings of the outputs ``logits`` [b, q, V] (computed at canvas columns ``cols``
    [1 or b, q] of batch rows ``rows``; the output at column ``c`` predicts column ``c + shift``) into the store, at
    the predicted columns that ``soft.record`` marks and whose output the row stores (``stored`` [b, q])."""
    if soft.record is None:
        return
    weight = embed.weight  # [V_in, dim]
    if logits.shape[-1] != weight.shape[0]:
        raise ValueError(f"soft inputs need logits over the input vocabulary: the model returns {logits.shape[-1]} "
                         f"logits per column but embeds {weight.shape[0]} tokens")
    values = soft.store.allocate(weight)
    b, q, _ = logits.shape
    target = cols.expand(b, q) + shift
    inside = target < length
    # a target past the canvas (shift 1, last column) is redirected to column 0, which no output then predicts,
    # and rewrites what it holds: one write per (row, column) carries a new value
    target = torch.where(inside, target, 0)
    write = stored & inside & soft.record.gather(1, target)  # [b, q]
    t = soft.temperature
    if isinstance(t, Tensor):  # [b]: one per row
        t = t.to(device=logits.device, dtype=logits.dtype)[:, None, None]
    expected = torch.softmax(logits / t, dim=-1) @ weight  # [b, q, dim]
    if soft.scale is not None:
        wide = torch.promote_types(expected.dtype, torch.float32)
        expected = (soft.scale.to(device=expected.device, dtype=wide)[:, None, None] * expected.to(wide)).to(expected.dtype)
    at = (rows[:, None].expand(b, q), target)
    values[at] = torch.where(write[..., None], expected.to(values.dtype), values[at])
