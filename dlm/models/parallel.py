"""``tensor_parallel: T`` and ``expert_parallel: N``: dlm's transformer sharded over the ``T × N`` processes of a
model group (started by torchrun; :mod:`dlm.distributed` lays the world out as ``dp × ep × tp``).

Tensor parallelism is Megatron-style sharding (Shoeybi et al. 2019, arXiv 1909.08053), through PyTorch's public
API as torchtitan does: in every block the q/k/v projections and the MLP's gate/up are split column-wise (each
rank computes its own heads and its own slice of the hidden layer), the attention output and the MLP's down
projection row-wise (their partial sums are all-reduced over the ``T`` ranks: two all-reduces per layer).
Embedding, norms and head stay replicated. Each rank's attention then runs on ``n_heads / T`` query heads and
``n_kv_heads / T`` KV heads, and its KV buffer holds only those heads (:meth:`TransformerAdapter.new_kv` reads the
local count), so the caches shard with the heads and no cache policy changes. ``T`` must divide the KV heads (and
the MLP width).

Expert parallelism splits the routed experts of every sparse layer (GShard, Lepikhin et al. 2020, arXiv
2006.16668, §2.2): the ``ep`` rank ``i`` of a model group holds experts ``[i·E/N, (i+1)·E/N)`` only
(:func:`expert_range`); attention, the router, the shared experts and the dense layers are replicated over the
``N`` slices (tensor-parallel over the ``T`` ranks of each). Every rank already holds every row after attention,
so no token is sent anywhere: the router runs alike on every rank, each rank runs its experts on the rows routed
to them (:func:`~dlm.models.moe.dispatch` on its slice), and one all-reduce over the model group adds the partial
sums (the combine of vLLM's ``FusedMoE`` when it runs expert-parallel without an all-to-all). With ``T > 1``
each expert's hidden width is also split over the ``T`` ranks of its slice (gate/up by rows, down by columns),
so that one all-reduce adds the ``T × N`` partials. The shared experts are added once, after it.

Same function as one process: in float64 the tokens are identical (tests/test_parallel.py,
tests/test_expert_parallel.py); the all-reduce adds partial sums in another order than one process's loop, so the
last bits of the outputs may differ (docs/scaling.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlm.distributed import World, init, world
from dlm.errors import CompositionError
from dlm.models.moe import SparseMoE, dispatch


def tp_problem(spec, tp: int) -> str | None:
    """Why ``spec`` (a :class:`~dlm.models.layers.TransformerSpec`) cannot be split ``tp`` ways, or None."""
    if spec.fused_qkv:
        return "tensor_parallel does not shard a fused q/k/v projection yet; run it with tensor_parallel: 1"
    widths = [("KV heads", spec.n_kv_heads), ("attention heads", spec.n_heads)]
    moe = spec.moe
    if moe is None or not all(moe.sparse_layers):
        widths.append(("MLP width", spec.ffn_dim))
    if moe is not None:
        widths.append(("expert width", moe.expert_dim))
        if moe.shared_dim:
            widths.append(("shared expert width", moe.shared_dim))
    for what, n in widths:
        if n % tp:
            ok = [d for d in range(1, spec.n_kv_heads + 1) if all(m % d == 0 for _, m in widths)]
            return (f"tensor_parallel: {tp} must divide the model's {what} ({n}); "
                    f"values that work for this model: {', '.join(map(str, ok))}")
    return None


def ep_problem(spec, ep: int, name: str) -> str | None:
    """Why ``spec`` (of the adapter ``name``) cannot have its experts split ``ep`` ways, or None."""
    if spec.moe is None:
        return f"expert_parallel needs a sparse mixture-of-experts model; {name} has none (use tensor_parallel)"
    n = spec.moe.n_experts
    if n % ep:
        ok = [d for d in range(1, n + 1) if n % d == 0]
        return (f"expert_parallel: {ep} must divide the model's number of experts ({n}); "
                f"values that work for this model: {', '.join(map(str, ok))}")
    return None


def expert_range(n_experts: int, ep: int, ep_rank: int) -> range:
    """The routed experts that expert slice ``ep_rank`` of ``ep`` holds: ``n_experts / ep`` consecutive ones."""
    size = n_experts // ep
    return range(ep_rank * size, (ep_rank + 1) * size)


@torch.compiler.disable  # a collective on a plain tensor: run eagerly, as the dispatch before it is
def _add_partials(partial: Tensor, group) -> Tensor:
    import torch.distributed as dist

    dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=group)
    return partial


class ExpertShard(SparseMoE):
    """A :class:`SparseMoE` holding one rank's share of the routed experts: experts ``first, first + 1, ...``
    (each possibly a tensor-parallel slice of its hidden width), with the whole layer's router and shared experts.

    :meth:`partial` is this rank's weighted sum; :meth:`routed` adds the model group's partials with one
    all-reduce (in the dtype the terms were added in, so float32 for BailingMoeV2's slot sums, as one process
    adds them), and :meth:`SparseMoE.forward` then adds the shared experts once.
    """

    def __init__(self, moe: SparseMoE, experts: list[nn.Module], first: int, group) -> None:
        super().__init__(moe.router, experts, moe.shared)
        self.first, self.group = first, group

    def partial(self, flat: Tensor) -> Tensor:
        """This rank's experts' weighted sum for the rows ``flat`` [T, dim] (zero from the others' experts)."""
        return dispatch(flat, self.router(flat), self.experts, self.first, cast=False)

    def routed(self, flat: Tensor) -> Tensor:
        return _add_partials(self.partial(flat), self.group)


def _keep_rows(linear: nn.Linear, keep: slice) -> None:
    linear.weight = nn.Parameter(linear.weight[keep].clone(), requires_grad=False)
    linear.out_features = linear.weight.shape[0]


def _keep_columns(linear: nn.Linear, keep: slice) -> None:
    linear.weight = nn.Parameter(linear.weight[:, keep].clone(), requires_grad=False)
    linear.in_features = linear.weight.shape[1]


def split_experts(net: nn.Module, ep: int, ep_rank: int, tp: int = 1, tp_rank: int = 0, group=None) -> None:
    """Give every sparse layer of ``net`` this rank's :class:`ExpertShard`: the experts of :func:`expert_range`,
    each cut to hidden units ``[tp_rank·H/tp, (tp_rank+1)·H/tp)`` when ``tp > 1``; the other experts are dropped
    (their weights freed). ``group``: the model group whose all-reduce adds the partials."""
    for block in net.blocks:
        moe = block.ffn
        if not isinstance(moe, SparseMoE):
            continue
        if isinstance(moe, ExpertShard):
            raise CompositionError("the model's experts are already split over processes; load it again to re-shard")
        local = expert_range(len(moe.experts), ep, ep_rank)
        experts = [moe.experts[e] for e in local]
        if tp > 1:
            for expert in experts:  # SwiGLU: gate/up [H, dim] by rows, down [dim, H] by columns
                width = expert.gate.weight.shape[0] // tp
                keep = slice(tp_rank * width, (tp_rank + 1) * width)
                _keep_rows(expert.gate, keep)
                _keep_rows(expert.up, keep)
                _keep_columns(expert.down, keep)
        block.ffn = ExpertShard(moe, experts, local.start, group)


def _model_group(w: World):
    """This rank's model group (``tp × ep`` consecutive ranks) as a process group. ``new_group`` is collective:
    every rank creates every group, in the same order."""
    import torch.distributed as dist

    mine = None
    for g in range(w.dp_size):
        group = dist.new_group(list(range(g * w.group, (g + 1) * w.group)))
        if g == w.dp_rank:
            mine = group
    return mine


def _tensor_parallel_plan(block) -> dict:
    """The DTensor plan of one block: attention, and the dense MLP or the shared experts (routed experts aside)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {"attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.o": RowwiseParallel()}
    ffn = block.ffn
    if not isinstance(ffn, SparseMoE):
        mlp = "ffn"
    elif ffn.shared is not None:
        mlp = "ffn.shared"
    else:
        return plan
    plan.update({f"{mlp}.gate": ColwiseParallel(), f"{mlp}.up": ColwiseParallel(), f"{mlp}.down": RowwiseParallel()})
    return plan


def shard_transformer(model, tp: int, ep: int = 1) -> None:
    """Shard ``model.net`` in place over this process's model group (started by torchrun): heads and MLPs over the
    ``tp`` ranks, routed experts over the ``ep`` slices."""
    net = getattr(model, "net", None)
    name = type(model).__name__
    if net is None or not hasattr(net, "blocks"):
        raise CompositionError(f"tensor_parallel and expert_parallel need a model built on dlm's transformer; "
                               f"{name} is not")
    problem = (tp_problem(net.spec, tp) if tp > 1 else None) or (ep_problem(net.spec, ep, name) if ep > 1 else None)
    if problem is not None:
        raise CompositionError(problem)
    w = world(tp, ep)  # refuses a launch without tp × ep processes, naming the torchrun command
    init(model.device)
    with torch.no_grad():
        if tp > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor.parallel import parallelize_module

            mesh = init_device_mesh(model.device.type, (w.dp_size, ep, tp), mesh_dim_names=("dp", "ep", "tp"))["tp"]
            for block in net.blocks:
                parallelize_module(block, mesh, _tensor_parallel_plan(block))
                # Attention.forward reshapes with its head counts: they become this rank's own
                block.attn.n_heads //= tp
                block.attn.n_kv_heads //= tp
        if net.spec.moe is not None:
            split_experts(net, ep, w.ep_rank, tp, w.tp_rank, _model_group(w))
