"""Demo-model training: vocabulary, batch layout, the SFT objective, checkpoint layout, the shipped model."""

from __future__ import annotations

import json

import pytest
import torch

from dlm.cli import main
from dlm.models.llada import LLaDAConfig, LLaDAModel, embedded_demo_path
from dlm.models.tokenizer import Tokenizer
from dlm.pipeline import Pipeline
from dlm.tools.tasks import ANSWER_LENGTH, MAX_PROMPT_LENGTH, TASKS, Example
from dlm.tools.train import TrainConfig, save_llada_checkpoint, train
from dlm.tools.train.data import EOS_ID, MASK_ID, VOCAB, encode, make_batch
from dlm.tools.train.loop import recipe_of
from dlm.tools.train.objective import mask_answers

TINY = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=64, batch_size=32, warmup=5, lr=3e-3, bf16=False, compile=False)


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    from dlm.tools.checkpoints import write_char_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    write_char_tokenizer(directory, chat_template=None)
    return Tokenizer(directory)


def test_training_vocabulary_matches_the_tokenizer_file(char_tokenizer):
    for task in TASKS.values():
        for ex in task.examples(20):
            text = ex.prompt + ex.answer
            assert char_tokenizer.encode(text) == encode(text)
            assert char_tokenizer.decode(encode(text)) == text
    assert char_tokenizer.token_id("<|mdm_mask|>") == MASK_ID == VOCAB["<|mdm_mask|>"]


def test_batches_are_left_padded_with_answers_at_fixed_columns():
    batch = make_batch([Example("add", "1+2=", "3"), Example("rev", "rev:abc=", "cba")])
    assert batch.ids.shape == (2, MAX_PROMPT_LENGTH + ANSWER_LENGTH)
    assert batch.pad.tolist() == [MAX_PROMPT_LENGTH - 4, MAX_PROMPT_LENGTH - 8]
    assert batch.ids[0, batch.answer_start :].tolist() == encode("3") + [EOS_ID] * (ANSWER_LENGTH - 1)
    assert batch.positions[0, batch.pad[0]].item() == 0
    assert not batch.key_mask[0, 0, 0, : batch.pad[0]].any() and batch.key_mask[0, 0, 0, batch.pad[0] :].all()


def test_masking_touches_answer_tokens_only():
    batch = make_batch([TASKS["add"].examples(1)[0]] * 64)
    noised, masked, t = mask_answers(batch, torch.Generator().manual_seed(0), masking="bernoulli")
    assert torch.equal(noised[:, : batch.answer_start], batch.ids[:, : batch.answer_start])
    assert torch.equal(noised[:, batch.answer_start :] == MASK_ID, masked)
    assert ((t > 0) & (t <= 1)).all() and masked.any() and not masked.all()
    # stratified: one t in each of 64 equal slices of [eps, 1)
    slices = ((t - 1e-3) / (1 - 1e-3) * 64).floor().long()
    assert sorted(slices.tolist()) == list(range(64))


def test_count_masking_masks_exactly_k_answer_tokens_for_every_k_equally_often():
    batch = make_batch(TASKS["rev"].examples(8 * ANSWER_LENGTH))
    noised, masked, rate = mask_answers(batch, torch.Generator().manual_seed(3), masking="count")
    assert torch.equal(noised[:, : batch.answer_start], batch.ids[:, : batch.answer_start])
    assert torch.equal(noised[:, batch.answer_start :] == MASK_ID, masked)
    k = masked.sum(dim=1)
    assert torch.equal(rate * ANSWER_LENGTH, k.float())  # the weight is A/k
    assert sorted(k.tolist()) == sorted(list(range(1, ANSWER_LENGTH + 1)) * 8)  # stratified: each k 8 times
    assert len({tuple(row) for row in masked.tolist()}) > ANSWER_LENGTH  # which k columns is random


def test_count_and_bernoulli_masking_estimate_the_same_loss_the_count_form_with_less_variance():
    # LLaDA Eq. 5 (t ~ U, weight 1/t) and its exact-count form (k ~ U{1..A}, weight A/k) are one objective
    from dlm.tools.train.loop import build_model
    from dlm.tools.train.objective import sft_loss

    net = build_model(TrainConfig(**TINY)).eval()
    batch = make_batch(TASKS["add"].examples(8) + TASKS["perm"].examples(8))
    draws = {}
    with torch.no_grad():
        for masking in ("count", "bernoulli"):
            g = torch.Generator().manual_seed(11)
            draws[masking] = torch.stack([sft_loss(net, batch, g, masking=masking) for _ in range(300)])
    mean = {m: d.mean() for m, d in draws.items()}
    stderr = (draws["count"].var() / 300 + draws["bernoulli"].var() / 300).sqrt()
    assert abs(mean["count"] - mean["bernoulli"]) < 4 * stderr
    assert draws["count"].var() < draws["bernoulli"].var() / 4
    with pytest.raises(ValueError, match="masking must be 'count' or 'bernoulli'"):
        mask_answers(batch, torch.Generator(), masking="uniform")


def test_a_short_training_run_lowers_the_loss():
    losses = train(TrainConfig(steps=80, seed=1, **TINY), progress=False).losses
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5


def test_training_is_reproducible_from_the_seed():
    cfg = TrainConfig(steps=5, seed=2, **TINY)
    first, again = train(cfg, progress=False), train(cfg, progress=False)
    assert first.losses == again.losses
    assert all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values()))


