"""Elastic-Cache (``elastic``): the same tokens, NFE and per-layer recompute decisions as a plain restatement of the
paper's rule (arXiv 2510.14973; no code is published), exact on a one-layer model, a real approximation otherwise,
batch rows as alone, the contract kit and its refusals (float64, tiny random checkpoints)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.errors import CompositionError, ConfigError
from dlm.testing import make_llada_checkpoint
from dlm.testing.contracts import check_component
from tests import reference as ref
from tests.conftest import pipeline_config

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)
decoding_st = st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}])
ITERATION = {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16}


def elastic(gamma):
    return {"name": "elastic", "gamma": gamma}


def run(ckpt, cache, prompts, decoding=None, iteration=ITERATION):
    cfg = pipeline_config(ckpt, iteration=iteration, decoding=decoding or {"name": "low_confidence"}, cache=cache)
    out = Pipeline.from_config(cfg).generate(input_ids=prompts)
    return [g.tolist() for g in out.generated], out.nfe


def run_with_depths(ckpt, gamma, prompt, decoding, iteration):
    """Tokens, NFE and, per forward, the first layer that ran every column (n_layers: none did)."""
    pipe = Pipeline.from_config(pipeline_config(ckpt, iteration=iteration, decoding=decoding, cache=elastic(gamma)))
    state, depths = pipe.start(input_ids=[prompt]), []
    while not pipe.iteration.done(state):
        pipe.step(state)
        depths.append(int(state.memory["cache"].depth[0]))
    out = pipe.output(state)
    return out.generated[0].tolist(), out.nfe[0], depths


class ElasticRestatement:
    """The paper's rule written out for one prompt: per layer, K/V and attention/MLP outputs of every column; a
    forward runs the window (the block) in each layer and every column from the layer after the first whose
    most-attended token's attention (window queries, full softmax summed over heads) has cosine similarity ≤ γ
    to the previous forward's; a forward whose window moved runs every column in every layer."""

    def __init__(self, model: ref.NaiveLLaDA, gamma: float) -> None:
        self.m, self.gamma, self.n = model, gamma, model.cfg["n_layers"]
        self.window, self.kv, self.attn, self.mlp, self.top, self.before = None, {}, {}, {}, {}, {}

    def forward(self, ids: list[int], s: int, e: int):
        m, length, t = self.m, len(ids), self.m.t
        fresh = self.window != (s, e)
        deep, depth, self.window = fresh, 0 if fresh else self.n, (s, e)
        h = t["wte.weight"][torch.tensor(ids)].clone()  # [L, d]: every column's residual stream
        for i in range(self.n):
            b, run = f"blocks.{i}.", list(range(length)) if deep else list(range(s, e))
            hn = m._norm(h[run], t[b + "attn_norm.weight"])
            pos = torch.tensor(run)
            q = m._rope((hn @ t[b + "q_proj.weight"].T).view(len(run), m.h, m.hd).transpose(0, 1), pos)
            k = m._rope((hn @ t[b + "k_proj.weight"].T).view(len(run), m.kvh, m.hd).transpose(0, 1), pos)
            v = (hn @ t[b + "v_proj.weight"].T).view(len(run), m.kvh, m.hd).transpose(0, 1)
            if i not in self.kv:
                self.kv[i] = (torch.zeros(m.kvh, length, m.hd, dtype=k.dtype),) * 2
            keys, values = self.kv[i][0].clone(), self.kv[i][1].clone()
            keys[:, run], values[:, run] = k, v
            self.kv[i] = (keys, values)
            rep = m.h // m.kvh
            att = torch.softmax(q @ keys.repeat_interleave(rep, 0).transpose(1, 2) / math.sqrt(m.hd), -1)  # [H, n, L]
            attn = self.attn.get(i, torch.zeros_like(h)).clone()
            attn[run] = (att @ values.repeat_interleave(rep, 0)).transpose(0, 1).reshape(len(run), -1) @ \
                t[b + "attn_out.weight"].T
            h = h + attn
            hn = m._norm(h[run], t[b + "ff_norm.weight"])
            mlp = self.mlp.get(i, torch.zeros_like(h)).clone()
            mlp[run] = (torch.nn.functional.silu(hn @ t[b + "ff_proj.weight"].T) * (hn @ t[b + "up_proj.weight"].T)) @ \
                t[b + "ff_out.weight"].T
            h = h + mlp
            self.attn[i], self.mlp[i] = attn, mlp
            weights = att.sum(0)[[run.index(c) for c in range(s, e)]]  # [w, L]: the window's queries, heads summed
            if not deep:
                now, before = weights[:, self.top[i]], self.before[i]
                sigma = min(float(now @ before / (now.norm() * before.norm())), 1.0)
                if not sigma > self.gamma:
                    deep, depth = True, i + 1
            self.top[i] = int(weights.sum(0).argmax())
            self.before[i] = weights[:, self.top[i]]
        logits = m._norm(h[s:e], t["ln_f.weight"]) @ (t["ff_out.weight"] if "ff_out.weight" in t else t["wte.weight"]).T
        return logits, depth


