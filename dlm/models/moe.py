"""Sparse mixture-of-experts feed-forward, written once for every MoE family dlm hosts.

A sparse MoE layer (Shazeer et al., 2017, "Outrageously Large Neural Networks", arXiv 1701.06538) replaces
the dense feed-forward by ``E`` expert feed-forwards and a router: each row (token) is sent to the ``k``
experts its router scores highest, and the layer's output is the sum of those experts' outputs, each
weighted by the router. Two pieces, kept apart so that a family adds its routing rule without touching the
dispatch:

- **Routing** (:class:`Router`): from the rows ``[T, dim]`` to a :class:`Routing` (``k`` expert ids and
  ``k`` weights per row). One class per scoring rule; the rule's frozen spec lives in the model's
  :class:`~dlm.models.layers.TransformerSpec` and builds it: :class:`SoftmaxTopK` (OLMoE, LLaDA-MoE; Qwen3-MoE
  with ``normalize=True``) and :class:`GroupLimitedTopK` (BailingMoeV2 / LLaDA2: sigmoid scores, an expert bias
  for the choice only, group-limited top-k and a routed scaling factor, DeepSeek-V3, arXiv 2412.19437,
  §2.1.2) and :class:`ScaledSoftmaxTopK` (DiffusionGemma: a normalised, scaled router input and a learned
  per-expert weight scale). A family still to come adds its rule the same way.
- **Dispatch** (:func:`dispatch`): route once per forward, then run each expert only on the rows routed to it
  (rows gathered per expert, the weighted outputs added back with ``index_add_``). There is no fallback that
  runs every expert on every row: the cost is the active experts', docs/benchmarks.md measures it. Grouping the
  rows needs the number of rows per expert on the host: one synchronisation per MoE layer and forward. How the
  weighted outputs of a row are added is the routing's to say (:attr:`Routing.by_slot`), since the released
  codes round differently: OLMoE's loop accumulates in ascending expert order in the model dtype, BailingMoeV2's
  ``moe_infer`` sums each row's ``k`` slots in the router's float32.
  Expert parallelism (``expert_parallel: N``, :mod:`dlm.models.parallel`) runs the dispatch on a rank's slice
  of the experts (``first``): the slots routed elsewhere contribute nothing, and :meth:`SparseMoE.routed`'s
  result, in the dtype its terms were added in, is what the ranks add with one all-reduce before the cast to the
  model dtype and the shared experts.

:class:`SparseMoE` is the layer: router, experts (:class:`~dlm.models.layers.SwiGLU` each, so a checkpoint's
per-expert ``gate/up/down`` tensors map one to one) and optional shared experts, which every row passes
through unweighted (BailingMoeV2; Qwen2-MoE gates them, a rule it would add). :class:`MoESpec` says which layers
are sparse (the others keep the dense feed-forward of ``TransformerSpec.ffn_dim``). :func:`expert_names` and
:func:`swiglu_names` map the experts' parameters to the ``gate_proj``/``up_proj``/``down_proj`` names every hosted
family's checkpoints use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.models.layers import SwiGLU


@dataclass(frozen=True)
class Routing:
    """Where each row goes: ``experts`` [T, k] (long, distinct per row) and their ``weights`` [T, k].

    ``by_slot``: how :func:`dispatch` adds a row's weighted expert outputs. False: accumulated into the output in
    ascending expert order, in the model dtype (the weights are cast to it). True: each expert output is cast to
    the weights' dtype, weighted, and the row's ``k`` terms summed in slot order (the order of ``experts``), then
    cast back (BailingMoeV2 / DeepSeek's ``moe_infer``, whose weights are float32 whatever the model dtype).
    """

    weights: Tensor
    experts: Tensor
    by_slot: bool = False


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


@dataclass(frozen=True)
class GroupLimitedTopK:
    """Sigmoid scores, an expert bias for the choice only, group-limited top-k, normalised and scaled weights:
    BailingMoeV2's router as LLaDA2.0/2.1's released ``modeling_llada2_moe.py`` computes it (``LLaDA2MoeGate``),
    the rule of DeepSeek-V3 (arXiv 2412.19437, §2.1.2 "auxiliary-loss-free load balancing" and the node-limited
    routing of §2.1.2/§3.2 applied to expert groups).

    For each row: ``s = sigmoid(x Wg)`` over the ``E`` experts, in float32 (the gate's product too, whatever the
    model dtype); ``b = s + expert_bias`` (the bias in the model dtype, as the released buffer is); the experts
    are split into ``n_group`` groups of ``E / n_group`` consecutive experts, each group scored by the sum of its
    two largest ``b``; the ``topk_group`` best groups are kept (``torch.topk``, unsorted), the other experts
    masked to ``-inf``; the ``top_k`` largest remaining ``b`` are the experts (``torch.topk``: ties broken as it
    breaks them). Their weights are the *unbiased* ``s`` of the chosen experts, divided by their sum (``+ 1e-20``)
    when ``normalize`` and ``top_k > 1``, times ``scaling``; float32, combined slot by slot (``by_slot``).

    The float32 steps are the released code's, kept so that logits equal it bit for bit; they make a row's routing
    sensitive to the last bits of its float64 hidden state, which the shape of a batch moves (padding keys, kernel
    choice): in a float64 run a row of a batch agrees with the row alone to ~1e-6, not 1e-12 (docs/models.md).
    """

    top_k: int
    n_group: int
    topk_group: int
    scaling: float = 1.0
    normalize: bool = True

    def router(self, dim: int, n_experts: int) -> "Router":
        return GroupLimitedRouter(self, dim, n_experts)


class GroupLimitedRouter(Router):
    """:class:`GroupLimitedTopK`'s router; ``expert_bias`` [E] is a checkpoint tensor."""

    def __init__(self, rule: GroupLimitedTopK, dim: int, n_experts: int) -> None:
        super().__init__(dim, n_experts)
        problem = group_limit_problem(rule, n_experts)
        if problem:
            raise ValueError(problem)
        self.rule = rule
        self.register_buffer("expert_bias", torch.zeros(n_experts))

    def forward(self, x: Tensor) -> Routing:
        rule = self.rule
        logits = F.linear(x.float(), self.gate.weight.float())  # [T, E], float32 whatever the model dtype
        scores = torch.sigmoid(logits)
        biased = scores + self.expert_bias  # the choice only
        t = biased.shape[0]
        groups = biased.view(t, rule.n_group, -1)  # [T, G, E/G]
        group_scores = groups.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
        kept = torch.topk(group_scores, rule.topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)  # [T, G]
        allowed = keep[:, :, None].expand_as(groups).reshape(t, -1)  # [T, E]
        experts = torch.topk(biased.masked_fill(~allowed, -torch.inf), rule.top_k, dim=-1).indices  # [T, k]
        weights = scores.gather(1, experts)
        if rule.normalize and rule.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return Routing(weights * rule.scaling, experts, by_slot=True)


@dataclass(frozen=True)
class ScaledSoftmaxTopK:
    """DiffusionGemma's router (transformers' ``DiffusionGemmaTextRouter``, ``models/diffusion_gemma``, 5.13+):
    the row is RMS-normalised without a learned scale (float32 inside, as Gemma's norm), multiplied by a learned
    per-dimension ``scale`` and by ``dim ** -0.5``, projected to the ``E`` expert scores; softmax in float32; the
    ``top_k`` largest kept (``torch.topk``), divided by their sum, and each multiplied by its expert's learned
    ``per_expert_scale``. Weights stay float32; a row's terms are added in ascending expert order in the model
    dtype (``by_slot=False``: the released ``DiffusionGemmaTextExperts`` loop casts each weighted term to the
    model dtype and ``index_add_``s it)."""

    top_k: int
    eps: float = 1e-6

    def router(self, dim: int, n_experts: int) -> "Router":
        return ScaledSoftmaxRouter(self, dim, n_experts)


class ScaledSoftmaxRouter(Router):
    """:class:`ScaledSoftmaxTopK`'s router; ``scale`` [dim] and ``per_expert_scale`` [E] are checkpoint tensors."""

    def __init__(self, rule: ScaledSoftmaxTopK, dim: int, n_experts: int) -> None:
        super().__init__(dim, n_experts)
        if not 1 <= rule.top_k <= n_experts:
            raise ValueError(f"top_k {rule.top_k} must be between 1 and the number of experts {n_experts}")
        self.rule = rule
        self.scale = nn.Parameter(torch.ones(dim))
        self.per_expert_scale = nn.Parameter(torch.ones(n_experts))

    def forward(self, x: Tensor) -> Routing:
        x32 = x.float()
        normed = (x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + self.rule.eps, -0.5)).to(x.dtype)
        scores = self.gate(normed * self.scale * x.shape[-1] ** -0.5)  # [T, E]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.rule.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.per_expert_scale[experts]
        return Routing(weights, experts)


