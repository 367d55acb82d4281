"""``expert_parallel: N`` (docs/scaling.md): the routed experts of a sparse MoE model split over N torchrun
processes give one process's tokens and NFE, alone and with ``tensor_parallel``.

Without torchrun, each rank's share is built in one process and checked against the unsplit layer: the ranks'
partial sums add up to its output, and each rank holds ``1/N`` of the routed experts' weights. Two torchrun
launches (2 and 4 processes, gloo on CPU) run the command lines themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from dlm.config import build_config
from dlm.distributed import World, world
from dlm.errors import CompositionError, ConfigError
from dlm.models.llada2 import LLaDA2Config, LLaDA2Model
from dlm.models.llada_moe import LLaDAMoEConfig, LLaDAMoEModel
from dlm.models.moe import SparseMoE
from dlm.models.parallel import ExpertShard, expert_range, split_experts, tp_problem
from dlm.models.sdar import SDARConfig, SDARModel
from dlm.pipeline import Pipeline
from dlm.testing import make_llada2_checkpoint, make_llada_moe_checkpoint, make_sdar_checkpoint
from tests.conftest import pipeline_config
from tests.test_parallel import one_process, torchrun

PROMPTS = "hello ab"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A LLaDA-MoE with a dense layer, a shared expert and top-3 of 4 experts (index_add sums); a LLaDA2 with fused
    q/k/v, a dense first layer, a shared expert and group-limited top-2 of 8 (float32 slot sums)."""
    root = tmp_path_factory.mktemp("ep")
    _MODELS.clear()
    yield {
        "llada_moe": make_llada_moe_checkpoint(root / "moe", num_hidden_layers=3, num_key_value_heads=2, num_experts=4,
                                               num_experts_per_tok=3, moe_layer_freq=[1, 0, 1],
                                               shared_expert_intermediate_size=16, seed=5),
        "llada2": make_llada2_checkpoint(root / "llada2", num_key_value_heads=2, seed=6),
        "sdar_moe": make_sdar_checkpoint(root / "sdar_moe", num_hidden_layers=3, num_experts=4, num_experts_per_tok=2,
                                         decoder_sparse_step=1, mlp_only_layers=[1], seed=7),
    }
    _MODELS.clear()


_MODELS: dict = {}


def load(ckpts, name):
    """The float64 adapter of checkpoint ``name``, loaded once (tests split deep copies of its network)."""
    if name not in _MODELS:
        adapter, config = {"llada_moe": (LLaDAMoEModel, LLaDAMoEConfig), "llada2": (LLaDA2Model, LLaDA2Config),
                           "sdar_moe": (SDARModel, SDARConfig)}[name]
        _MODELS[name] = adapter.load(config(path=ckpts[name]), dtype=torch.float64, device=torch.device("cpu"))
    return _MODELS[name]


def moe_config(ckpts, cache: str) -> dict:
    return pipeline_config(ckpts["llada_moe"], model={"name": "llada_moe", "path": str(ckpts["llada_moe"])},
                           iteration={"name": "blockwise", "gen_length": 8, "block_length": 4, "steps": 8},
                           cache={"name": cache}, threads=1)


def llada2_config(ckpts, cache: str) -> dict:
    return pipeline_config(
        ckpts["llada2"], model={"name": "llada2", "path": str(ckpts["llada2"]), "block_length": 4},
        iteration={"name": "block_diffusion", "gen_length": 12, "sub_block_size": 4},
        decoding={"name": "joint_threshold", "threshold": 0.5, "editing_threshold": 0.3, "max_post_steps": 2},
        cache={"name": cache}, threads=1,
    )


def sdar_moe_config(ckpts, cache: str) -> dict:
    return pipeline_config(
        ckpts["sdar_moe"], model={"name": "sdar", "path": str(ckpts["sdar_moe"])},
        iteration={"name": "block_diffusion", "gen_length": 8, "steps": 2}, decoding={"name": "strict_threshold"},
        cache={"name": cache}, threads=1,
    )


def write(tmp_path, name: str, cfg: dict):
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- one process: the layout, the split layer, refusals ----------------------------------------------------------


def test_each_expert_slice_holds_its_own_consecutive_experts_and_together_all():
    slices = [expert_range(8, 4, r) for r in range(4)]
    assert [list(s) for s in slices] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_the_world_is_dp_by_ep_by_tp_with_tp_fastest():
    coords = [(w.dp_rank, w.ep_rank, w.tp_rank) for w in (World(rank=r, size=8, tp=2, ep=2) for r in range(8))]
    assert coords == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    assert World(rank=5, size=8, tp=2, ep=2).dp_size == 2 and World(size=8, tp=2, ep=2).group == 4


