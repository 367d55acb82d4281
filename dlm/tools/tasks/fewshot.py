"""Few-shot tasks: worked examples, then a question whose answer spans four blocks (``dlm/assets/fewshot``).

The testbed where caches matter under parallel decoding (docs/fewshot.md). A prompt is ``k`` worked
examples (2-4 lines ``question=answer``) followed by the question, 162-372 tokens (290-500 with the
answer), so a full-canvas forward costs many times a block forward; the answer is 128 tokens, four blocks
of 32 (generation length :data:`FEWSHOT_ANSWER_LENGTH` = 128).

``runsum`` (running sum mod 2, the working written out): the question is 64 binary digits joined by ``+``;
the answer rewrites it with every ``+`` (and the final ``=``) replaced by the running total mod 2 (its parity):
``1+1+0+1=`` -> ``11100011`` (digit 1, total 1; digit 1, total 0; digit 0, total 0; digit 1, total 1). The
digits are copies at a fixed distance (the question's length), which a decoder can commit a block at a
time; each total is the previous total plus the digit just before it, mod 2: one step from its
neighbours, but *j* totals ahead it is the parity of *j* digits, which a small transformer cannot compute
for long spans in one forward. So a confidence-threshold decoder commits a block's copies and then a few
totals per forward, about 2-4 tokens per forward, not a block (unlike ``addw`` of :mod:`dlm.tools.tasks.long`,
whose carries rarely travel: ~13 tokens per forward). One token per step, every total needs only the two
tokens before it: learnable to exactness. The modulus is :attr:`RunningSum.base`; mod 10 (a 10 x 10 table per
total) did not train within the hour's budget (docs/fewshot.md, pilots), mod 2 learned in minutes.

The examples show the same procedure on 4-15 digits; the answer depends on the question only (as a
GSM8K prompt's worked examples, they set the format and make the canvas long). The held-out split is
decided by the question alone (CRC32 bucket of :mod:`dlm.tools.tasks.base`), so no evaluation question is
ever trained on, whatever examples precede it.
"""

from __future__ import annotations

import random
import re

from dlm.tools.tasks.base import Example, Task

BASE = 2  # digits 0..BASE-1, totals mod BASE: a running parity (mod 10 did not train in time, docs/fewshot.md)
QUESTION_DIGITS = 64  # digits of the question: 128 answer tokens (a digit and a total each)
FEWSHOT_ANSWER_LENGTH = 128  # generation length of the fewshot pipeline: 4 blocks of 32
SHOTS = (2, 4)  # worked examples per prompt (inclusive range)
SHOT_DIGITS = (4, 15)  # digits per worked example (inclusive range)
# longest prompt: 4 examples of 15 digits (4 * 15 + 1 = 61 characters each: "q=a" and a newline) + the question
FEWSHOT_PROMPT_LENGTH = SHOTS[1] * (4 * SHOT_DIGITS[1] + 1) + 2 * QUESTION_DIGITS  # 372


def running_sums(digits: str, base: int = BASE) -> str:
    """Each digit of ``digits`` followed by the running total mod ``base``: ``"1101"`` -> ``"11100011"`` (mod 2),
    ``"7294"`` -> ``"77299842"`` (mod 10)."""
    total, out = 0, []
    for d in digits:
        total = (total + int(d)) % base
        out.append(d + str(total))
    return "".join(out)


def worked(digits: str, base: int = BASE) -> str:
    """One worked example line (no newline): ``"1101"`` -> ``"1+1+0+1=11100011"``."""
    return "+".join(digits) + "=" + running_sums(digits, base)


def question_of(prompt: str) -> str:
    """The question (the prompt's last line), which alone decides the answer and the split."""
    return prompt.rsplit("\n", 1)[-1]


class RunningSum(Task):
    """``k`` worked examples, then ``d+d+...+d=`` (64 digits) -> each digit followed by the running total mod
    ``base`` (2: binary digits, a running parity)."""

    name = "runsum"
    kind = "deterministic"
    description = (f"{SHOTS[0]}-{SHOTS[1]} worked examples, then {QUESTION_DIGITS} binary digits joined by +; answer "
                   "the question with each + and the = replaced by the running total so far mod 2")

    digits: int = QUESTION_DIGITS  # sizes as attributes: a pilot run may train a smaller instance (docs/fewshot.md)
    shots: tuple[int, int] = SHOTS
    shot_digits: tuple[int, int] = SHOT_DIGITS
    base: int = BASE

    def sample(self, rng: random.Random) -> Example:
        shots = [self._digits(rng, rng.randint(*self.shot_digits)) for _ in range(rng.randint(*self.shots))]
        question = self._digits(rng, self.digits)
        prompt = "".join(worked(s, self.base) + "\n" for s in shots) + "+".join(question) + "="
        return Example(self.name, prompt, running_sums(question, self.base))

    def split_key(self, prompt: str) -> str:
        return question_of(prompt)

    def score(self, prompt: str, answer: str) -> bool:
        lines = prompt.split("\n")
        question = lines[-1]
        d = f"[0-{self.base - 1}]"  # a digit of the base: a question or example in another base is not of the task
        shape = re.fullmatch(rf"{d}(?:\+{d}){{{self.digits - 1}}}=", question)
        line_shape = re.compile(rf"{d}(?:\+{d})*=(?:{d}{d})+")
        if not shape or not all(line_shape.fullmatch(line) and line == worked(_operands(line), self.base)
                                for line in lines[:-1]):
            return False
        return answer == running_sums(_operands(question), self.base)

    def _digits(self, rng: random.Random, n: int) -> str:
        return "".join(rng.choice("0123456789"[: self.base]) for _ in range(n))


def _operands(line: str) -> str:
    return line.split("=", 1)[0].replace("+", "")
