"""Resumable training (dlm/tools/train/resume.py): a run continued from its saved state ends with the weights
of an uninterrupted run; a state of another recipe is refused; a finished run leaves no state behind."""

from __future__ import annotations

import json

import pytest
import torch

from dlm.cli import main
from dlm.tools.train.loop import FewshotTrainConfig, train
from dlm.tools.train.resume import STATE_DIR, has_state

TINY = dict(dim=32, n_layers=1, n_heads=2, ffn_dim=32, batch_size=4, steps=4, warmup=1, compile=False, threads=1)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = FewshotTrainConfig(**TINY)
    whole = train(cfg, progress=False)
    first = train(cfg, progress=False, state_dir=tmp_path, save_every=2)  # state kept after step 2
    assert has_state(tmp_path) and json.loads((tmp_path / STATE_DIR / "state.json").read_text())["step"] == 2
    resumed = train(cfg, progress=False, state_dir=tmp_path, resume=True)
    assert resumed.steps == 4 and resumed.losses[:2] == first.losses[:2]
    assert resumed.losses == whole.losses
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_state_of_another_recipe_is_refused(tmp_path):
    train(FewshotTrainConfig(**TINY), progress=False, state_dir=tmp_path, save_every=2)
    with pytest.raises(ValueError, match="another recipe.*lr"):
        train(FewshotTrainConfig(**{**TINY, "lr": 5e-4}), progress=False, state_dir=tmp_path, resume=True)


def test_train_demo_resume_finishes_the_run_and_removes_its_state(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["train-demo", "--tasks", "fewshot", "--out", str(out), "--steps", "3", "--dim", "32", "--layers", "1",
            "--heads", "2", "--ffn", "32", "--batch-size", "4", "--no-compile", "--quiet", "--threads", "1"]
    assert main(argv + ["--minutes", "1e-9"]) == 0  # stops after its first step, state saved
    assert "--resume continues it" in capsys.readouterr().out and has_state(out)
    assert main(argv + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["steps"] == 3
    assert not has_state(out) and (out / "model.safetensors").is_file()


def test_a_context_shorter_than_a_training_row_is_refused():
    with pytest.raises(ValueError, match="max_length 256 is shorter than a training row"):
        FewshotTrainConfig(max_length=256)
