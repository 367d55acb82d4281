"""Per-layer plans (LayerPlans, dlm/models/planned.py): a policy that asks nothing changes nothing, rows a layer
does not compute take exact outputs from a fresh feature cache, probes are the attention the layer paid, predicted
logits are the forward's own, per-layer key masks are masks, an absent policy costs no work, and the compositions
that cannot run them are refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.errors import CompositionError
from dlm.messages import LayerPlans, LayerPolicy, LayerStep
from dlm.models.kv import FeatureBuffer, KVBuffer
from dlm.models.llada import LLaDAConfig, LLaDAModel
from dlm.models.planned import planned_forward
from dlm.testing import make_llada_checkpoint
from dlm.tools.vs_fast_dllm import count_flops
from tests.conftest import pipeline_config

CPU = torch.device("cpu")


def load(ckpt):
    return LLaDAModel.load(LLaDAConfig(path=ckpt), dtype=torch.float64, device=CPU)


@pytest.fixture(scope="module")
def net(tiny_ckpt):
    return load(tiny_ckpt).net


@pytest.fixture(scope="module")
def one_head_net(tmp_path_factory):
    return load(make_llada_checkpoint(tmp_path_factory.mktemp("one_head") / "llada", n_heads=1, seed=4)).net


class Steps(LayerPolicy):
    """Gives each layer the step ``steps[layer]`` and records the probes."""

    def __init__(self, steps=None) -> None:
        self.steps, self.probes = steps or {}, {}

    def step(self, layer):
        make = self.steps.get(layer.layer)
        return make(layer) if callable(make) else make

    def attended(self, layer, weights):
        self.probes[layer] = weights


def stores(net, b, length):
    s = net.spec
    kv = KVBuffer(s.n_layers, b, s.n_kv_heads, length, s.head_dim, dtype=torch.float64, device=CPU)
    return kv, FeatureBuffer(s.n_layers, b, length, s.dim, dtype=torch.float64, device=CPU)


def inputs(b, q, seed, padded):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 80, (b, q), generator=g)
    positions = torch.arange(q).expand(b, q)
    mask = None
    if padded:
        mask = torch.rand(b, 1, 1, q, generator=g) > 0.3
        mask[..., 0] = True
    return ids, positions, mask


def planned(net, ids, positions, mask, policy, kv, features, logits=slice(None)):
    return planned_forward(net, ids, positions, mask, kv=kv, rows=None, start=0, key_end=ids.shape[1], columns=None,
                           plans=LayerPlans(policy, features), logits=logits)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), q=st.integers(1, 12), seed=st.integers(0, 99), padded=st.booleans(),
       cached=st.booleans(), with_features=st.booleans())
def test_a_policy_that_asks_nothing_gives_the_default_forward(net, b, q, seed, padded, cached, with_features):
    ids, positions, mask = inputs(b, q, seed, padded)
    kv_a, features = stores(net, b, q) if cached else (None, None)
    kv_b, _ = stores(net, b, q) if cached else (None, None)
    kw = dict(kv=kv_b, rows=None, key_end=q) if cached else {}
    want = net(ids, positions, mask, **kw)
    got = planned(net, ids, positions, mask, Steps(), kv_a, features if with_features else None)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    if cached:
        torch.testing.assert_close(kv_a.keys, kv_b.keys, rtol=0, atol=0)
        torch.testing.assert_close(kv_a.values, kv_b.values, rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), q=st.integers(2, 12), seed=st.integers(0, 99), padded=st.booleans())
def test_rows_a_layer_skips_take_exact_outputs_from_a_fresh_feature_cache(net, b, q, seed, padded):
    """After a full forward stored every K/V and feature, any per-layer compute sets give the same logits."""
    ids, positions, mask = inputs(b, q, seed, padded)
    kv, features = stores(net, b, q)
    want = planned(net, ids, positions, mask, Steps(), kv, features)
    g = torch.Generator().manual_seed(seed + 1)
    sets = {i: LayerStep(compute=torch.rand(b, q, generator=g) > 0.5) for i in range(net.spec.n_layers)}
    got = planned(net, ids, positions, mask, Steps(sets), kv, features)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_rows_a_layer_skips_keep_their_stale_outputs(net):
    """A stale cache is read, not recomputed: skipping a changed column gives other logits than computing it."""
    ids, positions, _ = inputs(1, 8, 0, False)
    kv, features = stores(net, 1, 8)
    planned(net, ids, positions, None, Steps(), kv, features)
    changed = ids.clone()
    changed[0, 3] = (int(ids[0, 3]) + 1) % 80 + 3
    fresh = planned(net, changed, positions, None, Steps(), *stores(net, 1, 8))
    skip = torch.ones(1, 8, dtype=torch.bool)
    skip[0, 3] = False
    stale = planned(net, changed, positions, None, Steps({1: LayerStep(compute=skip)}), kv, features)
    assert not torch.allclose(stale, fresh)


def test_probes_are_the_attention_the_layer_paid(one_head_net):
    """One head: the probe's weights times the values, through the output projection, are the attention output
    the layer stored (SDPA's), and each probed row sums to one over the keys it may see."""
    net = one_head_net
    ids, positions, mask = inputs(2, 9, 3, True)
    kv, features = stores(net, 2, 9)
    rows = torch.tensor([[0, 4, 8], [1, 2, 7]])
    policy = Steps({i: LayerStep(probe=rows) for i in range(net.spec.n_layers)})
    planned(net, ids, positions, mask, policy, kv, features)
    for layer, weights in policy.probes.items():
        assert weights.shape == (2, 3, 9)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, dtype=torch.float64))
        assert not bool(weights.masked_select(~mask[:, 0, 0][:, None, :].expand_as(weights)).any())
        out = net.blocks[layer].attn.o(weights @ kv.values[layer, :, 0])  # [2, 3, dim]
        stored = features.attn[layer].gather(1, rows[..., None].expand(-1, -1, net.spec.dim))
        torch.testing.assert_close(out, stored, rtol=0, atol=1e-12)


