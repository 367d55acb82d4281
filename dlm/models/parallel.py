"""``tensor_parallel: N``: dlm's transformer sharded over N processes with ``torch.distributed.tensor.parallel``.

Megatron-style sharding (Shoeybi et al. 2019, arXiv 1909.08053), through PyTorch's public API as torchtitan
does: in every block the q/k/v projections and the MLP's gate/up are split column-wise (each rank computes
its own heads and its own slice of the hidden layer), the attention output and the MLP's down projection
row-wise (their partial sums are all-reduced: two all-reduces per layer). Embedding, norms and head stay
replicated. Each rank's attention then runs on ``n_heads / N`` query heads and ``n_kv_heads / N`` KV heads,
and its KV buffer holds only those heads (:meth:`TransformerAdapter.new_kv` reads the local count), so the
caches shard with the heads and no cache policy changes. ``N`` must divide the KV heads (and the MLP width).

Same function as one process: in float64 the tokens are identical (tests/test_parallel.py); in lower
precision the all-reduce adds partial sums in another order, so logits differ in the last bits.
"""

from __future__ import annotations

import torch

from dlm.distributed import init, world
from dlm.errors import CompositionError


def tp_problem(spec, tp: int) -> str | None:
    """Why ``spec`` (a :class:`~dlm.models.layers.TransformerSpec`) cannot be split ``tp`` ways, or None."""
    if spec.moe is not None:
        return ("tensor_parallel does not shard a sparse mixture-of-experts model yet (its experts would need "
                "their own plan); run it in one process")
    if spec.fused_qkv:
        return "tensor_parallel does not shard a fused q/k/v projection yet; run it in one process"
    for what, n in (("KV heads", spec.n_kv_heads), ("attention heads", spec.n_heads), ("MLP width", spec.ffn_dim)):
        if n % tp:
            ok = [d for d in range(1, spec.n_kv_heads + 1) if spec.n_kv_heads % d == 0 and spec.n_heads % d == 0
                  and spec.ffn_dim % d == 0]
            return (f"tensor_parallel: {tp} must divide the model's {what} ({n}); "
                    f"values that work for this model: {', '.join(map(str, ok))}")
    return None


def shard_transformer(model, tp: int) -> None:
    """Shard ``model.net`` in place over the tensor-parallel group of this process (started by torchrun)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    net = getattr(model, "net", None)
    if net is None or not hasattr(net, "blocks"):
        raise CompositionError(f"tensor_parallel needs a model built on dlm's transformer; {type(model).__name__} is not")
    if (problem := tp_problem(net.spec, tp)) is not None:
        raise CompositionError(problem)
    w = world(tp)
    if w.size == 1:
        raise CompositionError(
            f"tensor_parallel: {tp} needs {tp} processes; launch with torchrun --nproc-per-node {tp} "
            "$(which dlm) generate ..."
        )
    init(model.device)
    mesh = init_device_mesh(model.device.type, (w.dp_size, tp), mesh_dim_names=("dp", "tp"))["tp"]
    plan = {
        "attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
        "attn.o": RowwiseParallel(),
        "ffn.gate": ColwiseParallel(), "ffn.up": ColwiseParallel(), "ffn.down": RowwiseParallel(),
    }
    with torch.no_grad():
        for block in net.blocks:
            parallelize_module(block, mesh, plan)
            # Attention.forward reshapes with its head counts: they become this rank's own
            block.attn.n_heads //= tp
            block.attn.n_kv_heads //= tp
