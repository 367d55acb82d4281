"""The few-shot testbed: worked examples then a question whose answer spans four blocks of 32, its group, the
recipe of the few-shot model, the Table 1 grid of examples/fewshot/ and its report (docs/fewshot.md)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from dlm.cli import main
from dlm.config import load_config
from dlm.errors import CheckpointError
from dlm.models.llada import LLaDAConfig, LLaDAModel
from dlm.pipeline import Pipeline
from dlm.tools.evaluation import (
    FEWSHOT_OVERRIDES, TaskResult, fewshot_config_path, fewshot_policies, load_policies, table1, wilson,
)
from dlm.tools.tasks import (
    FEWSHOT_ANSWER_LENGTH, FEWSHOT_PROMPT_LENGTH, FEWSHOT_TASKS, GROUPS, LONG_TASKS, TASKS, held_out, select_tasks,
)
from dlm.tools.tasks.fewshot import BASE, QUESTION_DIGITS, SHOTS, question_of, running_sums, worked
from dlm.tools.train.data import encode, make_batch
from dlm.tools.train.loop import FewshotTrainConfig, recipe_of
from dlm.tools.train.objective import mask_answers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fewshot"
BLOCK = 32
RUNSUM = FEWSHOT_TASKS["runsum"]


def test_running_sums_write_each_digit_then_the_running_total_mod_the_base():
    assert BASE == 2  # the shipped task is a running parity
    assert running_sums("1101") == "11100011"
    assert running_sums("0") == "00" and running_sums("11") == "1110"
    assert worked("1101") == "1+1+0+1=11100011"
    assert running_sums("7294", base=10) == "77299842" and worked("7294", base=10) == "7+2+9+4=77299842"


def test_questions_and_worked_examples_are_binary():
    for ex in RUNSUM.examples(50, split="train"):
        assert set(ex.prompt) <= set("01+=\n") and set(ex.answer) <= set("01")


@pytest.mark.parametrize("split", ["train", "eval"])
def test_generator_is_deterministic_per_seed(split):
    assert RUNSUM.examples(20, seed=3, split=split) == RUNSUM.examples(20, seed=3, split=split)
    assert RUNSUM.examples(20, seed=3, split=split) != RUNSUM.examples(20, seed=4, split=split)


def test_prompts_are_worked_examples_then_a_question_and_answers_span_four_blocks():
    for ex in RUNSUM.examples(300, split="train") + RUNSUM.examples(100, split="eval"):
        *shots, question = ex.prompt.split("\n")
        assert SHOTS[0] <= len(shots) <= SHOTS[1]
        assert all(worked(line.split("=")[0].replace("+", "")) == line for line in shots)  # each a worked example
        assert question_of(ex.prompt) == question and len(question) == 2 * QUESTION_DIGITS
        assert len(ex.answer) == FEWSHOT_ANSWER_LENGTH == 4 * BLOCK  # fills all four blocks
        assert 256 <= len(ex.prompt) + len(ex.answer) <= 512 and len(ex.prompt) <= FEWSHOT_PROMPT_LENGTH
        assert RUNSUM.score(ex.prompt, ex.answer)
        encode(ex.prompt + ex.answer)  # every character is in the demo vocabulary


def test_eval_questions_are_disjoint_from_training_questions():
    train = {question_of(ex.prompt) for ex in RUNSUM.examples(1000, split="train")}
    evals = {question_of(ex.prompt) for ex in RUNSUM.examples(100, split="eval")}
    assert not train & evals
    assert all(held_out(q) for q in evals) and not any(held_out(q) for q in train)
    # the split follows the question, whatever worked examples precede it
    shots = "1+1=1110\n0+1+1+1=00111011\n"
    assert all(RUNSUM.split_key(shots + q) == q for q in list(evals)[:5])


def test_the_scorer_accepts_exactly_the_right_answer():
    ex = RUNSUM.examples(1, seed=11, split="eval")[0]
    assert RUNSUM.score(ex.prompt, ex.answer)
    rng = random.Random(0)
    for i in range(2 * QUESTION_DIGITS):  # any one digit (a copied digit or a total) changed is wrong
        for digit in "0123456789":
            if digit != ex.answer[i]:
                assert not RUNSUM.score(ex.prompt, ex.answer[:i] + digit + ex.answer[i + 1 :])
    totals_only, swapped = ex.answer[1::2], ex.answer[1:] + ex.answer[0]
    for wrong in (ex.answer[:-1], ex.answer + "0", totals_only, swapped, ",".join(ex.answer), " " + ex.answer, ""):
        assert not RUNSUM.score(ex.prompt, wrong), wrong
    short = "1+1=1110\n1+0+1="
    assert not RUNSUM.score(short, "111010")  # the question has 64 digits
    *shots, question = ex.prompt.split("\n")
    assert not RUNSUM.score("1+1=1111\n" + question, ex.answer)  # a wrong worked example: not a prompt of the task
    assert not RUNSUM.score("1+1=1,1\n" + question, ex.answer)  # nor a malformed one
    assert not RUNSUM.score("7+2=7792\n" + question, ex.answer)  # nor one of another base
    assert not RUNSUM.score("7+2=7121\n" + question, ex.answer)  # even with its totals taken mod 2
    assert not RUNSUM.score(question.replace("1", "3", 1), ex.answer)  # a question with a digit that is not binary
    assert RUNSUM.score(question, ex.answer)  # zero-shot: the answer depends on the question only


def test_fewshot_group_selects_its_task_and_leaves_the_other_groups_alone():
    assert select_tasks(["fewshot"]) == list(FEWSHOT_TASKS) == ["runsum"]
    assert GROUPS["demo"] == tuple(TASKS) and GROUPS["long"] == tuple(LONG_TASKS)
    assert not set(FEWSHOT_TASKS) & (set(TASKS) | set(LONG_TASKS))
    with pytest.raises(KeyError, match="groups: demo, long, fewshot"):
        select_tasks(["few"])


def test_fewshot_recipe_masks_three_rows_in_four_semi_autoregressively_in_blocks_of_8():
    cfg = FewshotTrainConfig()
    assert cfg.lengths() == {"prompt_length": FEWSHOT_PROMPT_LENGTH, "answer_length": FEWSHOT_ANSWER_LENGTH}
    assert cfg.max_length >= FEWSHOT_PROMPT_LENGTH + FEWSHOT_ANSWER_LENGTH
    batch = make_batch(RUNSUM.examples(8), **cfg.lengths())
    _, masked, _ = mask_answers(batch, torch.Generator().manual_seed(0), **cfg.loss_options())
    semi = [row for i, row in enumerate(masked.tolist()) if i % 4 != 0]  # rows 1, 2, 3 of every 4
    for row in semi:  # earlier blocks of 8 clean, one block partly masked, every later column masked
        first = row.index(True)
        assert not any(row[:first]) and all(row[(first // cfg.block_length + 1) * cfg.block_length :])
    assert cfg.block_length == 8 and cfg.semi_ar == 0.75


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A two-step few-shot checkpoint of a tiny model (the recipe's code path, not its quality)."""
    out = tmp_path_factory.mktemp("fewshot") / "model"
    argv = ["train-demo", "--tasks", "fewshot", "--out", str(out), "--steps", "2", "--dim", "32", "--layers", "1",
            "--heads", "2", "--ffn", "32", "--batch-size", "4", "--no-compile", "--quiet"]
    assert main(argv) == 0
    return out