def test_training_mode_attention_equals_the_inference_attention():
    # training computes attention explicitly (faster backward on CPU); it must be the same function as SDPA
    torch.manual_seed(0)
    cfg = TrainConfig(**TINY)
    from dlm.tools.train.loop import build_model

    net = build_model(cfg).double()
    batch = make_batch(TASKS["rev"].examples(6) + TASKS["add"].examples(6))
    with torch.no_grad():
        trained_path = net.train()(batch.ids, batch.positions, batch.key_mask)
        inference_path = net.eval()(batch.ids, batch.positions, batch.key_mask)
    assert torch.allclose(trained_path, inference_path, atol=1e-12)


def test_a_failing_compile_falls_back_to_eager_training_with_the_same_result(monkeypatch):
    import dlm.tools.train.loop as loop

    def broken(net):
        def forward(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        return forward

    eager = train(TrainConfig(steps=3, seed=4, **TINY), progress=False)
    monkeypatch.setattr(loop, "_compiled", broken)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        fallback = train(TrainConfig(steps=3, seed=4, **{**TINY, "compile": True}), progress=False)
    assert fallback.losses == eager.losses


def test_compiled_training_follows_eager_training():
    cfg = dict(TINY, n_layers=1)
    eager = train(TrainConfig(steps=4, seed=5, **cfg), progress=False)
    compiled = train(TrainConfig(steps=4, seed=5, **{**cfg, "compile": True}), progress=False)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)


def test_compiled_training_is_reproducible_and_restores_torch_settings():
    # inductor's embedding backward uses parallel atomic adds unless deterministic mode is on
    cfg = TrainConfig(steps=30, seed=6, **{**TINY, "compile": True})
    first, second = train(cfg, progress=False), train(cfg, progress=False)
    assert first.losses == second.losses
    assert all(torch.equal(a, b) for a, b in zip(first.net.parameters(), second.net.parameters()))
    assert not torch.are_deterministic_algorithms_enabled()


def test_saved_checkpoint_loads_through_the_llada_loader_with_the_same_logits(tmp_path):
    net = train(TrainConfig(steps=2, **TINY), progress=False).net
    save_llada_checkpoint(net, tmp_path, dtype=torch.float32)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["mask_token_id"] == MASK_ID and cfg["eos_token_id"] == EOS_ID and cfg["d_model"] == 32
    model = LLaDAModel.load(LLaDAConfig(path=tmp_path), dtype=torch.float32, device=torch.device("cpu"))
    batch = make_batch(TASKS["sort"].examples(4))
    with torch.no_grad():
        want = net(batch.ids, batch.positions, batch.key_mask)
    assert torch.allclose(model.net(batch.ids, batch.positions, batch.key_mask), want, atol=1e-5)
    assert model.capabilities.mask_id == MASK_ID and model.capabilities.eos_ids[0] == EOS_ID


def test_training_can_continue_from_a_saved_checkpoint(tmp_path):
    from dlm.tools.train.loop import build_model

    net = train(TrainConfig(steps=2, **TINY), progress=False).net
    save_llada_checkpoint(net, tmp_path, dtype=torch.float32)
    resumed = build_model(TrainConfig(init=str(tmp_path), **TINY))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), resumed.state_dict().values()))
    assert all(p.requires_grad for p in resumed.parameters())


def test_train_demo_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["train-demo", "--out", str(out), "--steps", "3", "--dim", "32", "--layers", "1", "--heads", "2",
            "--ffn", "32", "--batch-size", "8", "--no-compile", "--quiet"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["steps"] == 3
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    pipe = Pipeline.from_config({
        "model": {"name": "llada", "path": str(out)},
        "iteration": {"name": "blockwise", "gen_length": 8, "block_length": 8, "steps": 8},
        "decoding": {"name": "low_confidence"},
    })
    assert len(pipe.generate(["1+2="]).texts) == 1


def test_shipped_checkpoint_is_small_and_loads_through_the_normal_loader():
    directory = embedded_demo_path()
    assert sum(p.stat().st_size for p in directory.iterdir()) < 5_000_000
    model = LLaDAModel.load(LLaDAConfig(), dtype=torch.float32, device=torch.device("cpu"))
    assert model.capabilities.mask_id == MASK_ID and model.tokenizer is not None


def test_train_demo_defaults_are_the_recipe_of_the_shipped_checkpoint():
    # `dlm train-demo --out DIR` with no options must retrain the checkpoint the package ships
    shipped = json.loads((embedded_demo_path() / "config.json").read_text())["dlm_demo"]
    assert shipped["recipe"] == recipe_of(TrainConfig())
    assert shipped["steps_done"] == TrainConfig().steps


def test_generate_runs_the_shipped_model_with_the_default_pipeline(capsys):
    assert main(["generate", "123+456="]) == 0
    assert capsys.readouterr().out.strip().isdigit()


def test_shipped_model_adds_with_the_default_pipeline(capsys):
    assert main(["generate", "123+456="]) == 0
    assert capsys.readouterr().out.strip() == "579"
    prompts = ["7+5=", "99+1=", "250+750=", "314+159=", "808+92=", "1+999="]
    from dlm.config import default_config_path

    out = Pipeline.from_yaml(default_config_path()).generate(prompts)
    assert out.texts == [str(sum(int(x) for x in p[:-1].split("+"))) for p in prompts]
