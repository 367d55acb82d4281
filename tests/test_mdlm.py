"""MDLM / DiDi-Instruct: the adapter's logits equal a plain restatement of ``models/dit.py`` (time conditioning
included, left padding or not), ``ancestral`` equals a restatement of the references' ancestral sampler token for
token at the same seed and draw order for the teacher's and the student's step counts (NFE: the forwards it
needs), rows of a batch give what they give alone, unconditional generation works from the API and the CLI and
is refused for models that need a prompt, both released layouts and GPT-2's two tokenizer layouts load, and
checkpoints that cannot load are refused naming the reason. The comparison with the released code itself is in
tests/test_mdlm_reference_code.py (given the checkouts) and docs/fidelity.md."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlm.cli import main
from dlm.errors import CheckpointError, CompositionError, InputError
from dlm.messages import ForwardPlan, NoiseLevel
from dlm.models.mdlm import MDLMConfig, MDLMModel
from dlm.pipeline import Pipeline
from dlm.tools.mdlm_checkpoints import END, gpt2_vocab, make_mdlm_checkpoint
from tests.reference_mdlm import NaiveDiT, reference_ancestral

CPU = torch.device("cpu")
L = 16  # tokens of a sample: the tiny models' whole context
TEACHER, STUDENT = 1000, 16  # MDLM's T = 1000 steps; DiDi-Instruct's eval script samples its student in 16


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def owt(tmp_path_factory):
    """kuleshov-group/mdlm-owt's layout (time_conditioning false, as released)."""
    return make_mdlm_checkpoint(tmp_path_factory.mktemp("mdlm") / "owt", model_length=L, seed=3)


@pytest.fixture(scope="module")
def didi_timed(tmp_path_factory):
    """DiDi-Instruct's layout, time-conditioned (every layer depends on the noise level)."""
    return make_mdlm_checkpoint(tmp_path_factory.mktemp("mdlm") / "didi", layout="didi", model_length=L,
                                time_conditioning=True, seed=4)


def pipe(ckpt, steps, gen_length=L, **decoding) -> Pipeline:
    return Pipeline.from_config({
        "model": {"name": "mdlm", "path": str(ckpt)},
        "iteration": {"name": "ancestral", "gen_length": gen_length, "steps": steps},
        "decoding": {"name": "ancestral", **decoding},
        "cache": {"name": "none"},
        "dtype": "float64",
    })


def whole_logits(model, ids: list[list[int]], sigma=None, pad_first: int = 0) -> torch.Tensor:
    """Logits of every generated column of rows ``ids`` (unconditional canvases), the first row left-padded by
    ``pad_first`` columns (a one-token prompt of its own and that much padding) when asked."""
    state = Pipeline(model, *_parts()).start(input_ids=[[] for _ in ids])
    state.canvas[:] = torch.tensor(ids)
    n = len(ids[0])
    plan = ForwardPlan(rows=torch.arange(len(ids)), all_rows=True, start=0, end=n, kv=None, key_end=n, refresh=False,
                       logits_start=0, logits_end=n)
    if sigma is not None:
        plan = plan.extend(NoiseLevel(torch.tensor(sigma, dtype=torch.float32)))
    return model.forward(state, plan)


def _parts():
    from dlm.cache.none import NoCache, NoCacheConfig
    from dlm.decoding.ancestral import Ancestral, AncestralConfig
    from dlm.iteration.ancestral import AncestralIteration, AncestralIterationConfig

    return (AncestralIteration(AncestralIterationConfig(gen_length=L, steps=4)),
            Ancestral(AncestralConfig(reuse_logits=False)), NoCache(NoCacheConfig()))


