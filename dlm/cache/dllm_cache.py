"""``dllm_cache``: dLLM-Cache's adaptive feature cache (Liu et al. 2025, "dLLM-Cache: Accelerating Diffusion Large
Language Models with Adaptive Caching", arXiv 2506.06295; code maomaocun/dLLM-cache @ 17235bf,
``dllm_cache/hooks/cache_hook_LLaDA.py`` and ``dllm_cache/cache/Cache.py``).

Every forward runs the whole canvas, but a layer recomputes a column only when asked; the other columns add the
attention and MLP outputs the layer cached for them (a feature cache) to their residual stream and are read as
keys from the cached K/V (:class:`~dlm.messages.LayerPlans`). Forwards are counted per row over the whole
generation from 0 (the authors' step counter, never reset at a block): in forward ``f`` of a row, the prompt
(columns before the generation region) is recomputed when ``f`` is a multiple of ``prompt_interval_steps``, the
response (the whole generation region) when it is a multiple of ``gen_interval_steps``. Otherwise, with
``0 < transfer_ratio <= 1``, each layer computes the values of every response column, compares them with the
cached ones (cosine similarity of the heads' concatenated values, in the model's dtype) and recomputes the
``int(transfer_ratio · |response|)`` least similar columns (``torch.topk(largest=False)``, the authors' call, so
ties fall as theirs do); every response column's cached value becomes the fresh one, its key only when it is
recomputed. Layer 0 computes every column in every forward, as in the authors' hook.

Exactness: with both intervals at 1 every layer computes every column in every forward, which is ``none``; so it
is with ``prompt_interval_steps: 1`` and ``transfer_ratio: 1``. A forward in which every row recomputes both
parts is a refresh: its K/V and features are exact. Each row decides alone (its own forward count and
similarities), so batch rows, and rows joining a running generation, give what they give alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.cache.fast_dllm import block_cache_problem
from dlm.memory import RowMemory
from dlm.messages import (CacheEnv, FeatureStore, ForwardPlan, KVStore, LayerInput, LayerPlans, LayerPolicy, LayerStep,
                          ModelCapabilities, Window)
from dlm.state import GenerationState


class DLLMCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_interval_steps: int = Field(100, ge=1, description="recompute the prompt every this many forwards (K_p)")
    gen_interval_steps: int = Field(7, ge=1, description="recompute the whole response every this many forwards (K_r)")
    transfer_ratio: float = Field(0.25, ge=0.0, le=1.0, description="share of the response recomputed in between "
                                  "(the least similar values; 0: none)")


@dataclass
class DLLMMemory(RowMemory):
    """K/V and features of the batch's rows, and the forwards each row took part in (host)."""

    movable = True  # the stores move themselves; the prompt/response boundary is read off the state

    kv: KVStore
    features: FeatureStore
    forwards: Tensor  # [B] long (host)


class _Policy(LayerPolicy):
    """One forward's layer steps: ``prompt``/``gen`` [b] bool (host) say which parts each row recomputes."""

    def __init__(self, config: DLLMCacheConfig, gen_start: int, prompt: Tensor, gen: Tensor, device) -> None:
        self.config, self.gen_start, self.host, self.device = config, gen_start, (prompt, gen), device
        self.everything, self.all_gen = bool((prompt & gen).all()), bool(gen.all())
        self.prompt, self.gen = prompt.to(device), gen.to(device)

    def repeat(self, k: int) -> "_Policy":
        prompt, gen = self.host
        return _Policy(self.config, self.gen_start, prompt.repeat_interleave(k), gen.repeat_interleave(k), self.device)

    def step(self, layer: LayerInput) -> LayerStep | None:
        if layer.layer == 0 or self.everything:
            return None
        response = layer.columns >= self.gen_start  # [b, L]: the plan runs every column, offset = column
        compute = (~response & self.prompt[:, None]) | (response & self.gen[:, None])
        ratio, values = self.config.transfer_ratio, None
        if ratio > 0 and not self.all_gen:
            offsets = layer.columns[:, self.gen_start:]  # [b, G]
            fresh, cached = layer.values(offsets), layer.stored_values(offsets)  # [b, H, G, D] each
            flat = lambda t: t.transpose(1, 2).flatten(2)  # noqa: E731  [b, G, H·D]: the heads' values side by side
            similarity = F.cosine_similarity(flat(fresh), flat(cached), dim=-1)
            least = torch.topk(similarity, k=int(offsets.shape[1] * ratio), largest=False).indices  # [b, n]
            compute = compute.scatter(1, least + self.gen_start, True)
            values = (offsets, fresh)
        return LayerStep(compute=compute, values=values)


class DLLMCache(CacheManager):
    Config = DLLMCacheConfig
    joinable = True
    requires = {"layer_plans": "it recomputes each layer's columns apart and reuses their cached attention and MLP "
                               "outputs (per-layer plans with a feature cache)"}

    def check(self, capabilities: ModelCapabilities) -> str | None:
        return block_cache_problem(capabilities)

    def start(self, state: GenerationState, env: CacheEnv) -> DLLMMemory:
        return DLLMMemory(env.new_kv(state.batch_size, state.length), env.new_features(state.batch_size, state.length),
                          torch.zeros(state.batch_size, dtype=torch.long))

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: DLLMMemory = self.memory(state)
        rows, host = window.rows, window.rows.cpu()
        f = m.forwards[host]
        m.forwards[host] += 1
        prompt, gen = f % self.config.prompt_interval_steps == 0, f % self.config.gen_interval_steps == 0  # [b] host
        policy = _Policy(self.config, state.gen_start, prompt, gen, state.device)
        return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=0, end=state.length, kv=m.kv,
                           key_end=state.length, refresh=bool((prompt & gen).all())).extend(
                               LayerPlans(policy, m.features))
