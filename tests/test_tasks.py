"""Synthetic tasks: seeded generators, held-out split, and scorers that accept every valid answer only."""

from __future__ import annotations

import pytest

from dlm.tools.tasks import ANSWER_LENGTH, MAX_PROMPT_LENGTH, TASKS, get_task, held_out, task_for_prompt


@pytest.mark.parametrize("name", list(TASKS))
def test_examples_are_reproducible_from_the_seed(name):
    task = TASKS[name]
    assert task.examples(20, seed=3) == task.examples(20, seed=3)
    assert task.examples(20, seed=3) != task.examples(20, seed=4)


@pytest.mark.parametrize("name", list(TASKS))
def test_reference_answers_are_accepted_and_fit_the_canvas(name):
    task = TASKS[name]
    for ex in task.examples(300, split="train") + task.examples(300, split="eval"):
        assert task.score(ex.prompt, ex.answer), ex
        assert len(ex.prompt) <= MAX_PROMPT_LENGTH and len(ex.answer) <= ANSWER_LENGTH


@pytest.mark.parametrize("name", [n for n, t in TASKS.items() if t.split_by_prompt])
def test_eval_prompts_are_disjoint_from_training_prompts(name):
    task = TASKS[name]
    train = {ex.prompt for ex in task.examples(2000, split="train")}
    evals = {ex.prompt for ex in task.examples(200, split="eval")}
    assert not train & evals
    assert all(held_out(p) for p in evals) and not any(held_out(p) for p in train)


def test_training_oversamples_four_digit_sums_and_keeps_the_eval_distribution():
    add = get_task("add")
    share = lambda exs: sum(len(ex.answer) == 4 for ex in exs) / len(exs)  # noqa: E731
    evals, train = add.examples(3000, split="eval"), add.examples(3000, split="train")
    assert share(evals) < 0.1 < 0.2 < share(train)
    assert {len(ex.answer) for ex in train} == {1, 2, 3, 4}  # short sums are still trained


def test_addition_scores_the_exact_sum_only():
    add = get_task("add")
    assert add.score("123+456=", "579")
    for wrong in ("578", "0579", "579 ", "", "5 79"):
        assert not add.score("123+456=", wrong)


def test_reverse_and_sort_reject_near_misses():
    assert get_task("rev").score("rev:abc=", "cba")
    assert not get_task("rev").score("rev:abc=", "abc")
    assert not get_task("rev").score("rev:abc=", "cb")
    assert get_task("sort").score("sort:3141=", "1134")
    assert not get_task("sort").score("sort:3141=", "1143")
    assert not get_task("sort").score("sort:3141=", "134")


def test_pair_sum_accepts_every_valid_pair():
    pair = get_task("pair")
    assert all(pair.score("pair:57=", f"{x:02d}+{57 - x:02d}") for x in range(58))
    assert pair.score("pair:57=", "7+50")  # leading zeros are optional
    assert pair.score("pair:198=", "99+99") and pair.score("pair:0=", "00+00")


@pytest.mark.parametrize("answer", ["23+35", "23+33", "2334", "23+3a", "+57", "57+", "100+-43", "057+00", ""])
def test_pair_sum_rejects_invalid_answers(answer):
    assert not get_task("pair").score("pair:57=", answer)


def test_permutation_accepts_every_ordering_and_rejects_repeats():
    perm = get_task("perm")
    assert all(perm.score("perm:abc=", s) for s in ("abc", "acb", "bac", "bca", "cab", "cba"))
    for wrong in ("aab", "ab", "abcd", "abd", ""):
        assert not perm.score("perm:abc=", wrong)


def test_many_answer_tasks_sample_different_answers_for_one_prompt():
    answers = {ex.answer for ex in TASKS["pair"].examples(3000, split="train") if ex.prompt == "pair:100="}
    assert len(answers) > 1
    perms = TASKS["perm"].examples(500, split="train")
    copies = sum(ex.answer == ex.prompt[5:-1] for ex in perms)
    assert copies < 0.4 * len(perms)  # the training answer is a random ordering, not a copy


def test_prompts_are_routed_to_their_task():
    assert task_for_prompt("123+456=").name == "add"
    assert task_for_prompt("pair:57=").name == "pair"
    assert task_for_prompt("perm:abc=").name == "perm"
    assert task_for_prompt("hello") is None
    with pytest.raises(KeyError, match="known tasks"):
        get_task("mul")
