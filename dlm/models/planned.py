"""Per-layer plans on dlm's transformer: a forward run layer by layer under a cache's
:class:`~dlm.messages.LayerPolicy`.

A plan carrying :class:`~dlm.messages.LayerPlans` is run here instead of :meth:`Transformer.forward
<dlm.models.layers.Transformer.forward>`; a plan without it never reaches this module, so the default forward
does no extra work (tests/test_layer_plans.py measures it). Before each layer the policy sees the layer's
normalised input (:class:`Input`) and answers with a :class:`~dlm.messages.LayerStep`:

- ``compute``: the query offsets that run the layer (q/k/v, attention, MLP), gathered into a dense batch
  (``[b, n]``, each row padded to the batch's largest count with offsets it does not compute, whose results
  are dropped); they write their K/V into the plan's store and their outputs into the feature store. Every
  other offset reads its K/V from the store and adds its cached attention and MLP outputs to its residual
  stream, as dLLM-Cache does (Liu et al. 2025, arXiv 2506.06295, ``cache_hook_LLaDA.py``);
- ``values``: values computed to decide (:meth:`Input.values`), written before the computed offsets' K/V;
- ``keys``: the keys the layer's queries may attend to (a per-layer eviction, as Sparse-dLLM's);
- ``probe``: query offsets whose attention probabilities (softmax(QKᵀ/√d) written out beside SDPA, summed over
  heads; or the scores before it, ``scores``) go to :meth:`~dlm.messages.LayerPolicy.attended` before the next
  layer is planned;
- after the last layer, the logits of the offsets :meth:`~dlm.messages.LayerPolicy.predict` names go to
  :meth:`~dlm.messages.LayerPolicy.predicted` (d2Cache's confidences of the whole generation region).

A step of None (or every field None) runs the layer exactly as the default forward does (the same operations),
storing its outputs when the plan has a feature store. The last layer computes every row it is asked to (no
row pruning under a policy); the logits are then cut to the span.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.messages import LayerPlans, LayerStep
from dlm.models.layers import Attention, Block, Transformer, pick_mask_rows, pick_rows

_EVERY = LayerStep()


class Input:
    """What a layer shows its policy (:class:`~dlm.messages.LayerInput`)."""

    def __init__(self, attn: Attention, layer: int, hidden: Tensor, columns: Tensor, kv, rows: Tensor | None) -> None:
        self.attn, self.layer, self.hidden, self.columns, self.kv, self.rows = attn, layer, hidden, columns, kv, rows

    def values(self, offsets: Tensor) -> Tensor:
        return self.attn.values(pick_rows(self.hidden, offsets))

    def stored_values(self, offsets: Tensor) -> Tensor:
        if self.kv is None:
            raise ValueError("LayerInput.stored_values needs a plan with a KV store")
        cols = self.columns.gather(1, offsets)
        r = torch.arange(cols.shape[0], device=cols.device)[:, None] if self.rows is None else self.rows[:, None]
        return self.kv.values[self.layer][r, :, cols].transpose(1, 2)


def dense(mask: Tensor, n: int | None = None) -> tuple[Tensor, Tensor]:
    """The offsets a [b, q] bool mask marks, as [b, n] (each row's first, then offsets it does not mark, up to
    the largest count, or ``n`` when the caller read it already) and which of them are marked ([b, n] bool)."""
    counts = mask.sum(dim=1)
    if n is None:
        n = int(counts.max()) if mask.shape[0] else 0
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :n]
    return order, torch.arange(n, device=mask.device)[None, :] < counts[:, None]


def merge(cached: Tensor, offsets: Tensor, valid: Tensor, fresh: Tensor) -> Tensor:
    """``cached`` [b, q, d] with ``fresh`` [b, n, d] at ``offsets`` where ``valid``."""
    index = offsets[..., None].expand(-1, -1, cached.shape[-1])
    return cached.scatter(1, index, torch.where(valid[..., None], fresh, cached.gather(1, index)))


def with_keys(mask: Tensor | None, keys: Tensor | None) -> Tensor | None:
    """An attention mask [b|1, 1, q|1, K] further limited to ``keys`` [b, K] (None: unlimited)."""
    if keys is None:
        return mask
    return keys[:, None, None, :] if mask is None else mask & keys[:, None, None, :]


def probe(attn: Attention, hidden: Tensor, cos: Tensor, sin: Tensor, offsets: Tensor, keys: Tensor,
          mask: Tensor | None, raw: bool = False) -> Tensor:
    """Attention probabilities (``raw``: the scores before the softmax) of the query ``offsets`` [b, p] over
    ``keys`` [b, Hkv, K, D], summed over heads: [b, p, K] in float32 (float64 for a float64 model)."""
    h, c, s = pick_rows(hidden, offsets), pick_rows(cos, offsets), pick_rows(sin, offsets)
    q = attn.queries(h, c, s, attn.projections(h, c, s)[0] if attn.fused else None)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = keys.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
    scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [b, H, p, K]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores if raw else scores.softmax(dim=-1)).sum(dim=1)


def planned_layer(block: Block, layer: int, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, kv,
                  rows: Tensor | None, key_end: int, columns: Tensor, plans: LayerPlans) -> Tensor:
    """One layer of a :class:`~dlm.messages.LayerPlans` forward: x [b, q, dim] -> [b, q, dim]."""
    attn, features = block.attn, plans.features
    hidden = block.attn_norm(x)
    step = plans.policy.step(Input(attn, layer, hidden, columns, kv, rows)) or _EVERY
    if step.values is not None:
        offsets, v = step.values
        cols = columns.gather(1, offsets)
        r = torch.arange(cols.shape[0], device=cols.device)[:, None] if rows is None else rows[:, None]
        kv.write_columns(layer, rows, cols, kv.keys[layer][r, :, cols].transpose(1, 2), v)
    compute = step.compute
    if compute is not None and bool(compute.all()):
        compute = None
    if compute is not None and (kv is None or features is None):
        raise ValueError("a LayerStep computing some offsets only needs a plan with a KV store and a LayerPlans "
                         "feature store (the others' K/V and outputs are read from them)")
    if compute is not None and not bool(compute.any()):  # nothing computed: K/V stay, outputs come from the cache
        cached_attn, cached_mlp = features.read(layer, rows, columns)
        return x + cached_attn + cached_mlp
    h, c, s, cols, m = hidden, cos, sin, columns, mask
    if compute is not None:
        offsets, valid = dense(compute)
        h, c, s = pick_rows(hidden, offsets), pick_rows(cos, offsets), pick_rows(sin, offsets)
        m = pick_mask_rows(mask, offsets)
        cols = columns.gather(1, offsets)
    q, k, v = attn.projections(h, c, s)
    q = attn.queries(h, c, s, q)
    if kv is not None:
        kv.write_columns(layer, rows, cols, k, v, keep=None if compute is None else valid)
        k, v = kv.read(layer, rows, key_end)
    m = with_keys(m, step.keys)
    if step.probe is not None:
        pm = with_keys(pick_mask_rows(mask, step.probe), step.keys)
        plans.policy.attended(layer, probe(attn, hidden, cos, sin, step.probe, k, pm, step.scores))
    out = attn.attend(q, k, v, m)  # [b, n, dim]
    if compute is None:
        x = x + out
        mlp = block.ffn(block.ffn_norm(x))
        if features is not None:
            features.write(layer, rows, columns, out, mlp)
        return x + mlp
    cached_attn, cached_mlp = features.read(layer, rows, columns)
    x = x + merge(cached_attn, offsets, valid, out)
    mlp = block.ffn(block.ffn_norm(pick_rows(x, offsets)))
    features.write(layer, rows, cols, out, mlp, keep=valid)
    return x + merge(cached_mlp, offsets, valid, mlp)


def planned_forward(net: Transformer, ids: Tensor, positions: Tensor, mask: Tensor | None, *, kv, rows: Tensor | None,
                    start: int, key_end: int, columns: Tensor | None, plans: LayerPlans,
                    logits: slice | Tensor) -> Tensor:
    """:meth:`Transformer.forward <dlm.models.layers.Transformer.forward>` under ``plans``: the logits of the query
    offsets ``logits`` (a slice, or per-row offsets [b, n])."""
    x, cos, sin = net.inputs(ids, positions)
    if columns is None:
        columns = torch.arange(start, start + ids.shape[1], device=ids.device)[None, :].expand(ids.shape[0], -1)
    for i, block in enumerate(net.blocks):
        x = planned_layer(block, i, x, cos, sin, mask, kv, rows, key_end, columns, plans)
    wanted = plans.policy.predict()
    if wanted is not None:
        plans.policy.predicted(net.logits(pick_rows(x, wanted)))
    return net.logits(pick_rows(x, logits))