class Predicts(Steps):
    """Asks for the logits of the query offsets ``offsets`` after the last layer and records them."""

    def __init__(self, offsets, steps=None) -> None:
        super().__init__(steps)
        self.offsets, self.logits = offsets, None

    def predict(self):
        return self.offsets

    def predicted(self, logits):
        self.logits = logits


def test_predicted_logits_are_the_forwards_own_at_the_offsets_asked_beside_the_span(net):
    """The offsets a policy names get the logits the forward computes there, whatever span it returns; a policy
    naming none is handed nothing."""
    ids, positions, mask = inputs(2, 9, 7, True)
    every = planned(net, ids, positions, mask, Steps(), None, None)  # [2, 9, V]
    offsets = torch.tensor([[8, 0, 3], [2, 2, 5]])
    policy = Predicts(offsets, {1: LayerStep(probe=offsets)})
    span = planned(net, ids, positions, mask, policy, None, None, logits=slice(4, 6))
    torch.testing.assert_close(span, every[:, 4:6], rtol=0, atol=1e-12)
    torch.testing.assert_close(policy.logits, every.gather(1, offsets[..., None].expand(-1, -1, every.shape[-1])),
                               rtol=0, atol=1e-12)
    silent = Predicts(None)
    planned(net, ids, positions, mask, silent, None, None)
    assert silent.logits is None


def test_a_layer_key_mask_is_an_attention_mask_for_that_layer(net):
    """Keys masked in every layer give the default forward with those keys masked, and probes see none of them."""
    ids, positions, _ = inputs(2, 10, 5, False)
    keys = torch.rand(2, 10, generator=torch.Generator().manual_seed(1)) > 0.4
    keys[:, 0] = True
    probe = torch.arange(10).expand(2, 10)
    policy = Steps({i: LayerStep(keys=keys, probe=probe) for i in range(net.spec.n_layers)})
    got = planned(net, ids, positions, None, policy, *stores(net, 2, 10))
    want = net(ids, positions, keys[:, None, None, :])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for weights in policy.probes.values():
        assert not bool(weights.masked_select(~keys[:, None, :].expand_as(weights)).any())


def analytic_flops(spec, b, q, keys, finished):
    """2·m·n·k per matmul: q/k/v/o projections and SwiGLU for every row of every layer but the last, where only
    ``finished`` rows get the query, the attention, the output projection, the MLP and the head."""
    d, hd, f = spec.dim, spec.head_dim, spec.ffn_dim
    kv_proj = 2 * b * q * d * 2 * spec.n_kv_heads * hd

    def rows(n):
        return 2 * b * n * d * spec.n_heads * hd * 2 + 4 * b * spec.n_heads * n * keys * hd + 2 * b * n * d * f * 3

    layers = spec.n_layers
    return layers * kv_proj + (layers - 1) * rows(q) + rows(finished) + 2 * b * finished * d * spec.vocab_out