def group_limit_problem(rule: GroupLimitedTopK, n_experts: int) -> str | None:
    """Why ``rule`` cannot route over ``n_experts`` experts (a config.json naming it is refused), or None."""
    if rule.n_group < 1 or n_experts % rule.n_group:
        return f"n_group {rule.n_group} must divide num_experts {n_experts}"
    size = n_experts // rule.n_group
    if size < 2:
        return (f"each of the n_group {rule.n_group} expert groups needs at least 2 experts (groups are scored by "
                f"their two best), num_experts is {n_experts}")
    if not 1 <= rule.topk_group <= rule.n_group:
        return f"topk_group {rule.topk_group} must be between 1 and n_group {rule.n_group}"
    if not 1 <= rule.top_k <= rule.topk_group * size:
        return (f"num_experts_per_tok {rule.top_k} must be between 1 and the experts of the topk_group "
                f"{rule.topk_group} kept groups ({rule.topk_group * size})")
    return None


@torch.compiler.disable  # group sizes are data: a compiled forward runs the dispatch eagerly, not one graph per size
def dispatch(x: Tensor, routing: Routing, experts: nn.ModuleList, first: int = 0, *, cast: bool = True) -> Tensor:
    """``sum_j weights[t, j] * experts[experts[t, j]](x[t])`` for every row ``t`` of ``x`` [T, dim], each
    expert run once, on the rows routed to it.

    ``experts`` are the experts ``first, first + 1, ...``: all of them in one process; under expert parallelism
    a rank's slice, and the slots routed to other experts contribute nothing here (the ranks' partial sums are
    added by :class:`~dlm.models.parallel.ExpertShard`).

    Each row's terms are added as ``routing.by_slot`` says (see :class:`Routing`): in ascending expert order (the
    order of OLMoE's loop over experts), or over the row's slots in the weights' dtype (BailingMoeV2's
    ``moe_infer``), so the sum rounds as the released code's does. The result is in ``x``'s dtype, or with
    ``cast=False`` in the dtype the terms were added in (the weights' when ``by_slot``): the ranks' partial sums
    are added in that dtype before the cast, as one process adds the terms.
    """
    t, k = routing.experts.shape
    choice = routing.experts.reshape(-1)  # [T*k]: expert of each (row, slot)
    order = torch.argsort(choice, stable=True)  # slots grouped by expert
    counts = torch.bincount(choice, minlength=first + len(experts)).tolist()  # the one host wait of the layer
    start = sum(counts[:first])  # the first slot (in expert order) of this slice's experts
    counts = counts[first : first + len(experts)]
    rows = order // k  # [T*k]: the row of each slot, in expert order
    if routing.by_slot:
        every = sum(counts) == t * k  # this slice serves every slot (one process): none is left to zero
        slots = (x.new_empty if every else x.new_zeros)(t * k, x.shape[-1])  # [T*k, dim]: each (row, slot)'s output
        for expert, n in zip(experts, counts):
            if n:
                s = order[start : start + n]
                slots[s] = expert(x[rows[start : start + n]])
                start += n
        w = routing.weights
        out = (slots.view(t, k, -1).to(w.dtype) * w[..., None]).sum(dim=1)
        return out.to(x.dtype) if cast else out
    weights = routing.weights.reshape(-1, 1)[order]  # [T*k, 1]
    out = torch.zeros_like(x)
    for expert, n in zip(experts, counts):
        if n:
            r = rows[start : start + n]
            out.index_add_(0, r, (expert(x[r]) * weights[start : start + n]).to(x.dtype))
            start += n
    return out