# --- the model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["mdlm", "didi"])
def test_logits_equal_a_restatement_of_dit_py_at_random_times(tmp_path, layout):
    ckpt = make_mdlm_checkpoint(tmp_path / layout, layout=layout, model_length=L, time_conditioning=True, seed=5,
                                time_scale=3.0)
    model = MDLMModel.load(MDLMConfig(path=ckpt), dtype=torch.float64, device=CPU)
    naive = NaiveDiT(ckpt)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, naive.vocab, (2, L), generator=g)
    ids[ids % 3 == 0] = naive.mask_id
    sigma = (torch.rand(2, generator=g) * 8).tolist()
    ours = whole_logits(model, ids.tolist(), sigma)
    for r in range(2):
        assert (ours[r] - naive.logits(ids[r].tolist(), sigma[r])).abs().max() < 1e-10
    assert (naive.logits(ids[0].tolist(), sigma[0]) - naive.logits(ids[0].tolist(), sigma[1])).abs().max() > 1e-3


def test_a_model_without_time_conditioning_ignores_the_noise_level(owt):
    model = MDLMModel.load(MDLMConfig(path=owt), dtype=torch.float64, device=CPU)
    ids = [[5, 6, 7, 8] * 4]
    assert torch.equal(whole_logits(model, ids, [3.0]), whole_logits(model, ids, [0.0]))
    assert torch.allclose(whole_logits(model, ids, [3.0])[0], NaiveDiT(owt).logits(ids[0], 0.0), atol=1e-10)


def test_a_left_padded_row_computes_what_it_computes_alone(didi_timed):
    p = pipe(didi_timed, 4, gen_length=12, reuse_logits=False)
    state = p.start(input_ids=[[9, 10, 11], []])  # row 1: three padding columns, then its whole canvas
    alone = p.start(input_ids=[[]])
    plan = lambda s, rows: ForwardPlan(rows=rows, all_rows=True, start=0, end=s.length, kv=None,  # noqa: E731
                                       key_end=s.length, refresh=False, logits_start=s.gen_start, logits_end=s.length)
    sigma = NoiseLevel(torch.tensor([1.5, 2.5]))
    batched = p.model.forward(state, plan(state, torch.arange(2)).extend(sigma))
    single = p.model.forward(alone, plan(alone, torch.arange(1)).extend(NoiseLevel(torch.tensor([2.5]))))
    assert (batched[1] - single[0]).abs().max() < 1e-12


def test_capabilities_declare_no_kv_cache_and_the_time_conditioning(owt, didi_timed):
    caps = MDLMModel.load(MDLMConfig(path=owt), dtype=torch.float64, device=CPU).capabilities
    vocab = len(gpt2_vocab()) + 1
    assert (caps.mask_id, caps.eos_ids, caps.vocab_size, caps.max_length) == (vocab - 1, (vocab - 2,), vocab, L)
    assert not caps.kv_cache and not caps.time_conditioned and caps.logit_shift == 0
    assert MDLMModel.load(MDLMConfig(path=didi_timed), dtype=torch.float64, device=CPU).capabilities.time_conditioned


# --- the sampler ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [STUDENT, TEACHER])
@pytest.mark.parametrize("noise_removal", ["ancestral", "greedy"])
def test_ancestral_equals_the_reference_sampler_token_for_token(owt, steps, noise_removal):
    """Released setting (no time conditioning): logits reused while the canvas is unchanged (MDLM's ddpm_cache);
    NFE = the forwards on distinct canvases, the reference's with its cache."""
    p = pipe(owt, steps, noise_removal=noise_removal)
    naive = NaiveDiT(owt)
    out = p.generate(n=3, seeds=[11, 12, 13])
    for r, seed in enumerate([11, 12, 13]):
        tokens, forwards = reference_ancestral(naive, L, steps, seed, noise_removal=noise_removal)
        assert out.generated[r].tolist() == tokens
        assert out.nfe[r] == forwards


def test_ancestral_with_a_time_conditioned_model_takes_a_forward_per_time_step(didi_timed):
    p = pipe(didi_timed, STUDENT, reuse_logits=False)
    naive = NaiveDiT(didi_timed)
    out = p.generate(n=2, seeds=[3, 4])
    for r, seed in enumerate([3, 4]):
        tokens, forwards = reference_ancestral(naive, L, STUDENT, seed, cache=False)
        assert out.generated[r].tolist() == tokens
        assert out.nfe[r] == forwards  # one per time step until the canvas is full
    assert any(0 in steps for steps in out.state.tokens_per_step)  # some step unmasked nothing: the row idled


