"""Arithmetic tasks: multi-digit addition (one answer) and pair-sum (many answers)."""

from __future__ import annotations

import random
import re

from dlm.tools.tasks.base import Example, Task, body, operand

NUMBER = re.compile(r"[0-9]+")


class Addition(Task):
    """``123+456=`` -> ``579``: operands of 1-3 digits, the sum in decimal without leading zeros."""

    name = "add"
    kind = "deterministic"
    description = "a+b= with 1-3 digit operands; answer the sum"

    def sample(self, rng: random.Random) -> Example:
        a, b = operand(rng, 3), operand(rng, 3)
        return Example(self.name, f"{a}+{b}=", str(a + b))

    def sample_for_training(self, rng: random.Random) -> Example:
        """Half the time two 3-digit operands: four-digit sums are ~6 % of :meth:`sample`'s prompts and were
        the demo model's main errors (the column alignment shifts by one); oversampling them fixes that."""
        if rng.random() < 0.5:
            return self.sample(rng)
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return Example(self.name, f"{a}+{b}=", str(a + b))

    def score(self, prompt: str, answer: str) -> bool:
        parts = (body(prompt, "") or "").split("+")
        if len(parts) != 2 or not all(NUMBER.fullmatch(p) for p in parts):
            return False
        return answer == str(int(parts[0]) + int(parts[1]))


class PairSum(Task):
    """``pair:57=`` -> any ``x+y`` with x + y = 57 (trained on zero-padded ``xx+yy``, x uniform).

    Every valid pair is accepted. Committing the digits of x and y in the same step draws them from
    independent marginals, so parallel decoding often produces pairs that do not add up.
    """

    name = "pair"
    kind = "many"
    description = "pair:S= with S in 0..198; answer any x+y (0<=x,y<=99) that sums to S"
    split_by_prompt = False  # only 199 prompts: split by random stream, every S is trained

    def sample(self, rng: random.Random) -> Example:
        s = rng.randint(0, 198)
        x = rng.randint(max(0, s - 99), min(99, s))
        return Example(self.name, f"pair:{s}=", f"{x:02d}+{s - x:02d}")

    def score(self, prompt: str, answer: str) -> bool:
        s = body(prompt, "pair:")
        parts = answer.split("+")
        if s is None or not NUMBER.fullmatch(s) or len(parts) != 2:
            return False
        if not all(NUMBER.fullmatch(p) and len(p) <= 2 for p in parts):
            return False
        return int(parts[0]) + int(parts[1]) == int(s)