def test_train_demo_fewshot_writes_a_fewshot_checkpoint(tiny):
    record = json.loads((tiny / "config.json").read_text())["dlm_demo"]
    assert record["group"] == "fewshot" and record["answer_length"] == FEWSHOT_ANSWER_LENGTH
    assert record["prompt_length"] == FEWSHOT_PROMPT_LENGTH
    want = recipe_of(FewshotTrainConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=32, steps=2, batch_size=4, warmup=2))
    assert record["recipe"] == want


def test_eval_fewshot_runs_the_table1_grid(tiny, tmp_path, capsys):
    argv = ["eval", "--tasks", "fewshot", "-n", "1", "--batch-size", "1", "--out", str(tmp_path), "--quiet",
            "--set", f"model.path={tiny}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "speed-up vs first policy" in out and "tok/s" in out and "| task | none | prefix |" in out
    report = json.loads((tmp_path / "results.json").read_text())
    assert [r["policy"] for r in report["results"]] == list(FEWSHOT_OVERRIDES)
    assert all(r["speedup"] == 1.0 for r in report["results"] if r["policy"] == "none")
    assert all(r["tokens_per_second"] > 0 and len(r["interval"]) == 2 for r in report["results"])
    nfe = {r["policy"]: r["mean_nfe"] for r in report["results"]}
    assert nfe["none"] == nfe["prefix"] == nfe["dual"] == FEWSHOT_ANSWER_LENGTH  # one token per step


def test_examples_fewshot_are_the_builtin_grid():
    files = {p.name: p.config.to_dict() for p in load_policies(sorted(EXAMPLES.glob("*.yaml")))}
    builtin = {p.name: p.config.to_dict() for p in fewshot_policies()}
    assert list(builtin) == list(FEWSHOT_OVERRIDES) and list(builtin)[0] == "none"
    assert files == builtin
    assert {(c["cache"]["name"], c["decoding"]["name"]) for c in files.values()} == {
        (cache, dec) for cache in ("none", "prefix", "dual") for dec in ("low_confidence", "threshold")
    } | {("dual", "factor")}
    for config in files.values():
        assert config["model"]["embedded"] == "fewshot"
        assert (config["iteration"]["gen_length"], config["iteration"]["block_length"]) == (128, BLOCK)
    assert load_config(fewshot_config_path()).to_dict() == files["none"]


def test_eval_refuses_builtin_policies_over_two_models(capsys):
    assert main(["eval", "--tasks", "runsum,long", "--quiet"]) == 2
    assert "evaluate the groups separately" in capsys.readouterr().err


def test_table1_layout_gives_accuracy_with_its_interval_throughput_and_speedup():
    rows = [
        TaskResult("runsum", "deterministic", "none", 500, 490, 98.0, 128.0, 1.0, 100.0),
        TaskResult("runsum", "deterministic", "dual_threshold", 500, 488, 97.6, 40.0, 3.2, 10.0),
    ]
    text = table1(rows)
    lo, hi = wilson(490, 500)
    assert lo < 98.0 < hi and hi - lo < 3.0
    assert "| task | none | dual_threshold |" in text and "runsum (n = 500)" in text
    assert f"98.0 [{lo:.1f}, {hi:.1f}]" in text
    assert "640.0 tok/s (1.00x)" in text and "6400.0 tok/s (10.00x)" in text
    assert wilson(0, 0) == (0.0, 100.0) and wilson(10, 10)[1] == 100.0


def test_a_missing_fewshot_model_is_named_with_the_command_that_trains_it(monkeypatch, tmp_path):
    monkeypatch.setattr("dlm.models.llada.embedded_path", lambda name: tmp_path / name)
    with pytest.raises(CheckpointError, match="dlm train-demo --tasks fewshot"):
        LLaDAModel.load(LLaDAConfig(embedded="fewshot"), dtype=torch.float32, device=torch.device("cpu"))


def test_shipped_fewshot_model_answers_held_out_prompts_exactly_one_token_per_step():
    pipe = Pipeline.from_yaml(fewshot_config_path())
    examples = RUNSUM.examples(4, seed=7, split="eval")
    out = pipe.generate([ex.prompt for ex in examples])
    assert out.nfe == [FEWSHOT_ANSWER_LENGTH] * 4
    assert out.texts == [ex.answer for ex in examples]