def test_reusing_logits_with_a_time_conditioned_model_is_refused(didi_timed):
    with pytest.raises(CompositionError, match="time-conditioned.*reuse_logits: false"):
        pipe(didi_timed, STUDENT)


def test_ancestral_noise_level_is_the_schedules_and_the_model_gets_it(didi_timed):
    p = pipe(didi_timed, 4, reuse_logits=False)
    seen = []
    forward = p.model.forward
    p.model.forward = lambda state, plan: seen.append(plan.get(NoiseLevel).sigma.tolist()) or forward(state, plan)
    p.generate(n=1)
    t = torch.linspace(1, 1e-5, 5)
    want = [float(-torch.log(1 - (1 - 1e-3) * t[k])) for k in range(len(seen))]
    assert seen == [[pytest.approx(w, rel=1e-6)] for w in want]


def test_rows_of_a_batch_give_what_they_give_alone(owt):
    p = pipe(owt, STUDENT, gen_length=12)
    batch = p.generate(input_ids=[[40, 41, 42], [], [50]], seeds=[1, 2, 3])
    for r, (ids, seed) in enumerate(zip([[40, 41, 42], [], [50]], [1, 2, 3])):
        alone = p.generate(input_ids=[ids], seeds=[seed])
        assert torch.equal(batch.sequences[r], alone.sequences[0]) and batch.nfe[r] == alone.nfe[0]


def test_a_prompt_is_kept_and_conditions_the_sample(owt):
    p = pipe(owt, STUDENT, gen_length=12)
    out = p.generate(input_ids=[[40, 41, 42, 43]], seeds=[0])
    assert out.sequences[0][:4].tolist() == [40, 41, 42, 43] and out.generated[0].numel() == 12
    assert p.model.capabilities.mask_id not in out.generated[0].tolist()


# --- unconditional generation ------------------------------------------------------------------------------


def test_unconditional_generation_by_n_empty_ids_and_empty_text_agree(owt):
    p = pipe(owt, STUDENT)
    by_n = p.generate(n=2)
    assert [g.numel() for g in by_n.generated] == [L, L] and by_n.state.gen_start == 0
    for other in (p.generate(input_ids=[[], []]), p.generate(prompts=["", ""])):
        assert all(torch.equal(a, b) for a, b in zip(by_n.generated, other.generated))


def test_a_model_that_needs_a_prompt_is_refused_unconditional_generation(tmp_path):
    from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint

    ckpt = make_qwen2_checkpoint(tmp_path / "dream", seed=0)
    dream = Pipeline.from_config({"model": {"name": "dream", "path": str(ckpt)},
                                  "iteration": {"name": "dream", "gen_length": 8, "steps": 8},
                                  "decoding": {"name": "dream"}, "dtype": "float64"})
    with pytest.raises(InputError, match="prompt 0 is empty: .*shifted logits.*at least one prompt token"):
        dream.generate(n=1)


