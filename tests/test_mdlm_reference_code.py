"""The mdlm adapter and ``ancestral`` against MDLM's and DiDi-Instruct's own code, run from local checkouts
(tests/reference_mdlm_code.py: ``DLM_DIDI_REF`` = a checkout of haoyangzheng-ai/didi-instruct, ``DLM_MDLM_REF`` =
one of kuleshov-group/mdlm; skipped without them). float64 on CPU, one row per reference call (their samplers
draw one ``[batch, L, V]`` tensor per step from the global generator: a row of dlm equals the reference run alone
with that row's seed). The full grid and its counts are in docs/fidelity.md."""

from __future__ import annotations

import warnings

import pytest
import torch

from dlm.messages import ForwardPlan, NoiseLevel
from dlm.pipeline import Pipeline
from dlm.tools.mdlm_checkpoints import make_mdlm_checkpoint
from tests.reference_mdlm_code import (
    DIDI_ENV,
    MDLM_ENV,
    checkout,
    didi_sample,
    dit_from_checkpoint,
    load_didi,
    load_mdlm,
    mdlm_sample,
)

L = 16
TEACHER, STUDENT = 1000, 16


@pytest.fixture(autouse=True)
def _quiet_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their autocast("cuda") on a CPU machine, deprecated amp names
        yield
    torch.set_num_threads(threads)


def reference(env: str, loader):
    root = checkout(env)
    if root is None:
        pytest.skip(f"set {env} to a checkout of the reference (docs/fidelity.md names the commit)")
    return loader(root)


def pipe(ckpt, steps, **decoding) -> Pipeline:
    return Pipeline.from_config({"model": {"name": "mdlm", "path": str(ckpt)},
                                 "iteration": {"name": "ancestral", "gen_length": L, "steps": steps},
                                 "decoding": {"name": "ancestral", **decoding}, "dtype": "float64"})


@pytest.mark.parametrize("env,loader", [(DIDI_ENV, load_didi), (MDLM_ENV, load_mdlm)])
@pytest.mark.parametrize("layout", ["mdlm", "didi"])
def test_logits_equal_dit_py_for_random_inputs_and_times(tmp_path, env, loader, layout):
    ref = reference(env, loader)
    ckpt = make_mdlm_checkpoint(tmp_path / "c", layout=layout, model_length=L, time_conditioning=True, seed=5,
                                time_scale=3.0)
    net = dit_from_checkpoint(ref.dit, ckpt)
    ours = pipe(ckpt, 4, reuse_logits=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        ids = torch.randint(0, net.vocab_embed.embedding.shape[0], (3, L), generator=g)
        sigma = torch.rand(3, generator=g) * 6
        with torch.no_grad():
            theirs = net(ids, sigma)
        state = ours.start(n=3)
        state.canvas[:] = ids
        plan = ForwardPlan(rows=torch.arange(3), all_rows=True, start=0, end=L, kv=None, key_end=L, refresh=False,
                           logits_start=0, logits_end=L).extend(NoiseLevel(sigma))
        assert (ours.model.forward(state, plan) - theirs).abs().max() < 1e-12


@pytest.mark.parametrize("steps,time_conditioning,seeds", [(STUDENT, False, range(4)), (STUDENT, True, range(4)),
                                                           (TEACHER, False, range(2))])
def test_ancestral_equals_didi_instruct_generate_samples(tmp_path, steps, time_conditioning, seeds):
    ref = reference(DIDI_ENV, load_didi)
    ckpt = make_mdlm_checkpoint(tmp_path / "c", layout="didi", model_length=L, time_conditioning=time_conditioning,
                                seed=6)
    net = dit_from_checkpoint(ref.dit, ckpt)
    out = pipe(ckpt, steps, reuse_logits=not time_conditioning).generate(n=len(seeds), seeds=list(seeds))
    for r, seed in enumerate(seeds):
        tokens, forwards = didi_sample(ref, net, length=L, steps=steps, seed=seed, time_conditioning=time_conditioning)
        assert out.generated[r].tolist() == tokens.tolist()
        assert forwards.calls == steps + 1  # theirs: every time step and the noise removal
        # ours: those on a canvas with a mask left, and (reused logits) only on a canvas that changed
        assert out.nfe[r] == (forwards.masked if time_conditioning else forwards.changed)


@pytest.mark.parametrize("steps", [STUDENT, TEACHER])
@pytest.mark.parametrize("predictor,noise_eps", [("ddpm_cache", 0.0), ("ddpm", 1e-3)])
def test_ancestral_equals_mdlm_sample(tmp_path, steps, predictor, noise_eps):
    """``ddpm_cache`` moves by the time itself (``move_chance = t``: ε = 0); ``ddpm`` by ``1 − exp(−σ(t))`` of the
    log-linear schedule (ε = 1e-3). Greedy noise removal (``noise_removal: true``)."""
    ref = reference(MDLM_ENV, load_mdlm)
    ckpt = make_mdlm_checkpoint(tmp_path / "c", layout="mdlm", model_length=L, seed=7)
    net = dit_from_checkpoint(ref.dit, ckpt)
    out = pipe(ckpt, steps, noise_removal="greedy", noise_eps=noise_eps).generate(n=3, seeds=[0, 1, 2])
    for seed in range(3):
        tokens, forwards = mdlm_sample(ref, net, length=L, steps=steps, seed=seed, predictor=predictor)
        assert out.generated[seed].tolist() == tokens.tolist()
        assert out.nfe[seed] == forwards.changed  # theirs, less forwards on an unchanged or full canvas
