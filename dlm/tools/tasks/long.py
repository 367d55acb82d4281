"""Long-answer tasks: answers of 64-71 tokens that span several blocks (the testbed of ``dlm/assets/long``).

The demo tasks answer in 8 tokens, one block, so KV caches barely matter there. These answer in five blocks
of 16 (generation length :data:`LONG_ANSWER_LENGTH` = 80), which is where Fast-dLLM's prefix and dual caches
(Wu et al., 2025) pay off and where their approximation can cost accuracy. Two families, both with a single
valid answer (exact-match scorers), chosen for opposite shapes of dependency:

* ``addw``: 7-digit addition with the working written out, column by column from the right, carries
  included: every entry depends on the previous one's carry, so a decoder must go roughly left to right;
* ``shift``: copy 64 letters with a rule (each letter replaced by the next one, z -> a): every answer token
  depends on one prompt token only, so a confident decoder can commit a whole block at once.

Held-out prompts (CRC32 split of :mod:`dlm.tools.tasks.base`) are disjoint from training by construction.
"""

from __future__ import annotations

import random
import re
import string

from dlm.tools.tasks.base import Example, Task, body

LONG_ANSWER_LENGTH = 80  # generation length of the long pipeline: 5 blocks of 16
LONG_PROMPT_LENGTH = 71  # longest prompt of a long task ("shift:" + 64 letters + "=")
ADD_DIGITS = 7  # digits of each addend
SHIFT_LETTERS = 64  # letters copied by ``shift``

DIGITS7 = re.compile(rf"[1-9][0-9]{{{ADD_DIGITS - 1}}}")
LETTERS = string.ascii_lowercase


def addition_working(a: int, b: int) -> str:
    """``a + b`` worked column by column from the units: ``"d+e+c=ss;"`` per column (c the carry in, ss the
    column sum on two digits, its tens digit the carry out), then the sum. 7-digit addends: 70-71 chars."""
    xs, ys = str(a).zfill(ADD_DIGITS), str(b).zfill(ADD_DIGITS)
    carry, entries = 0, []
    for x, y in zip(reversed(xs), reversed(ys)):
        s = int(x) + int(y) + carry
        entries.append(f"{x}+{y}+{carry}={s:02d};")
        carry = s // 10
    return "".join(entries) + str(a + b)


class LongAddition(Task):
    """``1234567+7654321=`` -> ``7+1+0=08;6+2+0=08;...;1+7+0=08;8888888`` (two 7-digit addends)."""

    name = "addw"
    kind = "deterministic"
    description = "a+b= with two 7-digit addends; answer the column-by-column working (carries), then the sum"

    def sample(self, rng: random.Random) -> Example:
        lo, hi = 10 ** (ADD_DIGITS - 1), 10**ADD_DIGITS - 1
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return Example(self.name, f"{a}+{b}=", addition_working(a, b))

    def score(self, prompt: str, answer: str) -> bool:
        parts = (body(prompt, "") or "").split("+")
        if len(parts) != 2 or not all(DIGITS7.fullmatch(p) for p in parts):
            return False
        return answer == addition_working(int(parts[0]), int(parts[1]))


def shifted(text: str) -> str:
    """Each lowercase letter replaced by the next one in the alphabet, z by a."""
    return "".join(LETTERS[(LETTERS.index(ch) + 1) % 26] for ch in text)


class ShiftCopy(Task):
    """``shift:abc…z=`` (64 letters) -> ``bcd…a``: copy with a rule, each letter moved one step up the alphabet."""

    name = "shift"
    kind = "deterministic"
    description = f"shift:s= with {SHIFT_LETTERS} lowercase letters; answer s with each letter advanced by one (z->a)"

    def sample(self, rng: random.Random) -> Example:
        s = "".join(rng.choice(LETTERS) for _ in range(SHIFT_LETTERS))
        return Example(self.name, f"shift:{s}=", shifted(s))

    def score(self, prompt: str, answer: str) -> bool:
        s = body(prompt, "shift:")
        if s is None or len(s) != SHIFT_LETTERS or any(ch not in LETTERS for ch in s):
            return False
        return answer == shifted(s)
