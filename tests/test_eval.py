"""``dlm eval``: policies side by side on held-out task prompts, with JSON, markdown and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path


from dlm.cli import main
from dlm.tools.evaluation import TaskResult, builtin_policies, load_policies, markdown_table, suite_summary

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "demo"


def test_eval_end_to_end_on_the_shipped_model(tmp_path, capsys):
    configs = [str(EXAMPLES / "one_per_step.yaml"), str(EXAMPLES / "top4_per_step.yaml")]
    argv = ["eval", *configs, "--tasks", "add,pair", "-n", "12", "--batch-size", "6", "--out", str(tmp_path),
            "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| add (deterministic) | one_per_step |" in printed and "top4_per_step" in printed
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["task"], r["policy"]): r for r in report["results"]}
    assert set(rows) == {(t, p) for t in ("add", "pair") for p in ("one_per_step", "top4_per_step")}
    assert rows["add", "one_per_step"]["mean_nfe"] == 8 and rows["add", "top4_per_step"]["mean_nfe"] == 2
    assert all(0 <= r["correct"] <= r["n"] == 12 for r in rows.values())
    assert rows["add", "top4_per_step"]["tokens_per_forward"] == 4
    assert (tmp_path / "results.md").read_text().startswith("| task |")
    assert (tmp_path / "accuracy_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_builtin_policies_compare_one_token_per_step_with_parallel_ones():
    names = [p.name for p in builtin_policies()]
    assert names[0] == "one-per-step" and "top4-per-step" in names
    assert all(p.config.model.config.path is None for p in builtin_policies())


def test_every_example_config_is_a_valid_pipeline():
    policies = load_policies(sorted(EXAMPLES.glob("*.yaml")))
    assert {p.name for p in policies} >= {"one_per_step", "top4_per_step", "top2_per_step"}


def test_summary_reports_forward_reduction_against_the_first_policy():
    rows = [
        TaskResult("add", "deterministic", "slow", 10, 10, 100.0, 8.0, 1.0, 1.0),
        TaskResult("add", "deterministic", "fast", 10, 9, 90.0, 2.0, 4.0, 0.3),
    ]
    summary = suite_summary(rows)
    assert [s["forward_reduction"] for s in summary] == [1.0, 4.0]
    assert "| fast | 90.0 | 2.00 | 4.00x |" in markdown_table(rows)


def test_unknown_task_is_refused_with_the_known_names(capsys):
    assert main(["eval", "--tasks", "mul", "--quiet"]) == 2
    assert "known tasks: add" in capsys.readouterr().err
