"""``compile: true``: the model forward through ``torch.compile``, with CUDA graphs on a GPU.

The step loop keeps the same shapes within a block geometry: a refresh computes the whole canvas
``[b, L]``, a cached step of ``dual`` the block ``[b, block_length]`` against ``L`` cached keys, writing
into a preallocated KV buffer. So the compiled forward sees a handful of shapes per generation: the first
call of each is compiled with static shapes, and an integer that changes from block to block (the block's
first column) becomes a symbol after its first change (dynamo's automatic dynamic shapes), instead of one
recompilation per block.

On CUDA the mode is ``reduce-overhead``: inductor captures each compiled shape in a CUDA graph (as dInfer
does for its decode steps), which replaces hundreds of kernel launches per forward by one replay. A graph
replays into fixed memory, so the KV buffer is marked as a static address (:func:`mark_static_kv`): its
in-place writes are then part of the graph instead of a reason to skip it. This path needs a GPU and is
not exercised by the CPU test suite (docs/performance.md).

Tokens equal eager ones: inductor keeps the matmuls on the same library kernels and fuses only the
element-wise work (checked in float64 and float32 by tests/test_compile.py).
"""

from __future__ import annotations

import torch

from dlm.errors import CompositionError

_COMPILED = "_dlm_compiled"
BACKEND = "inductor"  # torch.compile backend (the tests swap in "aot_eager": same capture, no code generation)


def compile_transformer(model) -> None:
    """Compile ``model.net`` in place (a :class:`~dlm.models.transformer.TransformerAdapter`'s network)."""
    net = getattr(model, "net", None)
    if not isinstance(net, torch.nn.Module):
        raise CompositionError(
            f"compile: true needs a model built on dlm's transformer (a `net` module); {type(model).__name__} has none"
        )
    if getattr(net, _COMPILED, False):
        return
    net.rope(model.device)  # build the RoPE tables now: the compiled forward then only reads them
    mode = "reduce-overhead" if model.device.type == "cuda" else None
    net.compile(backend=BACKEND, mode=mode if BACKEND == "inductor" else None, dynamic=None, fullgraph=False)
    setattr(net, _COMPILED, True)


def is_compiled(model) -> bool:
    return bool(getattr(getattr(model, "net", None), _COMPILED, False))


def mark_static_kv(kv) -> None:
    """Let CUDA graphs write the KV buffer in place (its storage never moves during a generation)."""
    if kv is not None and kv.keys.is_cuda:
        torch._dynamo.mark_static_address(kv.keys)
        torch._dynamo.mark_static_address(kv.values)
