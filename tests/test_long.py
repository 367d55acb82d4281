"""The long-answer testbed: tasks whose answers span several blocks, their group, the shipped long model,
its training recipe and the six cache x decoding pipelines of examples/long/ (docs/long.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlm.cli import main
from dlm.config import load_config
from dlm.errors import CheckpointError
from dlm.models.llada import LLaDAConfig, LLaDAModel, embedded_path
from dlm.pipeline import Pipeline
from dlm.tools.evaluation import LONG_OVERRIDES, load_policies, long_config_path, long_policies
from dlm.tools.tasks import (
    GROUPS, LONG_ANSWER_LENGTH, LONG_PROMPT_LENGTH, LONG_TASKS, TASKS, get_task, held_out, select_tasks,
)
from dlm.tools.tasks.long import addition_working
from dlm.tools.train.data import make_batch
from dlm.tools.train.loop import LongTrainConfig, recipe_of
from dlm.tools.train.objective import mask_answers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "long"
BLOCK = 16


@pytest.mark.parametrize("name", list(LONG_TASKS))
def test_long_answers_span_at_least_four_blocks_and_fit_the_canvas(name):
    task = LONG_TASKS[name]
    for ex in task.examples(200, split="train") + task.examples(200, split="eval"):
        assert task.score(ex.prompt, ex.answer), ex
        assert 4 * BLOCK <= len(ex.answer) <= LONG_ANSWER_LENGTH and len(ex.prompt) <= LONG_PROMPT_LENGTH


@pytest.mark.parametrize("name", list(LONG_TASKS))
def test_long_eval_prompts_are_disjoint_from_training_prompts(name):
    task = LONG_TASKS[name]
    train = {ex.prompt for ex in task.examples(2000, split="train")}
    evals = {ex.prompt for ex in task.examples(200, split="eval")}
    assert not train & evals
    assert all(held_out(p) for p in evals) and not any(held_out(p) for p in train)


def test_addition_working_writes_every_column_with_its_carry_then_the_sum():
    assert addition_working(1999999, 1000001) == (
        "9+1+0=10;9+0+1=10;9+0+1=10;9+0+1=10;9+0+1=10;9+0+1=10;1+1+1=03;3000000"
    )
    assert addition_working(9999999, 9999999).endswith("9+9+1=19;19999998")


def test_long_addition_accepts_the_exact_working_only():
    addw = get_task("addw")
    prompt, answer = "1234567+7654321=", addition_working(1234567, 7654321)
    assert addw.score(prompt, answer)
    wrong_carry = answer.replace("7+1+0=08", "7+1+1=09", 1)
    for wrong in (answer[:-1], answer + "8", answer.replace(";", ",", 1), wrong_carry, "8888888"):
        assert not addw.score(prompt, wrong), wrong
    assert not addw.score("123+456=", addition_working(123, 456))  # not a 7-digit prompt


def test_shift_accepts_the_shifted_copy_only():
    shift = get_task("shift")
    s = "abcxyz" * 10 + "mnoz"
    want = "bcdyza" * 10 + "nopa"
    assert shift.score(f"shift:{s}=", want)
    assert not shift.score(f"shift:{s}=", s)
    assert not shift.score(f"shift:{s}=", want[:-1])
    assert not shift.score("shift:abc=", "bcd")  # the task copies exactly 64 letters


def test_long_group_selects_the_long_tasks_and_leaves_the_demo_group_alone():
    assert select_tasks(["long"]) == list(LONG_TASKS) == ["addw", "shift"]
    assert select_tasks(["long", "addw", "add"]) == ["addw", "shift", "add"]
    assert GROUPS["demo"] == tuple(TASKS) and not set(TASKS) & set(LONG_TASKS)
    with pytest.raises(KeyError, match="groups: demo, long"):
        select_tasks(["longer"])


def test_semi_autoregressive_rows_have_clean_earlier_blocks_and_a_masked_suffix():
    tasks = LONG_TASKS["addw"].examples(16) + LONG_TASKS["shift"].examples(16)
    batch = make_batch(tasks, prompt_length=LONG_PROMPT_LENGTH, answer_length=LONG_ANSWER_LENGTH)
    _, masked, rate = mask_answers(batch, torch.Generator().manual_seed(0), semi_ar=0.5, block_length=BLOCK)
    for row in masked[1::2].tolist():  # every other row is semi-autoregressive
        first = row.index(True)
        block_end = (first // BLOCK + 1) * BLOCK
        assert not any(row[:first]) and all(row[block_end:])  # clean before its block, masked after it
    assert torch.equal(rate, masked.sum(dim=1) / LONG_ANSWER_LENGTH)  # weight A / masked count


def test_no_semi_autoregressive_share_leaves_the_demo_masking_unchanged():
    batch = make_batch(TASKS["rev"].examples(16))
    plain = mask_answers(batch, torch.Generator().manual_seed(5))
    zero = mask_answers(batch, torch.Generator().manual_seed(5), semi_ar=0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))


def test_train_demo_long_writes_a_long_checkpoint(tmp_path, capsys):
    out = tmp_path / "long"
    argv = ["train-demo", "--tasks", "long", "--out", str(out), "--steps", "2", "--dim", "32", "--layers", "1",
            "--heads", "2", "--ffn", "32", "--batch-size", "4", "--no-compile", "--quiet"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["tasks"] == "long"
    record = json.loads((out / "config.json").read_text())["dlm_demo"]
    assert record["group"] == "long" and record["answer_length"] == LONG_ANSWER_LENGTH
    assert record["recipe"]["semi_ar"] == LongTrainConfig().semi_ar and record["recipe"]["dim"] == 32
    pipe = Pipeline.from_config({
        "model": {"name": "llada", "path": str(out)},
        "iteration": {"name": "blockwise", "gen_length": 80, "block_length": 16, "steps": 80},
        "decoding": {"name": "low_confidence"}, "cache": {"name": "dual"},
    })
    assert len(pipe.generate(["1234567+7654321="]).texts) == 1


def test_shipped_long_model_is_small_and_records_its_last_stage_recipe():
    # shipped = the default command (stage 1), continued twice with --init (docs/long.md: stages 2 and 3);
    # the last stage: --steps 4000 --warmup 50 --seed 2
    directory = embedded_path("long")
    assert sum(p.stat().st_size for p in directory.iterdir()) < 5_000_000
    record = json.loads((directory / "config.json").read_text())["dlm_demo"]
    stage3 = recipe_of(LongTrainConfig(steps=4000, warmup=50, seed=2))
    assert {k: v for k, v in record["recipe"].items() if k != "init"} == {k: v for k, v in stage3.items() if k != "init"}
    assert record["group"] == "long" and record["answer_length"] == LONG_ANSWER_LENGTH


def test_shipped_long_model_answers_long_prompts_exactly_one_token_per_step():
    pipe = Pipeline.from_yaml(long_config_path())
    examples = LONG_TASKS["addw"].examples(2, seed=7, split="eval") + LONG_TASKS["shift"].examples(2, seed=7, split="eval")
    out = pipe.generate([ex.prompt for ex in examples])
    assert out.nfe == [LONG_ANSWER_LENGTH] * 4  # one token per step
    assert out.texts == [ex.answer for ex in examples]


def test_a_missing_embedded_model_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr("dlm.models.llada.embedded_path", lambda name: tmp_path / name)
    with pytest.raises(CheckpointError, match="embedded long model is not installed"):
        LLaDAModel.load(LLaDAConfig(embedded="long"), dtype=torch.float32, device=torch.device("cpu"))


def test_examples_long_are_the_six_builtin_pipelines():
    files = {p.name: p.config.to_dict() for p in load_policies(sorted(EXAMPLES.glob("*.yaml")))}
    builtin = {p.name: p.config.to_dict() for p in long_policies()}
    assert list(builtin) == list(LONG_OVERRIDES) and builtin["none"]["cache"]["name"] == "none"
    assert files == builtin
    assert {(c["cache"]["name"], c["decoding"]["name"]) for c in files.values()} == {
        (cache, dec) for cache in ("none", "prefix", "dual") for dec in ("low_confidence", "threshold")
    }
    for config in files.values():
        assert config["model"]["embedded"] == "long" and config["iteration"]["steps"] == 80


def test_long_config_validates_from_the_command_line(capsys):
    assert main(["validate", str(EXAMPLES / "dual_threshold.yaml")]) == 0
    assert "dual" in capsys.readouterr().out


def test_eval_long_group_compares_the_six_pipelines_with_speedups(tmp_path, capsys):
    argv = ["eval", "--tasks", "long", "-n", "2", "--batch-size", "2", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    assert "speed-up vs first policy" in capsys.readouterr().out
    report = json.loads((tmp_path / "results.json").read_text())
    assert {(r["task"], r["policy"]) for r in report["results"]} == {
        (t, p) for t in LONG_TASKS for p in LONG_OVERRIDES
    }
    assert all(r["speedup"] == 1.0 for r in report["results"] if r["policy"] == "none")
    assert [s["policy"] for s in report["summary"]][0] == "none"
    assert (tmp_path / "accuracy_vs_speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_refuses_builtin_policies_over_both_groups(capsys):
    assert main(["eval", "--tasks", "add,long", "--quiet"]) == 2  # a DlmError exits 2
    assert "evaluate the groups separately" in capsys.readouterr().err


def test_long_base_config_is_the_baseline_of_the_examples():
    assert load_config(long_config_path()).to_dict() == load_config(EXAMPLES / "none.yaml").to_dict()


def test_token_agreement_gives_partial_credit_in_place_only():
    from dlm.tools.evaluation import token_agreement

    assert token_agreement("abcd", "abcd") == (4, 4)
    assert token_agreement("abxd", "abcd") == (3, 4)
    assert token_agreement("bcd", "abcd") == (0, 4)  # shifted by one: nothing in place
    assert token_agreement("", "") == (0, 1)