@pytest.mark.parametrize("name", ["llada_moe", "llada2", "sdar_moe"])
@pytest.mark.parametrize("ep,tp", [(2, 1), (4, 1), (2, 2), (1, 2)])
def test_the_ranks_partial_sums_add_up_to_the_layer_and_each_holds_its_share_of_the_experts(ckpts, name, ep, tp):
    """llada_moe adds a row's experts in ascending order in float64, llada2 by slot in float32: the ranks' partials
    are the same terms added in another order (equal to the float's rounding, docs/scaling.md)."""
    model = load(ckpts, name)
    layer = next(i for i, b in enumerate(model.net.blocks) if isinstance(b.ffn, SparseMoE))
    x = torch.randn(29, model.net.spec.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = model.net.blocks[layer].ffn.routed(x)
    experts = sum(p.numel() for b in model.net.blocks if isinstance(b.ffn, SparseMoE) for p in b.ffn.experts.parameters())
    rest = sum(p.numel() for p in model.net.parameters()) - experts
    partials = []
    for rank in range(ep * tp):
        net = copy.deepcopy(model.net)
        split_experts(net, ep, rank // tp, tp, rank % tp)
        moe = net.blocks[layer].ffn
        assert isinstance(moe, ExpertShard) and moe.first == expert_range(len(model.net.blocks[layer].ffn.experts), ep,
                                                                           rank // tp).start
        assert sum(p.numel() for p in net.parameters()) == rest + experts // (ep * tp)
        partials.append(moe.partial(x))
    tol = 1e-6 if name == "llada2" else 1e-12  # the slot sums of llada2 are float32
    assert whole.dtype == partials[0].dtype
    torch.testing.assert_close(torch.stack(partials).sum(0), whole, rtol=0, atol=tol)


def test_expert_parallel_on_a_dense_model_is_refused_naming_what_it_needs(tiny_ckpt):
    with pytest.raises(CompositionError, match="expert_parallel needs a sparse mixture-of-experts model; LLaDAModel "
                                               "has none"):
        Pipeline.from_config(pipeline_config(tiny_ckpt, expert_parallel=2))


def test_expert_parallel_must_divide_the_number_of_experts(ckpts):
    with pytest.raises(CompositionError, match=r"expert_parallel: 3 must divide the model's number of experts \(4\); "
                                               "values that work for this model: 1, 2, 4"):
        Pipeline.from_config({**moe_config(ckpts, "none"), "expert_parallel": 3})


def test_expert_parallel_without_torchrun_is_refused_with_the_command_to_use(ckpts):
    with pytest.raises(CompositionError, match="expert_parallel: 2 needs 2 processes; launch with torchrun "
                                               "--nproc-per-node 2"):
        Pipeline.from_config({**moe_config(ckpts, "none"), "expert_parallel": 2})


def test_a_number_of_processes_the_model_group_does_not_divide_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(CompositionError, match=r"tensor_parallel: 2 × expert_parallel: 2 \(4 ranks per model\) must "
                                               r"divide the number of processes \(6\); launch with torchrun "
                                               "--nproc-per-node 4"):
        world(2, 2)
    assert world(1, 2).dp_size == 3


def test_tensor_parallel_splits_the_expert_width_and_refuses_a_width_it_does_not_divide(ckpts):
    spec = load(ckpts, "llada_moe").net.spec  # 4 heads (2 KV), dense MLP 128, experts and shared expert 16
    assert tp_problem(spec, 2) is None
    assert tp_problem(spec, 4) is not None and "KV heads (2)" in tp_problem(spec, 4)
    odd = dataclasses.replace(spec, moe=dataclasses.replace(spec.moe, expert_dim=15))
    assert tp_problem(odd, 2) == ("tensor_parallel: 2 must divide the model's expert width (15); values that work "
                                  "for this model: 1")


def test_expert_parallel_is_a_run_setting_of_at_least_one(ckpts):
    cfg = moe_config(ckpts, "none")
    assert build_config(cfg, overrides=["expert_parallel=2"]).run.expert_parallel == 2
    assert build_config(cfg).run.expert_parallel == 1
    with pytest.raises(ConfigError, match="expert_parallel"):
        build_config(cfg, overrides=["expert_parallel=0"])


# --- torchrun: one process's tokens and NFE ------------------------------------------------------------------------


def test_expert_parallel_over_two_processes_gives_the_tokens_of_one_for_every_cache(ckpts, tmp_path, capsys):
    configs = [write(tmp_path, f"moe-{c}", moe_config(ckpts, c)) for c in ("none", "prefix", "dual")]
    configs += [write(tmp_path, f"llada2-{c}", llada2_config(ckpts, c)) for c in ("none", "block")]
    configs += [write(tmp_path, f"sdar-moe-{c}", sdar_moe_config(ckpts, c)) for c in ("none", "block")]
    lines = [f"generate --config {p} --json {PROMPTS}" for p in configs]
    torchrun(tmp_path, *(f"{line} --set expert_parallel=2" for line in lines))
    for i, line in enumerate(lines):
        alone = json.loads(one_process(capsys, line))
        split = json.loads((tmp_path / f"{i}.out").read_text())
        assert [r["token_ids"] for r in split] == [r["token_ids"] for r in alone], configs[i].name
        assert [r["nfe"] for r in split] == [r["nfe"] for r in alone], configs[i].name


def test_four_processes_tensor_and_expert_parallel_or_data_over_expert_parallel_give_one_process_results(
    ckpts, tmp_path, capsys
):
    """tensor_parallel 2 × expert_parallel 2: one model group of 4 ranks; expert_parallel 2 alone: 2 groups of 2
    that share the prompts of a benchmark out and merge its figures."""
    config = write(tmp_path, "moe-dual", moe_config(ckpts, "dual"))
    line = f"generate --config {config} --json {PROMPTS}"
    bench = "bench {} --prompts 3 --prompt-length 4 --repeats 1 --warmup 0 --no-progress --json-out {}"
    torchrun(tmp_path, f"{line} --set tensor_parallel=2 --set expert_parallel=2",
             bench.format(config, tmp_path / "four.json") + " --set expert_parallel=2", processes=4)
    alone = json.loads(one_process(capsys, line))
    split = json.loads((tmp_path / "0.out").read_text())
    assert [r["token_ids"] for r in split] == [r["token_ids"] for r in alone]
    assert [r["nfe"] for r in split] == [r["nfe"] for r in alone]
    one_process(capsys, bench.format(config, tmp_path / "one.json"))
    four, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("four", "one"))
    assert four["settings"]["data_parallel"] == 2
    timing = {"tokens_per_second", "wall_seconds", "wall_seconds_all", "speedup"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in four["results"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in one["results"]
    ]
