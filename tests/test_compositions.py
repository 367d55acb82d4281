"""Compositions: every pair of built-in components that the declarations allow builds and runs, every pair they
refuse is refused with a CompositionError naming both components (dlm/compat.py, docs/configuration.md's
compatibility matrix).

Each pair of two kinds runs with the third kind fixed to a partner that accepts it (cache ``none``; decoding
``low_confidence`` or, where the declarations refuse it, the first rule they accept; iteration ``blockwise`` or
likewise), on the first tiny float64 model family that accepts all three. A pair that no built-in model family
serves is refused by the model checks (e.g. ``dream`` needs bidirectional attention, ``append`` causal).
"""

from __future__ import annotations

import dataclasses

import subprocess
import sys
from typing import ClassVar

import pytest

from dlm import CompositionError, Pipeline, compat
from dlm.cli import main
from dlm.decoding.low_confidence import LowConfidence
from dlm.iteration.blockwise import Blockwise
from dlm.registry import resolve
from dlm.testing.contracts.fixtures import tiny_model

FAMILIES = ("llada", "fast_dllm_v2", "qwen2", "wedlm", "diffusion_gemma", "llada_d2f")  # bidirectional, block-causal,
# causal, causal with shift 0, noise canvases, block-causal from the prompt's end (D2F's mask)
ITERATION = {  # gen_length 8: one short generation per pair
    "blockwise": {"gen_length": 8, "block_length": 4, "steps": 8},
    "adablock": {"gen_length": 8, "block_length": 4, "delimiter_ids": [10, 20], "delimiter_threshold": 0.0,
                 "lookahead": 0.5},
    "dream": {"gen_length": 8, "steps": 8},
    "dream_blockwise": {"gen_length": 8, "block_length": 4, "steps": 8},
    "block_diffusion": {"gen_length": 8, "block_length": 8, "sub_block_size": 4},
    "autoregressive": {"gen_length": 8},
    "jacobi": {"gen_length": 8, "n": 3},
    "wedlm": {"gen_length": 8, "window": 4},
    "canvases": {"gen_length": 8},
    "ancestral": {"gen_length": 8, "steps": 8},
    "d2f": {"gen_length": 16, "block_add_threshold": 0.5, "decoded_token_threshold": 0.5},
}
DEFAULT = {"iteration": "blockwise", "decoding": "low_confidence", "cache": "none"}
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12]]


def component(kind: str, name: str):
    cls = resolve(kind, name)
    return cls(cls.Config(**(ITERATION.get(name, {}) if kind == "iteration" else {})))


def third(kind: str, chosen: dict[str, str]) -> str:
    """The default of ``kind``, or the first built-in the chosen pair's declarations accept."""
    names = [DEFAULT[kind]] + [n for n in compat.builtin_names(kind) if n != DEFAULT[kind]]
    classes = {k: resolve(k, n) for k, n in chosen.items()}
    for name in names:
        if not compat.problems({**classes, kind: resolve(kind, name)}):
            return name
    raise AssertionError(f"no {kind} composes with {chosen}")


PAIRS = [(a, b, x, y) for a, b in compat.PAIRS for x in compat.builtin_names(a) for y in compat.builtin_names(b)]


@pytest.mark.parametrize("kind_a,kind_b,a,b", PAIRS, ids=[f"{a}={x}-{b}={y}" for a, b, x, y in PAIRS])
def test_every_pair_of_built_ins_builds_and_runs_or_is_refused_naming_both(kind_a, kind_b, a, b):
    declared = compat.problems({kind_a: resolve(kind_a, a), kind_b: resolve(kind_b, b)})
    (kind_c,) = set(compat.KINDS) - {kind_a, kind_b}
    chosen = {kind_a: a, kind_b: b}
    c = DEFAULT[kind_c] if declared else third(kind_c, chosen)
    names = {**chosen, kind_c: c}
    refusals = []
    for family in FAMILIES:
        parts = {k: component(k, n) for k, n in names.items()}
        try:
            pipe = Pipeline(tiny_model(family=family), parts["iteration"], parts["decoding"], parts["cache"])
        except CompositionError as err:
            refusals.append(str(err))
            continue
        assert not declared, f"{names} built on {family} although its declarations refuse it: {declared}"
        out = pipe.generate(input_ids=PROMPTS)
        mask = pipe.model.capabilities.mask_id
        assert all(mask not in g.tolist() for g in out.generated), (family, names, out.generated)
        return
    if declared:  # refused on every model, with a line naming both components and the reason
        for err in refusals:
            assert f"{kind_a} {a!r} cannot be used with {kind_b} {b!r}" in err or \
                   f"{kind_b} {b!r} cannot be used with {kind_a} {a!r}" in err, err
        return
    # allowed by the declarations, but no built-in model family serves both: refused by the model checks only
    for err in refusals:
        assert all("cannot be used with model" in line for line in err.splitlines()), err