def test_an_absent_policy_costs_no_work_and_one_that_asks_nothing_only_the_unpruned_last_layer(net):
    ids, positions, _ = inputs(2, 12, 7, False)
    default = count_flops(lambda: net(ids, positions, None, logits_from=4, logits_to=10))
    assert default == analytic_flops(net.spec, 2, 12, 12, 6)
    nothing = count_flops(lambda: planned(net, ids, positions, None, Steps(), None, None, logits=slice(4, 10)))
    assert nothing == analytic_flops(net.spec, 2, 12, 12, 12) - 2 * 2 * 6 * net.spec.dim * net.spec.vocab_out


def test_tokens_and_nfe_of_the_caches_are_those_without_the_interface(tiny_ckpt):
    """The pipeline's `none` and `dual` give what they gave before per-layer plans existed: the golden tokens of
    a fixed case (pinned when the interface was added, from the commit before it)."""
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    iteration = {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16}
    for cache in ("none", "dual"):
        out = Pipeline.from_config(pipeline_config(tiny_ckpt, iteration=iteration, cache={"name": cache})).generate(
            input_ids=prompts)
        assert ([g.tolist() for g in out.generated], out.nfe) == GOLDEN[cache]


GOLDEN = {  # tests/conftest.py's tiny_ckpt, float64; the same at 1f45255, before per-layer plans
    "none": ([[22, 40, 55, 55, 32, 32, 32, 40, 55, 55, 32, 14, 22, 22, 22, 55],
              [55, 40, 40, 55, 55, 55, 55, 36, 55, 55, 55, 55, 55, 55, 71, 55]], [16, 16]),
    "dual": ([[32, 40, 71, 71, 55, 64, 85, 40, 55, 71, 32, 32, 41, 85, 55, 71],
              [40, 22, 55, 55, 71, 32, 40, 36, 55, 55, 55, 55, 40, 55, 55, 55]], [16, 16]),
}


def test_a_model_that_runs_no_layer_plans_refuses_a_cache_needing_them(tiny_ckpt):
    pipe = Pipeline.from_config(pipeline_config(tiny_ckpt))
    model = pipe.model
    model.capabilities = replace(model.capabilities, layer_plans=False)
    try:
        with pytest.raises(CompositionError, match="cache 'dllm_cache' cannot be used with model .*per-layer plans"):
            Pipeline.from_config(pipeline_config(tiny_ckpt, cache={"name": "dllm_cache"}), model=model)
    finally:
        model.capabilities = replace(model.capabilities, layer_plans=True)


def test_a_compiled_model_withdraws_layer_plans(tiny_ckpt):
    model = load(tiny_ckpt)
    model.capabilities = replace(model.capabilities, layer_plans=False)  # what compile() and shard() do
    with pytest.raises(CompositionError, match="compiled or sharded"):
        model.new_features(1, 8)


@settings(max_examples=5, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=5), min_size=1, max_size=2),
       drafts=st.integers(2, 3))
def test_candidate_steps_run_a_layer_planning_cache_each_candidate_as_its_row(tiny_ckpt, prompts, drafts):
    """Each candidate gets its row's policy and a private copy of its row's features; the kept one's become the
    row's. With dllm_cache at its exact settings that is freedave under `none`, tokens and NFE."""
    decoding = {"name": "freedave", "drafts": drafts}
    runs = []
    for cache in ({"name": "dllm_cache", "prompt_interval_steps": 1, "gen_interval_steps": 1}, {"name": "none"}):
        pipe = Pipeline.from_config(pipeline_config(tiny_ckpt, decoding=decoding, cache=cache))
        out = pipe.generate(input_ids=prompts)
        runs.append(([g.tolist() for g in out.generated], out.nfe))
    assert runs[0] == runs[1]


def test_candidate_steps_refuse_a_policy_that_cannot_repeat_naming_what_to_use(tiny_ckpt, monkeypatch):
    from dlm.cache.dllm_cache import _Policy

    monkeypatch.setattr(_Policy, "repeat", LayerPolicy.repeat)
    cfg = pipeline_config(tiny_ckpt, decoding={"name": "freedave", "drafts": 2},
                          cache={"name": "dllm_cache", "gen_interval_steps": 2})
    with pytest.raises(CompositionError, match="defines no repeat.*use a cache without layer plans"):
        Pipeline.from_config(cfg).generate(input_ids=[[5, 6, 7]])
