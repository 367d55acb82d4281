"""Host synchronisations in the step loop: only the ones the control flow needs (docs/performance.md).

A synchronisation is any call that makes the host wait for a device value: ``bool(t)``, ``int(t)``,
``t.item()``, ``t.tolist()``, ``t.nonzero()``, ``t.cpu()``. On CPU they cost nothing, on a GPU each one
drains the queue, so the test counts them (through a torch function mode, which sees every tensor call) and
names the function each comes from: a new one on the hot path fails here.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dlm.pipeline import Pipeline
from tests.conftest import pipeline_config

SYNCS = {
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.cpu,
}

# where a step may wait for the device, and why (docs/performance.md lists the same sites)
DEVICE = {
    "_read_work",  # blockwise: which rows have work in their block (loop end, block change, finished rows leave)
    "commit",  # GenerationState.commit: the three commit invariants, read in one go
    "top_k_select",  # top-k strategies: the largest quota is the shape of topk
}
MOE = "dispatch"  # sparse MoE layers: the rows per expert size each expert's matmul (once per layer and forward)
# functions that read only host tensors (the per-row progress and geometry live on the host, so on a GPU these
# never wait); the counter cannot tell a host tensor from a device one on a CPU-only machine, so they are named
HOST = {
    "_active", "_settle", "end_or_next_block",  # blockwise: rows' blocks moved on, from the host bools of _read_work
    "window", "block_window",  # the window's rows and union columns, from the host progress
    "done",  # blockwise: any active row left (host)
    "advance",  # blockwise: the step bound, checked on the host steps
    "row_range_plan",  # prefix/dual: per-row write bounds from the host geometry
    "row_spans", "_whole",  # sampling: each row's own columns of the window, from the host geometry
}
# functions that read device values only when the device is the CPU, where a read costs nothing (on a GPU they
# step aside before reading): the last-layer row pruning of a ReadRows hint (dlm/models/transformer.py)
CPU_ONLY = {
    "read_offsets",
    "_raw",  # layer 0's per-token products (dlm/models/first_layer.py)
    "propose_at",  # a greedy proposal at the read positions only (dlm/decoding/proposal.py)
}
ALLOWED = DEVICE | HOST | CPU_ONLY


class SyncCounter(TorchFunctionMode):
    """Counts synchronising tensor calls, by the name of the dlm function that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            self.sites[_dlm_caller()] += 1
        return func(*args, **(kwargs or {}))


def _dlm_caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        if "/dlm/" in frame.f_code.co_filename.replace("\\", "/") and "/tests/" not in frame.f_code.co_filename:
            return frame.f_code.co_name
        frame = frame.f_back
    return "<outside dlm>"


def steps_with_syncs(ckpt, cache: str, decoding: str, model: str = "llada") -> list[Counter]:
    """Run one generation of two rows (one left-padded); return the sync sites of every step but the first."""
    pipe = Pipeline.from_config(pipeline_config(
        ckpt, model={"name": model, "path": str(ckpt)}, cache={"name": cache}, decoding={"name": decoding},
        iteration={"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 8},
    ))
    per_step: list[Counter] = []
    counter = SyncCounter()
    seen = Counter()

    def trace(state):
        per_step.append(counter.sites - seen)
        seen.update(counter.sites - seen)

    with counter:
        pipe.generate(input_ids=[[5, 6, 7], [8, 9]], trace=trace)
    return per_step[1:]  # the first step also carries the generation's setup


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("decoding", ["threshold", "low_confidence"])
def test_a_step_waits_for_the_device_only_where_the_control_flow_needs_it(tiny_ckpt, cache, decoding):
    steps = steps_with_syncs(tiny_ckpt, cache, decoding)
    assert steps, "the generation took more than one step"
    sites = set().union(*steps)
    assert sites <= ALLOWED, f"new host synchronisation in the step loop: {sorted(sites - ALLOWED)}"
    budget = 2 + (decoding == "low_confidence")
    for counts in steps:
        rows = counts["_read_work"]
        assert rows <= 2  # once per step, once more when a row's block begins
        device = sum(n for site, n in counts.items() if site in DEVICE)
        assert device - rows + 1 <= budget, counts


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_a_sparse_moe_layer_waits_once_per_forward(tmp_path, cache):
    from dlm.tools.moe_checkpoints import make_llada_moe_checkpoint

    ckpt = make_llada_moe_checkpoint(tmp_path / "moe", moe_layer_freq=[1, 0], seed=1)  # one sparse layer
    steps = steps_with_syncs(ckpt, cache, "threshold", model="llada_moe")
    for counts in steps:
        assert set(counts) <= ALLOWED | {MOE}, f"new host synchronisation in the step loop: {sorted(counts)}"
        assert counts[MOE] == 1, counts  # one forward per step, one sparse layer


def test_the_counter_sees_a_synchronisation(tiny_ckpt):
    counter = SyncCounter()
    with counter:
        bool(torch.ones(2).any())
        torch.arange(3).tolist()
    assert sum(counter.sites.values()) == 2