# --- the issue's examples, and the facts the declarations rest on -------------------------------------------


def test_jacobi_decoding_under_blockwise_on_the_demo_model_is_refused_naming_both():
    with pytest.raises(CompositionError) as info:
        Pipeline.default(overrides=["decoding.name=jacobi"])
    assert str(info.value).startswith("decoding 'jacobi' cannot be used with model 'llada': ")
    assert "causal model with next-token logits" in str(info.value)


@pytest.mark.parametrize("decoding", ["low_confidence", "threshold", "freedave", "sched", "wedlm"])
def test_the_jacobi_iteration_refuses_rules_that_are_not_its_acceptance_rule(decoding):
    with pytest.raises(CompositionError) as info:
        Pipeline(tiny_model(family="qwen2"), component("iteration", "jacobi"), component("decoding", decoding),
                 component("cache", "append"))
    assert str(info.value) == str(info.value).splitlines()[0]  # one problem, one line
    assert f"iteration 'jacobi' cannot be used with decoding {decoding!r}: " in str(info.value)
    assert str(info.value).endswith("(works with decoding jacobi)")


@pytest.mark.parametrize("iteration", ["dream_blockwise", "block_diffusion"])
def test_jacobi_decoding_refuses_iterations_that_leave_drafts_unverified(iteration):
    with pytest.raises(CompositionError, match=f"decoding 'jacobi' cannot be used with iteration '{iteration}': "
                                               ".*drafts would be left unverified"):
        Pipeline(tiny_model(family="qwen2"), component("iteration", iteration), component("decoding", "jacobi"),
                 component("cache", "none"))


def test_jacobi_decoding_refuses_a_causal_model_whose_masks_predict_their_own_position():
    with pytest.raises(CompositionError, match="decoding 'jacobi' cannot be used with model 'wedlm'"):
        Pipeline(tiny_model(family="wedlm"), component("iteration", "jacobi"), component("decoding", "jacobi"),
                 component("cache", "none"))


@pytest.mark.parametrize("iteration", ["autoregressive", "blockwise", "jacobi", "wedlm"])
@pytest.mark.parametrize("cache", ["none", "append"])
def test_jacobi_decoding_keeps_its_guarantee_under_every_iteration_it_accepts(iteration, cache):
    """Greedy autoregressive output: why blockwise and wedlm are allowed (they keep drafts pending and, on a
    causal model, every committed token is predicted from the committed text before it)."""
    model = tiny_model(family="qwen2")
    reference = Pipeline(model, component("iteration", "autoregressive"), component("decoding", "low_confidence"),
                         component("cache", "none")).generate(input_ids=PROMPTS)
    out = Pipeline(model, component("iteration", iteration), component("decoding", "jacobi"),
                   component("cache", cache)).generate(input_ids=PROMPTS)
    assert [g.tolist() for g in out.generated] == [g.tolist() for g in reference.generated]


@pytest.mark.parametrize("decoding", ["low_confidence", "random", "threshold", "wedlm", "freedave", "klass"])
def test_any_rule_under_the_autoregressive_iteration_is_autoregressive_decoding(decoding):
    model = tiny_model(family="qwen2")
    reference = Pipeline(model, component("iteration", "autoregressive"), component("decoding", "low_confidence"),
                         component("cache", "none")).generate(input_ids=PROMPTS)
    out = Pipeline(model, component("iteration", "autoregressive"), component("decoding", decoding),
                   component("cache", "append")).generate(input_ids=PROMPTS)
    assert [g.tolist() for g in out.generated] == [g.tolist() for g in reference.generated]


def test_every_problem_is_reported_at_once_one_line_each():
    with pytest.raises(CompositionError) as info:  # jacobi needs a causal model and its own rule; block: blocks
        Pipeline(tiny_model(family="llada"), component("iteration", "jacobi"), component("decoding", "threshold"),
                 component("cache", "block"))
    lines = str(info.value).splitlines()
    assert any(line.startswith("iteration 'jacobi' cannot be used with model 'llada'") for line in lines)
    assert any(line.startswith("cache 'block' cannot be used with model 'llada'") for line in lines)
    assert any(line.startswith("iteration 'jacobi' cannot be used with decoding 'threshold'") for line in lines)
    assert len(lines) == 3


