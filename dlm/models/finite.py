"""The first forward's logits must be finite: a probe run when a model is loaded.

Weights that are each finite can still overflow once multiplied (a float32 activation beyond 3.4e38, a
float16 one beyond 65504): the logits become NaN or infinite, every confidence NaN, and decoding commits
token 0 everywhere without a word. :func:`check_finite_forward` runs the loaded network once on a few
tokens (the MASK and an end token, as a generation's first forward sees them) and, when the logits are not
finite, names the first layer whose output was not, so the fault is found at load time, not after a silent
all-zero generation. It costs one forward of 4 tokens.
"""

from __future__ import annotations

import torch

from dlm.errors import CheckpointError

PROBE_TOKENS = 4


def _finite(out) -> bool:
    tensor = out[0] if isinstance(out, (tuple, list)) else out
    return not isinstance(tensor, torch.Tensor) or bool(torch.isfinite(tensor).all())


@torch.inference_mode()
def check_finite_forward(net: torch.nn.Module, *, mask_id: int, eos_id: int, source: str, dtype: torch.dtype) -> None:
    """Run ``net`` (a :class:`~dlm.models.layers.Transformer`) on ``[eos, MASK, MASK, MASK]``; refuse non-finite
    logits with a :class:`CheckpointError` naming the first layer whose output was not finite."""
    device = net.embed.weight.device
    if device.type == "meta":
        return
    ids = torch.tensor([[eos_id] + [mask_id] * (PROBE_TOKENS - 1)], device=device)
    positions = torch.arange(PROBE_TOKENS, device=device)[None, :]
    named = [("the embedding", net.embed)] + [(f"layer {i} (block {i})", b) for i, b in enumerate(net.blocks)]
    named.append(("the final norm", net.norm))
    first: list[str] = []
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: first.append(name) if not first and not _finite(out) else None)
        for name, module in named]
    try:
        logits = net(ids, positions, None)
    finally:
        for h in hooks:
            h.remove()
    if bool(torch.isfinite(logits).all()):
        return
    where = first[0] if first else "the output head"
    hint = (" dtype float16 overflows beyond 65504: use dtype: bfloat16 or float32" if dtype == torch.float16
            else " the weights are finite but their products overflow in " + str(dtype).removeprefix("torch.")
            + (": try dtype: float64" if dtype != torch.float64 else ""))
    raise CheckpointError(
        f"{source}: the model's first forward gives NaN or infinite logits (first non-finite output: {where});"
        f"{hint}. A generation would silently commit token 0 everywhere; the checkpoint's weights may be "
        "scaled wrongly"
    )
