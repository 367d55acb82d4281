"""Few-shot tasks: worked examples, then a question whose answer spans four blocks (``dlm/assets/fewshot``).

The testbed where caches matter under parallel decoding (docs/fewshot.md). A prompt is ``k`` worked
examples (2-4 lines ``question=answer``) followed by the question, 160-384 tokens (287-511 with the
answer), so a full-canvas forward costs many times a block forward; the answer is 127 tokens, four blocks
of 32 (generation length :data:`FEWSHOT_ANSWER_LENGTH` = 128).

``runsum`` (running sum, the working written out): the question is 64 digits joined by ``+``; the answer is
the last digit of each running total, comma-separated: ``7+2+9+4=`` -> ``7,9,8,2``. Entry *i* is entry
*i - 1* plus question digit *i*, mod 10: one step from the previous entry, but *j* steps ahead it is a sum
of *j* digits mod 10 (a parity-like prefix sum, which a small transformer cannot compute for long spans in
one forward), so a confidence-threshold decoder commits the commas and a few entries per forward, not a
block (unlike ``addw`` of :mod:`dlm.tools.tasks.long`, whose carries rarely travel and which commits ~13
tokens per forward). Question and answer have the same stride (digit, separator), so entry *i* sits at a
fixed distance from question digit *i*: each step is a fixed-offset lookup plus a 10 x 10 table.

The examples show the same procedure on 4-16 digits; the answer depends on the question only (as a
GSM8K prompt's worked examples, they set the format and make the canvas long). The held-out split is
decided by the question alone (CRC32 bucket of :mod:`dlm.tools.tasks.base`), so no evaluation question is
ever trained on, whatever examples precede it.
"""

from __future__ import annotations

import random
import re

from dlm.tools.tasks.base import Example, Task

QUESTION_DIGITS = 64  # digits of the question: 127 answer tokens
FEWSHOT_ANSWER_LENGTH = 128  # generation length of the fewshot pipeline: 4 blocks of 32
SHOTS = (2, 4)  # worked examples per prompt (inclusive range)
SHOT_DIGITS = (4, 16)  # digits per worked example (inclusive range)
# longest prompt: 4 examples of 16 digits (4 * 16 + 1 = 64 characters each: "q=a" plus a newline) + the question
FEWSHOT_PROMPT_LENGTH = SHOTS[1] * 4 * SHOT_DIGITS[1] + 2 * QUESTION_DIGITS  # 384

LINE = re.compile(r"[0-9](?:\+[0-9])*=[0-9](?:,[0-9])*")


def running_sums(digits: str) -> str:
    """The last digit of each running total of ``digits``, comma-separated: ``"7294"`` -> ``"7,9,8,2"``."""
    total, out = 0, []
    for d in digits:
        total = (total + int(d)) % 10
        out.append(str(total))
    return ",".join(out)


def worked(digits: str) -> str:
    """One worked example line (no newline): ``"7294"`` -> ``"7+2+9+4=7,9,8,2"``."""
    return "+".join(digits) + "=" + running_sums(digits)


def question_of(prompt: str) -> str:
    """The question (the prompt's last line), which alone decides the answer and the split."""
    return prompt.rsplit("\n", 1)[-1]


class RunningSum(Task):
    """``k`` worked examples, then ``d+d+...+d=`` (64 digits) -> the running totals' last digits, ``r,r,...,r``."""

    name = "runsum"
    kind = "deterministic"
    description = (f"{SHOTS[0]}-{SHOTS[1]} worked examples, then {QUESTION_DIGITS} digits joined by +; answer the "
                   "last digit of each running total, comma-separated")

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
