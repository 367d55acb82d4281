"""``sparse``: Sparse-dLLM's dynamic cache eviction (Song et al. 2025, "Sparse-dLLM: Accelerating Diffusion LLMs
with Dynamic Cache Eviction", arXiv 2508.02558; code OpenMOSS/Sparse-dLLM @ 3fd8986,
``opencompass/models/sparse_dllm/llada_generate.py`` and ``CustomCache`` in ``modeling_llada.py``).

A block's first two steps are full forwards over the canvas; the second (the delayed update: the first step's
tokens are in) stores every column's K/V and, per layer, scores each prefix and suffix column (the row's columns
outside the block, left padding excluded) by the block's queries: ``q·k`` summed over the block's queries and the
heads (the authors take the head mean of the block-mean query's dot products: the same order). The scores,
prefix and suffix side by side as one sequence, are max-pooled (``kernel_size``, stride 1, same padding) and the
``int(keep_ratio · n)`` highest kept (``torch.topk``, the authors' call, so ties fall as theirs do). Later steps
of the block compute the block only and attend, in each layer, to its kept columns and the block (``dual``'s
plan with a per-layer key mask, :class:`~dlm.messages.LayerStep` ``keys``).

Exactness: the two full steps are exact; later steps read K/V of the second step's canvas and, with
``keep_ratio < 1``, only part of them. With ``keep_ratio: 1`` it is ``dual`` refreshing at a block's first two
steps, so ``dual`` itself on a 1-layer model. Each row scores and keeps its own columns, so batch rows (and rows
joining a running generation) give what they give alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.prefix import KVMemory, PrefixCache, row_range_plan
from dlm.memory import column_field
from dlm.messages import CacheEnv, ForwardPlan, LayerInput, LayerPlans, LayerPolicy, LayerStep, Window
from dlm.state import GenerationState


class SparseCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_ratio: float = Field(0.5, gt=0.0, le=1.0, description="share of the prefix and suffix columns each layer "
                              "keeps")
    kernel_size: int = Field(3, ge=1, description="width of the max-pool smoothing the scores (odd; 1: none)")


@dataclass
class SparseMemory(KVMemory):
    """The KV store and, per row and layer, the prefix/suffix columns kept for the current block."""

    keep: Tensor = column_field(dim=2, fill=False, default=None)  # [B, n_layers, L] bool


class _Policy(LayerPolicy):
    """One forward: rows at a cached step attend, per layer, to their kept columns and the columns they compute
    (``keys``, [b, n_layers, L] bool, None: every row runs the whole canvas); rows at their delayed update
    (``scored`` [b] host bool) probe their block's queries and keep their top columns in ``keep`` (the memory's)."""

    def __init__(self, config: SparseCacheConfig, keep: Tensor, keys: Tensor | None, rows: Tensor, scored: Tensor,
                 pad: Tensor, block_start: Tensor, block_end: Tensor) -> None:
        self.config, self.keep, self.keys, self.rows, self.scored = config, keep, keys, rows, scored
        self.pad, self.block_start, self.block_end = pad, block_start, block_end  # rows, pad, bounds: [b] host
        offsets = block_start[:, None] + torch.arange(int((block_end - block_start).max()))[None, :]  # [b, w]
        self.offsets = torch.minimum(offsets, block_end[:, None] - 1).to(keep.device)  # the plan starts at 0

    def step(self, layer: LayerInput) -> LayerStep | None:
        probe = self.offsets if bool(self.scored.any()) else None
        return LayerStep(keys=None if self.keys is None else self.keys[:, layer.layer], probe=probe, scores=True)

    def attended(self, layer: int, weights: Tensor) -> None:  # weights: [b, w, L]
        length, k = weights.shape[-1], self.config.kernel_size
        for i in torch.nonzero(self.scored).flatten().tolist():
            lo, hi = int(self.block_start[i]), int(self.block_end[i])
            score = weights[i, :hi - lo].sum(dim=0)  # [L]
            outside = torch.cat((torch.arange(int(self.pad[i]), lo), torch.arange(hi, length))).to(score.device)
            importance = F.max_pool1d(score[outside][None, None], k, stride=1, padding=k // 2)[0, 0]  # [n]
            top = torch.topk(importance, k=int(outside.numel() * self.config.keep_ratio)).indices
            kept = torch.zeros(length, dtype=torch.bool, device=score.device)
            self.keep[int(self.rows[i]), layer] = kept.index_fill_(0, outside[top], True)

    def repeat(self, k: int) -> "_Policy":
        host = (self.rows, self.scored, self.pad, self.block_start, self.block_end)
        keys = None if self.keys is None else self.keys.repeat_interleave(k, dim=0)
        return _Policy(self.config, self.keep, keys, *(t.repeat_interleave(k) for t in host))


class SparseCache(PrefixCache):
    Config = SparseCacheConfig
    requires = {"layer_plans": "it scores the cached columns by the block's attention and evicts them layer by layer "
                               "(per-layer probes and key masks)"}

    def start(self, state: GenerationState, env: CacheEnv) -> SparseMemory:
        kv = env.new_kv(state.batch_size, state.length)
        keep = torch.zeros(state.batch_size, kv.keys.shape[0], state.length, dtype=torch.bool, device=state.device)
        return SparseMemory(kv, shift=env.capabilities.logit_shift, keep=keep)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: SparseMemory = self.memory(state)
        full = window.step <= 1  # [b] host: a block's first two steps run the whole canvas
        lo = torch.where(full, 0, self.cached_start(state, window))
        hi = torch.where(full, state.length, window.block_end)
        plan = row_range_plan(state, window, m.kv, lo, hi, shift=m.shift, refresh=full)
        scored = window.step == 1  # [b] host: the delayed update
        if bool(full.all()) and not bool(scored.any()):
            return plan
        keys = None
        if not bool(full.all()):
            cols = torch.arange(state.length)[None, :]
            own = (full[:, None] | ((cols >= lo[:, None]) & (cols < hi[:, None]))).to(state.device)  # [b, L]
            keys = m.keep[window.rows] | own[:, None, :]  # [b, n_layers, L]
        policy = _Policy(self.config, m.keep, keys, window.rows.cpu(), scored, state.pad.cpu()[window.rows.cpu()],
                         window.block_start, window.block_end)
        return plan.extend(LayerPlans(policy))
