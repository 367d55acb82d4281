"""Sparse mixture-of-experts feed-forward, written once for every MoE family dlm hosts.

A sparse MoE layer (Shazeer et al., 2017, "Outrageously Large Neural Networks", arXiv 1701.06538) replaces
the dense feed-forward by ``E`` expert feed-forwards and a router: each row (token) is sent to the ``k``
experts its router scores highest, and the layer's output is the sum of those experts' outputs, each
weighted by the router. Two pieces, kept apart so that a family adds its routing rule without touching the
dispatch:

- **Routing** (:class:`Router`): from the rows ``[T, dim]`` to a :class:`Routing` (``k`` expert ids and
  ``k`` weights per row). One class per scoring rule; the rule's frozen spec (:class:`SoftmaxTopK`) lives in
  the model's :class:`~dlm.models.layers.TransformerSpec` and builds it. Families still to come bring their own
  rule here: BailingMoeV2 / LLaDA2's sigmoid scores with an expert bias for the choice only, group-limited
  top-k and a routed scaling factor (DeepSeek-V3, arXiv 2412.19437, §2.1.2), and Qwen3-MoE's softmax top-k
  with normalisation (:class:`SoftmaxTopK` with ``normalize=True``).
- **Dispatch** (:func:`dispatch`): route once per forward, then run each expert only on the rows routed to it
  (rows gathered per expert, the weighted outputs added back with ``index_add_``). There is no fallback that
  runs every expert on every row: the cost is the active experts', docs/benchmarks.md measures it. Grouping the
  rows needs the number of rows per expert on the host: one synchronisation per MoE layer and forward.
  Expert parallelism fits here: a rank holding a slice of the experts runs only their groups and the partial
  outputs are summed across ranks.

:class:`SparseMoE` is the layer: router, experts (:class:`~dlm.models.layers.SwiGLU` each, so a checkpoint's
per-expert ``gate/up/down`` tensors map one to one) and optional shared experts, which every row passes
through unweighted (BailingMoeV2; Qwen2-MoE gates them, a rule it would add). :class:`MoESpec` says which layers
are sparse (the others keep the dense feed-forward of ``TransformerSpec.ffn_dim``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dlm.models.layers import SwiGLU


@dataclass(frozen=True)
class Routing:
    """Where each row goes: ``experts`` [T, k] (long, distinct per row) and their ``weights`` [T, k]."""

    weights: Tensor
    experts: Tensor


class Router(nn.Module):
    """Scores every expert for every row and keeps ``k`` of them; one subclass per scoring rule.

    ``gate`` is the router's projection (no bias), ``[n_experts, dim]``: the tensor every family's checkpoint
    holds under some name.
    """

    def __init__(self, dim: int, n_experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, n_experts, bias=False)

    def forward(self, x: Tensor) -> Routing:  # x: [T, dim]
        raise NotImplementedError


@dataclass(frozen=True)
class SoftmaxTopK:
    """Softmax over the experts, the ``top_k`` largest kept: OLMoE (Muennighoff et al., 2024, arXiv 2409.02060,
    §2) and LLaDA-MoE (Zhu et al., 2025, arXiv 2509.24389, "MoE Routing") with ``normalize=False``, Qwen3-MoE
    with its config's ``norm_topk_prob`` as ``normalize``.

    - The probabilities are computed in float32 whatever the model dtype, and the weights cast back to it, as
      the released OLMoE / LLaDA-MoE modeling code does (``softmax(..., dtype=torch.float)``).
    - The ``k`` experts are ``torch.topk`` of those float32 probabilities. Ties are broken as ``torch.topk``
      breaks them: deterministically for a given row of scores (the same row gives the same experts alone or
      in any batch), but not by a simple rule (on CPU, not the lowest index); equal scores therefore pick the
      experts the released code picks only because the same call decides.
    - ``normalize``: the kept weights divided by their sum.
    - ``expert_bias``: a per-expert bias (a checkpoint tensor) added to the probabilities before the choice,
      *and kept in the weights*, as the released LLaDA-MoE code does when its config enables
      ``moe_router_enable_expert_bias`` (DeepSeek-V3's rule uses the bias for the choice only: another rule).
    """

    top_k: int
    normalize: bool = False
    expert_bias: bool = False

    def router(self, dim: int, n_experts: int) -> Router:
        return SoftmaxRouter(self, dim, n_experts)


class SoftmaxRouter(Router):
    """:class:`SoftmaxTopK`'s router."""

    def __init__(self, rule: SoftmaxTopK, dim: int, n_experts: int) -> None:
        super().__init__(dim, n_experts)
        if not 1 <= rule.top_k <= n_experts:
            raise ValueError(f"top_k {rule.top_k} must be between 1 and the number of experts {n_experts}")
        self.top_k, self.normalize = rule.top_k, rule.normalize
        if rule.expert_bias:
            self.register_buffer("expert_bias", torch.zeros(n_experts))
        else:
            self.expert_bias = None

    def forward(self, x: Tensor) -> Routing:
        scores = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)  # [T, E]
        if self.expert_bias is not None:  # added in the wider dtype, then float32 again (the reference's +=)
            scores = (scores + self.expert_bias).float()
        weights, experts = torch.topk(scores, self.top_k, dim=-1)  # [T, k] each
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(weights.to(x.dtype), experts)