# --- the command line -------------------------------------------------------------------------------------


def test_dlm_generate_refuses_jacobi_decoding_on_the_demo_model_in_one_line():
    run = subprocess.run([sys.executable, "-m", "dlm", "generate", "--set", "decoding.name=jacobi", "123+456="],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm generate: error: decoding 'jacobi' cannot be used with "
                                                   "model 'llada': "), run.stderr


def test_dlm_validate_reports_a_refused_pair_without_loading_the_model(tmp_path, capsys):
    path = tmp_path / "pipe.yaml"
    path.write_text("model: {name: qwen2, path: /nowhere}\niteration: {name: jacobi, gen_length: 16}\n"
                    "decoding: {name: threshold}\ncache: append\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"dlm validate: error: {path}: iteration 'jacobi' cannot be used with decoding 'threshold': "), err
    # the composition is accepted; the config is valid but names no checkpoint here, so validate exits 3
    assert main(["validate", str(path), "--set", "decoding.name=jacobi"]) == 3
    assert capsys.readouterr().out.startswith(f"# {path}: valid")


# --- plugins: undeclared components compose with everything; a plugin may declare features of its own ------


class Undeclared(LowConfidence):
    pass


class WantsGeometry(LowConfidence):
    requires: ClassVar = {"my_geometry": "it reads my_geometry's spans"}


class GivesGeometry(Blockwise):
    provides: ClassVar = frozenset({"my_geometry"})


def test_a_plugin_that_declares_nothing_composes_with_every_built_in_that_requires_nothing_of_it():
    asking = set()
    for kind in ("iteration", "cache"):
        for name in compat.builtin_names(kind):
            cls = resolve(kind, name)
            asks = [f for f in compat.requires(cls) if f in compat.FEATURES and compat.FEATURES[f].kind == "decoding"]
            found = compat.problems({"decoding": Undeclared, kind: cls})
            assert len(found) == len(asks), (name, found)  # refused once per feature it asks of the strategy
            asking |= {name} if asks else set()
    assert asking == {"jacobi", "smoothing", "canvases", "d2f"}
    assert "(works with decoding jacobi)" in compat.problems({"decoding": Undeclared, "iteration": resolve("iteration", "jacobi")})[0]


def test_a_plugin_feature_is_met_by_any_partner_providing_it():
    assert compat.problems({"decoding": WantsGeometry, "iteration": GivesGeometry, "cache": resolve("cache", "none")}) == []
    found = compat.problems({"decoding": WantsGeometry, "iteration": Blockwise, "cache": resolve("cache", "none")})
    assert found == ["decoding 'WantsGeometry' cannot be used with iteration 'blockwise' or cache 'none': it reads "
                     "my_geometry's spans"]


def test_model_features_follow_the_capabilities():
    extra = {"soft_inputs", "layer_plans"}  # every adapter on dlm's transformer, in one process and not compiled
    assert compat.model_features(tiny_model(family="qwen2").capabilities) == {"causal", "kv_cache", "next_token", *extra}
    assert compat.model_features(tiny_model(family="wedlm").capabilities) == {"causal", "kv_cache", *extra}
    assert compat.model_features(tiny_model(family="llada").capabilities) == {"bidirectional", "kv_cache", *extra}
    hard = dataclasses.replace(tiny_model(family="llada").capabilities, soft_inputs=False, layer_plans=False,
                               kv_cache=False)
    assert compat.model_features(hard) == {"bidirectional"}


@pytest.mark.parametrize("kind", compat.KINDS)
def test_llada_moe_is_served_by_exactly_the_components_that_serve_llada(kind):
    """LLaDA-MoE declares dense LLaDA's capabilities (bidirectional, unshifted, KV cache), so the pairs above,
    run on ``llada``, speak for it; each cache that serves it also runs a generation on it."""
    dense, moe = tiny_model(family="llada"), tiny_model(family="llada_moe")
    for name in compat.builtin_names(kind):
        part = component(kind, name)
        refused = compat.model_problems(kind, part, moe.capabilities)
        assert bool(refused) == bool(compat.model_problems(kind, part, dense.capabilities)), name
        if kind == "cache" and not refused:
            out = Pipeline(moe, component("iteration", "blockwise"), component("decoding", "low_confidence"),
                           part).generate(input_ids=PROMPTS)
            assert all(moe.capabilities.mask_id not in g.tolist() for g in out.generated), name