def restated_generate(model, gamma, prompt, *, steps, gen_length, block_length, threshold=None):
    """Tokens, NFE and per-forward depths of blockwise low-confidence / threshold decoding over the restatement."""
    cache, x, lp = ElasticRestatement(model, gamma), list(prompt) + [model.mask_id] * gen_length, len(prompt)
    depths = []
    spb = steps // (gen_length // block_length)
    for blk in range(gen_length // block_length):
        s, e = lp + blk * block_length, lp + (blk + 1) * block_length
        sched, i = ref.schedule(sum(tok == model.mask_id for tok in x[s:e]), spb), 0
        while any(tok == model.mask_id for tok in x[s:e]):
            logits, depth = cache.forward(x, s, e)
            depths.append(depth)
            p = torch.softmax(logits, -1)
            masked = [j for j in range(e - s) if x[s + j] == model.mask_id]
            props, conf = {}, []
            for j in masked:
                scores = logits[j].clone()
                scores[model.mask_id] = -math.inf
                props[j] = int(scores.argmax())
                conf.append(float(p[j, props[j]]))
            for idx in ref.choose(conf, sched[i] if i < spb else len(masked), threshold, None):
                x[s + masked[idx]] = props[masked[idx]]
            i += 1
    return x[lp:], len(depths), depths


@pytest.fixture(scope="module")
def deep_ckpt(tmp_path_factory):
    """4 layers (a recomputation changes outputs only from the layer after the first recomputed one), d 32, GQA."""
    return make_llada_checkpoint(tmp_path_factory.mktemp("deep") / "llada", n_layers=4, n_kv_heads=2, seed=5)


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    return make_llada_checkpoint(tmp_path_factory.mktemp("one") / "llada", n_layers=1, n_kv_heads=2, seed=3)


GRID = [(0.0, (16, 8, 16)), (0.9, (16, 8, 16)), (0.99, (24, 8, 12)), (0.999, (16, 4, 8)), (1.0, (16, 16, 16))]


@pytest.mark.parametrize("decoding", [{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}],
                         ids=["low_confidence", "threshold"])
def test_the_restated_rule_gives_the_same_tokens_nfe_and_per_layer_decisions(deep_ckpt, decoding):
    model, depths_seen = ref.NaiveLLaDA(deep_ckpt), set()
    for gamma, (gen, block, steps) in GRID:
        iteration = {"name": "blockwise", "gen_length": gen, "block_length": block, "steps": steps}
        for prompt in ([51, 59, 29], [35, 34, 28, 9, 77, 40, 12]):
            want = restated_generate(model, gamma, prompt, steps=steps, gen_length=gen, block_length=block,
                                     threshold=decoding.get("threshold"))
            assert run_with_depths(deep_ckpt, gamma, prompt, decoding, iteration) == want, (gamma, gen, block, prompt)
            depths_seen.update(want[2])
    assert depths_seen == {0, 1, 2, 3, 4}  # refreshes, drift at layers 0, 1 and 2, and forwards without drift


def test_gamma_one_recomputes_every_layer_after_the_first_at_every_cached_forward(deep_ckpt):
    _, nfe, depths = run_with_depths(deep_ckpt, 1.0, [5, 6, 7], {"name": "low_confidence"}, ITERATION)
    assert nfe == 16 and depths == ([0] + [1] * 7) * 2  # a refresh at each block's first forward


@settings(max_examples=6, deadline=None)
@given(prompts=prompts_st, decoding=decoding_st, gamma=st.sampled_from([0.0, 0.9, 1.0]))
def test_any_gamma_is_none_on_a_one_layer_model(one_layer, prompts, decoding, gamma):
    """The window's K/V are fresh and the others' tokens did not change since they were stored (a moved window
    refreshes), so the only layer's attention for the window is exact."""
    assert run(one_layer, elastic(gamma), prompts, decoding) == run(one_layer, {"name": "none"}, prompts, decoding)


def test_edited_tokens_are_recomputed_so_a_one_layer_model_still_gives_none_under_edits(one_layer):
    decoding = {"name": "joint_threshold", "threshold": 0.3, "editing_threshold": 0.0, "max_post_steps": 2}
    prompts = [[5, 6, 7, 8], [9, 10]]
    assert run(one_layer, elastic(0.9), prompts, decoding) == run(one_layer, {"name": "none"}, prompts, decoding)


def test_the_cache_is_an_approximation_and_gamma_matters(deep_ckpt):
    prompts = [[5, 6, 7, 8], [9, 10, 11], [31, 4, 17]]
    got = {g: run(deep_ckpt, elastic(g), prompts) for g in (0.0, 1.0)}
    assert got[0.0] != got[1.0] and run(deep_ckpt, {"name": "none"}, prompts) not in got.values()


@settings(max_examples=6, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=2, max_size=3),
       gamma=st.sampled_from([0.0, 0.9, 0.99]), decoding=decoding_st)