def test_cli_generates_unconditional_samples(owt, tmp_path, capsys):
    config = tmp_path / "mdlm.yaml"
    config.write_text(json.dumps({"model": {"name": "mdlm", "path": str(owt)},
                                  "iteration": {"name": "ancestral", "gen_length": L, "steps": 8},
                                  "decoding": {"name": "ancestral"}}))
    assert main(["generate", "-c", str(config), "--unconditional", "-n", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(len(r["token_ids"]) == L and r["prompt"] == "" for r in rows)
    assert main(["generate", "-c", str(config), "--unconditional", "hello"]) == 2
    assert "--unconditional generates with no prompt" in capsys.readouterr().err
    assert main(["generate", "-c", str(config), "-n", "2"]) == 2
    assert "add --unconditional" in capsys.readouterr().err
    assert main(["generate", "-c", str(config)]) == 2
    assert "give at least one PROMPT, or --unconditional -n N" in capsys.readouterr().err


# --- checkpoints and tokenizers ----------------------------------------------------------------------------


def test_both_layouts_load_the_same_network(tmp_path):
    a = make_mdlm_checkpoint(tmp_path / "a", layout="mdlm", model_length=L, seed=9)
    b = make_mdlm_checkpoint(tmp_path / "b", layout="didi", model_length=L, seed=9)
    ids = [[7, 8, 9, 10] * 4]
    la, lb = (whole_logits(MDLMModel.load(MDLMConfig(path=c), dtype=torch.float64, device=CPU), ids) for c in (a, b))
    assert torch.equal(la, lb)


def test_gpt2_vocab_and_merges_files_tokenize_as_tokenizer_json(tmp_path):
    from dlm.models.tokenizer import Tokenizer

    a = make_mdlm_checkpoint(tmp_path / "json", model_length=L, tokenizer="json")
    b = make_mdlm_checkpoint(tmp_path / "vocab", model_length=L, tokenizer="vocab")
    assert not (b / "tokenizer.json").exists()
    text = "the winter is in the station, or so: " + END + " next"
    ta, tb = Tokenizer(a), Tokenizer(b)
    ids = ta.encode(text)
    assert tb.encode(text) == ids and ta.token_id(END) == tb.token_id(END) == len(gpt2_vocab()) - 1
    assert gpt2_vocab()["Ġthe"] in ids and gpt2_vocab()["he"] in ids  # merges applied: " the", "the"
    assert ta.decode(ids) == tb.decode(ids) == text.replace(END, "")
    model = MDLMModel.load(MDLMConfig(path=b), dtype=torch.float64, device=CPU)
    assert model.capabilities.eos_ids == (ta.token_id(END),)


def _rewrite(ckpt, change):
    cfg = json.loads((ckpt / "config.json").read_text())
    change(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(model_type="llada"), "is a llada checkpoint"),
    (lambda c: c.pop("hidden_dim"), "has no 'hidden_dim'"),
    (lambda c: c.update(n_heads=5), "must split into 5 heads"),
    (lambda c: c.update(time_conditioning="yes"), "time_conditioning must be true or false"),
])
def test_a_bad_mdlm_config_is_refused_naming_the_key(tmp_path, change, match):
    ckpt = _rewrite(make_mdlm_checkpoint(tmp_path / "c", model_length=L), change)
    with pytest.raises(CheckpointError, match=match):
        MDLMModel.load(MDLMConfig(path=ckpt), dtype=torch.float64, device=CPU)


@pytest.mark.parametrize("change,match", [
    (lambda c: c["config"]["algo"].update(causal_attention=True), "autoregressive DiT"),
    (lambda c: c["config"]["algo"].update(parameterization="sedd"), "parameterization is 'sedd'"),
    (lambda c: c["config"].pop("model"), "config.model and config.algo must be objects"),
])
def test_a_bad_didi_config_is_refused(tmp_path, change, match):
    ckpt = _rewrite(make_mdlm_checkpoint(tmp_path / "c", layout="didi", model_length=L), change)
    with pytest.raises(CheckpointError, match=match):
        MDLMModel.load(MDLMConfig(path=ckpt), dtype=torch.float64, device=CPU)


def test_foreign_tensor_names_and_wrong_rotary_frequencies_are_refused(tmp_path):
    ckpt = make_mdlm_checkpoint(tmp_path / "c", model_length=L)
    tensors = load_file(str(ckpt / "model.safetensors"))
    save_file({k.replace("backbone.", "model."): v for k, v in tensors.items()}, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="neither backbone.vocab_embed.embedding"):
        MDLMModel.load(MDLMConfig(path=ckpt), dtype=torch.float64, device=CPU)
    tensors["backbone.rotary_emb.inv_freq"] = tensors["backbone.rotary_emb.inv_freq"] * 2
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="rotary frequencies of base 10000"):
        MDLMModel.load(MDLMConfig(path=ckpt), dtype=torch.float64, device=CPU)


def test_a_kv_cache_is_refused_with_mdlm(owt):
    with pytest.raises(CompositionError, match="prefix"):
        Pipeline.from_config({"model": {"name": "mdlm", "path": str(owt)},
                              "iteration": {"name": "blockwise", "gen_length": 8, "block_length": 4, "steps": 8},
                              "decoding": {"name": "low_confidence"}, "cache": {"name": "prefix"}})