@torch.compiler.disable  # group sizes are data: a compiled forward runs the dispatch eagerly, not one graph per size
def dispatch(x: Tensor, routing: Routing, experts: nn.ModuleList) -> Tensor:
    """``sum_j weights[t, j] * experts[experts[t, j]](x[t])`` for every row ``t`` of ``x`` [T, dim], each
    expert run once, on the rows routed to it.

    Each row's terms are added in ascending expert order (the order of the released code's loop over experts),
    so the sum rounds as the reference's does.
    """
    t, k = routing.experts.shape
    choice = routing.experts.reshape(-1)  # [T*k]: expert of each (row, slot)
    order = torch.argsort(choice, stable=True)  # slots grouped by expert
    counts = torch.bincount(choice, minlength=len(experts)).tolist()  # the one host wait of the layer
    rows = order // k  # [T*k]: the row of each slot, in expert order
    weights = routing.weights.reshape(-1, 1)[order]  # [T*k, 1]
    out = torch.zeros_like(x)
    start = 0
    for expert, n in zip(experts, counts):
        if n:
            r = rows[start : start + n]
            out.index_add_(0, r, expert(x[r]) * weights[start : start + n])
            start += n
    return out


class SparseMoE(nn.Module):
    """Router, routed experts, optional shared experts: ``[b, q, dim] -> [b, q, dim]``."""

    def __init__(self, router: Router, experts: list[nn.Module], shared: nn.Module | None = None) -> None:
        super().__init__()
        self.router = router
        self.experts = nn.ModuleList(experts)
        self.shared = shared

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [T, dim]
        out = dispatch(flat, self.router(flat), self.experts)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(x.shape)


@dataclass(frozen=True)
class MoESpec:
    """The sparse feed-forward of a :class:`~dlm.models.layers.TransformerSpec`.

    ``sparse_layers`` holds one flag per layer (a family's ``moe_layer_freq``, or BailingMoeV2's first dense
    layers): a layer without it keeps the dense SwiGLU of ``ffn_dim``. ``rule`` is a routing rule's spec
    (:class:`SoftmaxTopK`, ...) with a ``router(dim, n_experts)`` method. ``shared_dim``: the hidden size of
    the shared experts (None: none).
    """

    n_experts: int
    expert_dim: int
    rule: SoftmaxTopK
    sparse_layers: tuple[bool, ...]
    shared_dim: int | None = None

    @property
    def top_k(self) -> int:
        return self.rule.top_k

    def ffn(self, dim: int, dense_dim: int, layer: int) -> nn.Module:
        """The feed-forward of ``layer``: a :class:`SparseMoE`, or the dense SwiGLU where the layer is not sparse."""
        if not self.sparse_layers[layer]:
            return SwiGLU(dim, dense_dim)
        experts = [SwiGLU(dim, self.expert_dim) for _ in range(self.n_experts)]
        shared = SwiGLU(dim, self.shared_dim) if self.shared_dim else None
        return SparseMoE(self.rule.router(dim, self.n_experts), experts, shared)
