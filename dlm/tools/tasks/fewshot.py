"""Few-shot tasks: worked examples, then a question whose answer spans four blocks (``dlm/assets/fewshot``).

The testbed where caches matter under parallel decoding (docs/fewshot.md). A prompt is ``k`` worked
examples (2-4 lines ``question=answer``) followed by the question, 162-372 tokens (290-500 with the
answer), so a full-canvas forward costs many times a block forward; the answer is 128 tokens, four blocks
of 32 (generation length :data:`FEWSHOT_ANSWER_LENGTH` = 128).

``runsum`` (running sum, the working written out): the question is 64 digits joined by ``+``; the answer
rewrites it with every ``+`` (and the final ``=``) replaced by the last digit of the running total so far:
``7+2+9+4=`` -> ``77299842`` (digit 7, total 7; digit 2, total 9; digit 9, total 8; digit 4, total 2). The
digits are copies at a fixed distance (the question's length), which a decoder can commit a block at a
time; each total is the previous total plus the digit just before it, mod 10: one step from its
neighbours, but *j* totals ahead it is a sum of *j* digits mod 10 (a parity-like prefix sum, which a small
transformer cannot compute for long spans in one forward). So a confidence-threshold decoder commits a
block's copies and then a few totals per forward, about 2-4 tokens per forward, not a block (unlike
``addw`` of :mod:`dlm.tools.tasks.long`, whose carries rarely travel: ~13 tokens per forward). One token
per step, every total needs only the two tokens before it (a 10 x 10 table): learnable to exactness.

The examples show the same procedure on 4-15 digits; the answer depends on the question only (as a
GSM8K prompt's worked examples, they set the format and make the canvas long). The held-out split is
decided by the question alone (CRC32 bucket of :mod:`dlm.tools.tasks.base`), so no evaluation question is
ever trained on, whatever examples precede it.
"""

from __future__ import annotations

import random
import re

from dlm.tools.tasks.base import Example, Task

QUESTION_DIGITS = 64  # digits of the question: 128 answer tokens (a digit and a total each)
FEWSHOT_ANSWER_LENGTH = 128  # generation length of the fewshot pipeline: 4 blocks of 32
SHOTS = (2, 4)  # worked examples per prompt (inclusive range)
SHOT_DIGITS = (4, 15)  # digits per worked example (inclusive range)
# longest prompt: 4 examples of 15 digits (4 * 15 + 1 = 61 characters each: "q=a" and a newline) + the question
FEWSHOT_PROMPT_LENGTH = SHOTS[1] * (4 * SHOT_DIGITS[1] + 1) + 2 * QUESTION_DIGITS  # 372

LINE = re.compile(r"[0-9](?:\+[0-9])*=(?:[0-9][0-9])+")


def running_sums(digits: str) -> str:
    """Each digit of ``digits`` followed by the last digit of the running total: ``"7294"`` -> ``"77299842"``."""
    total, out = 0, []
    for d in digits:
        total = (total + int(d)) % 10
        out.append(d + str(total))
    return "".join(out)


def worked(digits: str) -> str:
    """One worked example line (no newline): ``"7294"`` -> ``"7+2+9+4=77299842"``."""
    return "+".join(digits) + "=" + running_sums(digits)


def question_of(prompt: str) -> str:
    """The question (the prompt's last line), which alone decides the answer and the split."""
    return prompt.rsplit("\n", 1)[-1]


class RunningSum(Task):
    """``k`` worked examples, then ``d+d+...+d=`` (64 digits) -> each digit followed by the running total mod 10."""

    name = "runsum"
    kind = "deterministic"
    description = (f"{SHOTS[0]}-{SHOTS[1]} worked examples, then {QUESTION_DIGITS} digits joined by +; answer the "
                   "question with each + and the = replaced by the last digit of the running total so far")

    digits: int = QUESTION_DIGITS  # sizes as attributes: a pilot run may train a smaller instance (docs/fewshot.md)
    shots: tuple[int, int] = SHOTS
    shot_digits: tuple[int, int] = SHOT_DIGITS

    def sample(self, rng: random.Random) -> Example:
        shots = [_digits(rng, rng.randint(*self.shot_digits)) for _ in range(rng.randint(*self.shots))]
        question = _digits(rng, self.digits)
        prompt = "".join(worked(s) + "\n" for s in shots) + "+".join(question) + "="
        return Example(self.name, prompt, running_sums(question))

    def split_key(self, prompt: str) -> str:
        return question_of(prompt)

    def score(self, prompt: str, answer: str) -> bool:
        lines = prompt.split("\n")
        question = lines[-1]
        shape = re.fullmatch(rf"[0-9](?:\+[0-9]){{{self.digits - 1}}}=", question)
        if not shape or not all(LINE.fullmatch(line) and line == worked(_operands(line)) for line in lines[:-1]):
            return False
        return answer == running_sums(_operands(question))


def _operands(line: str) -> str:
    return line.split("=", 1)[0].replace("+", "")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))
