"""Datasets and scorer of the demo testbed's tasks as lm-eval tasks (``dlm_add``, ``dlm_rev`` ...).

Each task draws the same held-out prompts as ``dlm eval`` (:meth:`dlm.tools.tasks.Task.examples`, split
``eval``), so ``--limit n`` scores exactly the prompts of ``dlm eval -n n``, and scores answers with the
task's own scorer (every valid answer accepted). ``num_prompts`` and ``prompt_seed`` come from the task's
metadata (``--metadata '{"num_prompts": 200}'`` changes them).
"""

from __future__ import annotations

import random

from datasets import Dataset

from dlm.tools.tasks import TASKS


def _rows(task: str, num_prompts: int, prompt_seed: int) -> list[dict]:
    examples = TASKS[task].examples(int(num_prompts), seed=int(prompt_seed), split="eval")
    return [{"task": ex.task, "prompt": ex.prompt, "answer": ex.answer} for ex in examples]


def _loader(task: str):
    def load(num_prompts: int = 1000, prompt_seed: int = 0, **_metadata) -> dict[str, Dataset]:
        return {"test": Dataset.from_list(_rows(task, num_prompts, prompt_seed))}

    load.__name__ = f"load_{task}"
    load.__doc__ = f"The held-out prompts of the demo task {task!r} (``_metadata``: lm-eval's other keys)."
    return load


load_add, load_rev, load_sort, load_pair, load_perm = (_loader(t) for t in ("add", "rev", "sort", "pair", "perm"))


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """``acc``: 1.0 when the task's scorer accepts the answer."""
    return {"acc": float(TASKS[doc["task"]].score(doc["prompt"], results[0]))}


def load_add_choice(num_prompts: int = 1000, prompt_seed: int = 0, **_metadata) -> dict[str, Dataset]:
    """Addition as a 4-way multiple choice: the sum and three near misses, shuffled by the prompt."""
    rows = []
    for row in _rows("add", num_prompts, prompt_seed):
        s = int(row["answer"])
        choices = [str(s), str(s + 1), str(s + 10), str(s - 1 if s > 0 else s + 100)]
        random.Random(row["prompt"]).shuffle(choices)
        rows.append({**row, "choices": choices, "label": choices.index(str(s))})
    return {"test": Dataset.from_list(rows)}