class SparseMoE(nn.Module):
    """Router, routed experts, optional shared experts: ``[b, q, dim] -> [b, q, dim]``."""

    def __init__(self, router: Router, experts: list[nn.Module], shared: nn.Module | None = None) -> None:
        super().__init__()
        self.router = router
        self.experts = nn.ModuleList(experts)
        self.shared = shared

    def routed(self, flat: Tensor) -> Tensor:
        """The routed experts' weighted sum for the rows ``flat`` [T, dim], in the dtype it was added in."""
        return dispatch(flat, self.router(flat), self.experts, cast=False)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [T, dim]
        out = self.routed(flat).to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(x.shape)


@dataclass(frozen=True)
class MoESpec:
    """The sparse feed-forward of a :class:`~dlm.models.layers.TransformerSpec`.

    ``sparse_layers`` holds one flag per layer (a family's ``moe_layer_freq``, or BailingMoeV2's first dense
    layers): a layer without it keeps the dense SwiGLU of ``ffn_dim``. ``rule`` is a routing rule's spec
    (:class:`SoftmaxTopK`, :class:`GroupLimitedTopK`) with ``top_k`` and a ``router(dim, n_experts)`` method. ``shared_dim``: the hidden size of
    the shared experts (None: none).
    """

    n_experts: int
    expert_dim: int
    rule: SoftmaxTopK | GroupLimitedTopK | ScaledSoftmaxTopK
    sparse_layers: tuple[bool, ...]
    shared_dim: int | None = None

    @property
    def top_k(self) -> int:
        return self.rule.top_k

    def ffn_names(self, layer: int, *, bias: str | None = None, shared: str | None = None) -> dict[str, str]:
        """Own feed-forward parameter names of ``layer`` (under the block) -> the checkpoint's (under the layer):
        the dense ``mlp.*_proj``, or the router ``mlp.gate``, its expert bias at ``bias`` (None: none), the
        experts ``mlp.experts.{e}.*`` and the shared experts under ``shared`` -- the names every MoE family here
        shares."""
        if not self.sparse_layers[layer]:
            return swiglu_names("ffn.", "mlp.")
        names = {"ffn.router.gate.weight": "mlp.gate.weight"}
        if bias is not None:
            names["ffn.router.expert_bias"] = bias
        names.update(expert_names(self.n_experts, "mlp.experts."))
        if self.shared_dim:
            names.update(swiglu_names("ffn.shared.", shared))
        return names

    def ffn(self, dim: int, dense_dim: int, layer: int) -> nn.Module:
        """The feed-forward of ``layer``: a :class:`SparseMoE`, or the dense SwiGLU where the layer is not sparse."""
        if not self.sparse_layers[layer]:
            return SwiGLU(dim, dense_dim)
        experts = [SwiGLU(dim, self.expert_dim) for _ in range(self.n_experts)]
        shared = SwiGLU(dim, self.shared_dim) if self.shared_dim else None
        return SparseMoE(self.rule.router(dim, self.n_experts), experts, shared)


# own SwiGLU parameter -> the projection name of the Llama/Qwen checkpoint layout, which every MoE family hosted here
# keeps for its experts (and shared experts, and dense layers)
SWIGLU_NAMES = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def swiglu_names(own: str, theirs: str) -> dict[str, str]:
    """``{own}gate.weight`` ... -> ``{theirs}gate_proj.weight`` ...: one SwiGLU's tensor names."""
    return {f"{own}{a}.weight": f"{theirs}{b}.weight" for a, b in SWIGLU_NAMES.items()}


def expert_names(n_experts: int, theirs: str) -> dict[str, str]:
    """Own routed-expert parameters of a :class:`SparseMoE` (``ffn.experts.{e}.*``) -> ``{theirs}{e}.*_proj.weight``
    (``theirs`` e.g. ``"mlp.experts."``)."""
    names: dict[str, str] = {}
    for e in range(n_experts):
        names.update(swiglu_names(f"ffn.experts.{e}.", f"{theirs}{e}."))
    return names