def test_batch_rows_give_what_they_give_alone(deep_ckpt, prompts, gamma, decoding):
    tokens, nfe = run(deep_ckpt, elastic(gamma), prompts, decoding)  # threshold: rows at different blocks
    for i, p in enumerate(prompts):
        assert run(deep_ckpt, elastic(gamma), [p], decoding) == ([tokens[i]], [nfe[i]])


def test_the_contract_kit_passes():
    check_component("cache", "elastic", {"gamma": 0.9})


@pytest.mark.parametrize("bad", [{"gamma": 1.5}, {"gamma": -0.1}, {"window": 16}])
def test_bad_settings_are_refused(tiny_ckpt, bad):
    with pytest.raises(ConfigError):
        Pipeline.from_config(pipeline_config(tiny_ckpt, cache={"name": "elastic", **bad}))


@pytest.mark.parametrize("missing, message", [({"layer_plans": False}, "cannot be used with model .*per-layer plans"),
                                              ({"kv_cache": False}, "cannot run through a KV buffer")])
def test_models_without_per_layer_plans_or_a_kv_buffer_are_refused(tiny_ckpt, missing, message):
    model = Pipeline.from_config(pipeline_config(tiny_ckpt)).model
    kept = model.capabilities
    model.capabilities = replace(kept, **missing)
    try:
        with pytest.raises(CompositionError, match=message):
            Pipeline.from_config(pipeline_config(tiny_ckpt, cache=elastic(0.9)), model=model)
    finally:
        model.capabilities = kept


@settings(max_examples=4, deadline=None)
@given(prompts=prompts_st, drafts=st.integers(2, 3))
def test_candidate_steps_run_each_candidate_as_its_row_so_a_one_layer_model_gives_none(one_layer, prompts, drafts):
    decoding = {"name": "freedave", "drafts": drafts}
    assert run(one_layer, elastic(0.9), prompts, decoding) == run(one_layer, {"name": "none"}, prompts, decoding)


def test_candidate_steps_keep_the_kept_candidates_records_and_batch_rows_give_what_they_give_alone(deep_ckpt):
    decoding, prompts = {"name": "freedave", "drafts": 3}, [[5, 6, 7, 8], [9, 10, 11], [31, 4, 17]]
    tokens, nfe = run(deep_ckpt, elastic(0.9), prompts, decoding)
    for i, p in enumerate(prompts):
        assert run(deep_ckpt, elastic(0.9), [p], decoding) == ([tokens[i]], [nfe[i]])
