"""The adapter half shared by every family built on dlm's own :class:`~dlm.models.layers.Transformer`.

:class:`TransformerAdapter` turns a :class:`~dlm.messages.ForwardPlan` into a call of the network: it picks
the query tokens (a column range, or per-row column sets), their RoPE positions (column minus the row's left
padding), the attention mask the model's attention kind needs, and which outputs become logits (the window's
logits span, moved by the model's logit shift). :func:`load_transformer` fills a network from a checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from dlm.errors import CompositionError
from dlm.messages import CandidateBatch, ForwardPlan, LayerPlans, ReadRows, SoftInputs
from dlm.models.base import ModelAdapter
from dlm.models.compiled import compile_transformer, is_compiled, mark_static_kv
from dlm.models.parallel import shard_transformer
from dlm.models.checkpoint import load_tensors
from dlm.models.kv import FeatureBuffer, KVBuffer, WriteWindow
from dlm.models.layers import MIN_EXACT_ROWS, Transformer, TransformerSpec
from dlm.models.planned import planned_forward
from dlm.models.soft_inputs import record_soft, soft_embeddings
from dlm.state import GenerationState


def load_transformer(
    directory: Path, spec: TransformerSpec, names: dict[str, str], *, dtype: torch.dtype, device: torch.device
) -> Transformer:
    """Build a :class:`Transformer` without random init and fill it from the checkpoint (names: own -> file)."""
    with torch.device("meta"):
        net = Transformer(spec)
    shapes = {names[k]: tuple(p.shape) for k, p in net.state_dict().items()}
    tensors = load_tensors(directory, shapes, dtype=dtype, device=device)
    net.load_state_dict({own: tensors[theirs] for own, theirs in names.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)


class TransformerAdapter(ModelAdapter):
    """Shared forward of the adapters built on :class:`~dlm.models.layers.Transformer`.

    Every such adapter runs soft inputs (:class:`~dlm.messages.SoftInputs`, :mod:`dlm.models.soft_inputs`): its
    capabilities say ``soft_inputs``."""

    net: Transformer
    dtype: torch.dtype
    device: torch.device

    def __init__(self, config, net: Transformer, capabilities, tokenizer) -> None:
        # one process, not compiled: per-layer plans (dlm.models.planned) run; shard() and compile() withdraw them
        capabilities = replace(capabilities, soft_inputs=True, layer_plans=True)
        self.config, self.net, self.capabilities, self.tokenizer = config, net, capabilities, tokenizer
        self.dtype, self.device = net.embed.weight.dtype, net.embed.weight.device

    def new_kv(self, batch: int, length: int) -> KVBuffer:
        s = self.net.spec
        heads = self.net.blocks[0].attn.n_kv_heads if len(self.net.blocks) else s.n_kv_heads  # this rank's heads
        kv = KVBuffer(s.n_layers, batch, heads, length, s.head_dim, dtype=self.dtype, device=self.device)
        if is_compiled(self):
            mark_static_kv(kv)
        return kv

    def new_features(self, batch: int, length: int) -> FeatureBuffer:
        """A zeroed feature store (attention and MLP outputs per layer and column) for per-layer plans."""
        if not self.capabilities.layer_plans:
            raise CompositionError(f"the {type(self).__name__} adapter runs no per-layer plans once compiled or "
                                   "sharded")
        s = self.net.spec
        return FeatureBuffer(s.n_layers, batch, length, s.dim, dtype=self.dtype, device=self.device)

    def compile(self) -> None:
        compile_transformer(self)
        self.capabilities = replace(self.capabilities, layer_plans=False)  # policies are Python calls between layers

    def shard(self, tensor_parallel: int, expert_parallel: int = 1) -> None:
        shard_transformer(self, tensor_parallel, expert_parallel)
        # a rank holds some heads only: probes and value tests would see part of each layer
        self.capabilities = replace(self.capabilities, layer_plans=False)

    def attention_mask(self, state: GenerationState, rows: Tensor, q_cols: Tensor, k_cols: Tensor) -> Tensor | None:
        """Bool mask [b, 1, q|1, keys] (True = attend) for queries at canvas columns ``q_cols`` and keys at
        ``k_cols`` ([1 or b, n] each), or None when unrestricted.

        Padding columns are never keys. Block-causal and causal attention compare each row's own positions
        (column − pad), so a left-padded row sees what it sees alone; padding columns count as position 0
        (as keys they are masked out, as queries they then attend to position 0 instead of nothing, which
        would give NaNs).
        """
        mask = None
        pad = state.pad[rows, None]  # [b, 1]
        if state.padded:
            mask = (k_cols >= pad)[:, None, None, :]  # [b, 1, 1, K]
        kind = self.capabilities.attention
        if kind != "bidirectional":
            q_pos, k_pos = (q_cols - pad).clamp(min=0), (k_cols - pad).clamp(min=0)
            if kind == "block_causal" and self.capabilities.blocks_from == "prompt":
                # D2F: the prompt is one block (-1), then blocks of bs from the generation region's start
                bs, g = self.capabilities.block_size, state.gen_start
                q_pos = torch.div(q_cols - g, bs, rounding_mode="floor").clamp(min=-1).expand(len(rows), -1)
                k_pos = torch.div(k_cols - g, bs, rounding_mode="floor").clamp(min=-1).expand(len(rows), -1)
            elif kind == "block_causal":
                bs = self.capabilities.block_size
                q_pos, k_pos = q_pos // bs, k_pos // bs
            allowed = (q_pos[:, :, None] >= k_pos[:, None, :])[:, None]  # [b, 1, q, K]
            mask = allowed if mask is None else mask & allowed
        return mask

    def ordered_mask(self, state: GenerationState, rows: Tensor, cols: Tensor, keys: Tensor) -> Tensor:
        """Bool mask [b, 1, q, K] for an ordered plan: causal in the order of ``cols`` [b, q], not by position.

        A key is a KV slot (``kv``: ``keys`` [1, K] = slots ``[0, key_end)``) or one of the computed columns
        (no KV: ``keys`` = ``cols``). Its rank is its first place in the row's list, or −1 for a slot before the
        row's smallest column (the cached prefix, seen by every query); other slots are never seen. Query ``i``
        sees keys of rank ``<= i``. Padding columns are never keys; the row's first real column is a key of
        every query (it precedes every real query anyway), so padding queries attend to something (no NaNs).
        """
        if self.capabilities.attention != "causal":
            raise ValueError(f"an ordered forward plan needs causal attention, the model's is {self.capabilities.attention}")
        b, q = cols.shape
        never = q + 1
        place = torch.full((b, state.length), never, dtype=torch.long, device=state.device)  # [b, L]
        ranks = torch.arange(q, device=state.device).expand(b, q)
        place.scatter_reduce_(1, cols, ranks, reduce="amin")
        slots = torch.arange(state.length, device=state.device)[None, :]
        place = torch.where(slots < cols.min(dim=1, keepdim=True).values, -1, place)
        key_rank = place.gather(1, keys.expand(b, -1))  # [b, K]
        allowed = key_rank[:, None, :] <= torch.arange(q, device=state.device)[None, :, None]  # [b, q, K]
        pad = state.pad[rows, None, None]  # [b, 1, 1]
        allowed = (allowed | (keys[:, None, :] == pad)) & (keys[:, None, :] >= pad)
        return allowed[:, None]

    @torch.inference_mode()
    def forward(self, state: GenerationState, plan: ForwardPlan) -> Tensor:
        batch = plan.get(CandidateBatch)
        if plan.has(SoftInputs) and plan.has(LayerPlans):
            raise CompositionError(
                "a forward plan carries both soft inputs (SoftInputs, e.g. iteration smoothing) and per-layer plans "
                "(LayerPlans, e.g. cache dllm_cache); dlm's transformer runs one or the other: pick another cache "
                "(none, prefix, dual, vicinity, dkv) or another iteration")
        if batch is not None and plan.has(SoftInputs):
            raise ValueError("a candidate step cannot take soft inputs: its canvases are not the rows of the "
                             "soft store; a decoding strategy proposing candidates composes with hard inputs only")
        if batch is not None:  # the candidates' own canvas, padding and private K/V
            view = _CandidateView(state, batch)
            logits = self._forward(view, plan)
            return logits.unflatten(0, (len(batch.source_rows), batch.count))
        return self._forward(state, plan)

    def _forward(self, state: GenerationState, plan: ForwardPlan) -> Tensor:
        shift = self.capabilities.logit_shift
        lo, hi = plan.logits_start - shift, plan.logits_end - shift  # outputs the logits are read at
        if plan.columns is not None:
            return self._forward_columns(state, plan, lo, hi)
        if lo < plan.start or hi > plan.end:
            raise ValueError(
                f"forward plan computes columns [{plan.start}, {plan.end}) but logits of "
                f"[{plan.logits_start}, {plan.logits_end}) need outputs [{lo}, {hi})"
            )
        ids = state.canvas[plan.rows, plan.start : plan.end]  # [b, q]
        cols = torch.arange(plan.start, plan.end, device=state.device)[None, :]  # [1, q]
        positions = (cols - state.pad[plan.rows, None]).clamp_(min=0)  # [b, q]
        keys = torch.arange(0 if plan.kv is not None else plan.start, plan.key_end if plan.kv is not None else plan.end,
                            device=state.device)[None, :]
        kv = plan.kv if plan.kv is None or plan.writes_all else WriteWindow(plan.kv, plan.write_start, plan.write_end)
        soft = plan.get(SoftInputs)
        if soft is not None:
            return self._forward_soft(state, plan, soft, ids, cols, positions, keys, kv, lo, hi)
        read = read_offsets(plan, state)
        mask = self.attention_mask(state, plan.rows, cols, keys)
        layers = plan.get(LayerPlans)
        if layers is not None:
            span = slice(lo - plan.start, hi - plan.start) if read is None else read + (lo - plan.start)
            out = self._planned(ids, positions, mask, kv, plan, None, layers, span)
            return out if read is None else spread_rows(out, read, hi - lo)
        out = self.net(
            ids,
            positions,
            mask,
            kv=kv,
            rows=plan.buffer_rows,
            start=plan.start,
            key_end=plan.key_end,
            logits_from=lo - plan.start,
            logits_to=hi - plan.start,
            logits_index=None if read is None else read + (lo - plan.start),
        )
        return out if read is None else spread_rows(out, read, hi - lo)

    def _forward_soft(self, state, plan: ForwardPlan, soft: SoftInputs, ids, cols, positions, keys, kv, lo: int,
                      hi: int) -> Tensor:
        """A range plan with soft inputs: fed embeddings; with a record, the logits of every computed column (the
        record reads them all), those of the span returned."""
        embeds = soft_embeddings(self.net.embed, soft, plan.rows, ids, cols)
        recording = soft.record is not None
        out = self.net(
            ids,
            positions,
            self.attention_mask(state, plan.rows, cols, keys),
            kv=kv,
            rows=plan.buffer_rows,
            start=plan.start,
            key_end=plan.key_end,
            logits_from=0 if recording else lo - plan.start,
            logits_to=None if recording else hi - plan.start,
            embeds=embeds,
        )
        if not recording:
            return out
        bound = lambda b: torch.as_tensor(b, device=state.device).reshape(-1, 1)  # noqa: E731
        stored = (cols >= bound(plan.write_start)) & (cols < bound(plan.write_end))  # the columns each row stores
        record_soft(self.net.embed, soft, plan.rows, out, cols, stored.expand(len(plan.rows), -1),
                    self.capabilities.logit_shift, state.length)
        return out[:, lo - plan.start : hi - plan.start]

    def _forward_columns(self, state: GenerationState, plan: ForwardPlan, lo: int, hi: int) -> Tensor:
        """A plan naming per-row column sets: gather their tokens, scatter their K/V into their slots."""
        cols = plan.columns  # [b, q]
        rows = plan.rows
        ids = state.canvas[rows[:, None], cols]  # [b, q]
        positions = (cols - state.pad[rows, None]).clamp(min=0)
        keys = torch.arange(plan.key_end, device=state.device)[None, :] if plan.kv is not None else cols
        where = torch.full((len(rows), state.length), -1, dtype=torch.long, device=state.device)
        where.scatter_(1, cols, torch.arange(cols.shape[1], device=state.device).expand_as(cols))
        index = where[:, lo:hi]  # [b, n]: query offset of each needed output
        if bool((index < 0).any()):
            raise ValueError(f"forward plan's column sets do not hold every output the logits need, [{lo}, {hi})")
        soft = plan.get(SoftInputs)
        recording = soft is not None and soft.record is not None
        read = None if soft is not None else read_offsets(plan, state)
        if read is not None:
            index = index.gather(1, read)
        if plan.ordered:
            mask = self.ordered_mask(state, rows, cols, keys)
        else:
            mask = self.attention_mask(state, rows, cols, keys)
        layers = plan.get(LayerPlans)
        if layers is not None:
            out = self._planned(ids, positions, mask, plan.kv, plan, cols, layers, index)
            return out if read is None else spread_rows(out, read, hi - lo)
        out = self.net(
            ids,
            positions,
            mask,
            kv=plan.kv,
            rows=plan.buffer_rows,
            columns=cols,
            key_end=plan.key_end,
            logits_index=None if recording else index,  # a record reads every computed column's logits
            embeds=None if soft is None else soft_embeddings(self.net.embed, soft, rows, ids, cols),
        )
        if recording:
            record_soft(self.net.embed, soft, rows, out, cols, torch.ones_like(cols, dtype=torch.bool),
                        self.capabilities.logit_shift, state.length)
            return out.gather(1, index[..., None].expand(-1, -1, out.shape[-1]))
        return out if read is None else spread_rows(out, read, hi - lo)

    def _planned(self, ids, positions, mask, kv, plan: ForwardPlan, columns, layers: LayerPlans, logits) -> Tensor:
        if not self.capabilities.layer_plans:
            raise CompositionError(f"a per-layer plan (LayerPlans) reached the {type(self).__name__} adapter, which "
                                   "runs none once compiled or sharded; run it with compile: false and one process")
        return planned_forward(self.net, ids, positions, mask, kv=kv, rows=plan.buffer_rows, start=plan.start,
                               key_end=plan.key_end, columns=columns, plans=layers, logits=logits)


def read_offsets(plan: ForwardPlan, state) -> Tensor | None:
    """Offsets [b, n] into the logits span of the positions a :class:`~dlm.messages.ReadRows` hint says are read
    (each row's first, padded with unread ones to the batch's largest count and to at least
    :data:`~dlm.models.layers.MIN_EXACT_ROWS`), or None to compute every row.

    Used on CPU only: the count is read on the host, a synchronisation a GPU step avoids (docs/performance.md),
    and on a GPU the saved rows cost bandwidth, not time."""
    hint = plan.get(ReadRows)
    if hint is None or state.device.type != "cpu" or hint.mask.shape[0] == 0:
        return None
    span = hint.mask.shape[1]
    n = max(int(hint.mask.sum(dim=1).max()), min(MIN_EXACT_ROWS, span))  # see Transformer.output_rows
    if n >= span:
        return None
    return torch.sort((~hint.mask).to(torch.uint8), dim=1, stable=True).indices[:, :n]


def spread_rows(logits: Tensor, read: Tensor, span: int) -> Tensor:
    """Logits [b, n, V] of the offsets ``read`` placed in a [b, span, V] tensor of zeros."""
    out = logits.new_zeros(logits.shape[0], span, logits.shape[-1])
    return out.scatter_(1, read[..., None].expand(-1, -1, logits.shape[-1]), logits)



class _CandidateView:
    """The state as a candidate batch's forward sees it: the candidates' canvas and padding."""

    def __init__(self, state: GenerationState, batch: CandidateBatch) -> None:
        self.canvas, self.pad = batch.canvas, batch.pad
        self.device, self.length = state.device, state.length
        self.padded = bool(batch.pad.any()) if state.padded else False
