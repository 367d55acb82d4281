"""String tasks: reversal and sorting (one answer), permutation (many answers)."""

from __future__ import annotations

import random
import string

from dlm.tools.tasks.base import Example, Task, body

LETTERS = string.ascii_lowercase
DIGITS = string.digits


class Reverse(Task):
    """``rev:abcde=`` -> ``edcba`` (1-7 lowercase letters)."""

    name = "rev"
    kind = "deterministic"
    description = "rev:s= with 1-7 lowercase letters; answer s reversed"

    def sample(self, rng: random.Random) -> Example:
        s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 7)))
        return Example(self.name, f"rev:{s}=", s[::-1])

    def score(self, prompt: str, answer: str) -> bool:
        s = body(prompt, "rev:")
        return s is not None and answer == s[::-1]


class Sort(Task):
    """``sort:3141=`` -> ``1134`` (2-7 digits, ascending)."""

    name = "sort"
    kind = "deterministic"
    description = "sort:d= with 2-7 digits; answer the digits in ascending order"

    def sample(self, rng: random.Random) -> Example:
        s = "".join(rng.choice(DIGITS) for _ in range(rng.randint(2, 7)))
        return Example(self.name, f"sort:{s}=", "".join(sorted(s)))

    def score(self, prompt: str, answer: str) -> bool:
        s = body(prompt, "sort:")
        return s is not None and answer == "".join(sorted(s))


class Permutation(Task):
    """``perm:abcd=`` -> any ordering of the same letters, e.g. ``cadb`` (3-6 distinct letters).

    Trained on uniformly random orderings: each position's marginal is uniform over the letters, so
    committing several positions at once tends to repeat a letter; one at a time, the model conditions on
    what is already placed.
    """

    name = "perm"
    kind = "many"
    description = "perm:s= with 3-6 distinct lowercase letters; answer any permutation of s"

    def sample(self, rng: random.Random) -> Example:
        letters = rng.sample(LETTERS, rng.randint(3, 6))
        shuffled = rng.sample(letters, len(letters))
        return Example(self.name, f"perm:{''.join(letters)}=", "".join(shuffled))

    def score(self, prompt: str, answer: str) -> bool:
        s = body(prompt, "perm:")
        return s is not None and len(s) > 0 and sorted(answer) == sorted(s)
