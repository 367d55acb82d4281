"""The task interface: seeded prompt generators with exact scorers.

A task turns a :class:`random.Random` into an :class:`Example` (prompt text, one reference answer) and judges
any answer to a prompt. Deterministic tasks have exactly one valid answer; "many-answers" tasks accept every
answer that satisfies the constraint, which is where committing several tokens in parallel can break
consistency (independent marginals of a multimodal joint).

Held-out split: a fixed ~5 % of each task's prompt space (chosen by a CRC32 of the prompt) is never used
for training and is the only part evaluation draws from, so train and eval prompts are disjoint by
construction, not just by seed. A task whose prompt has context besides its question (worked examples)
splits by the question alone (:meth:`Task.split_key`). Tasks whose prompt space is tiny (``pair``: 199
prompts) opt out and are split by random stream only.
"""

from __future__ import annotations

import random
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

ANSWER_LENGTH = 8  # answer tokens of every task, EOS-padded: the generation length of the demo pipeline
MAX_PROMPT_LENGTH = 14  # longest prompt any task produces, in characters (= tokens)
HOLDOUT_BUCKETS = 20  # prompts with crc32 % 20 == 0 are held out of training

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str  # exactly what a user types, e.g. "123+456="
    answer: str  # one valid answer, e.g. "579"


def held_out(prompt: str) -> bool:
    """True for the evaluation-only part of the prompt space."""
    return zlib.crc32(prompt.encode()) % HOLDOUT_BUCKETS == 0


class Task(ABC):
    """A synthetic task: ``sample`` draws an example, ``score`` accepts every valid answer."""

    name: ClassVar[str]
    kind: ClassVar[Literal["deterministic", "many"]]
    description: ClassVar[str]
    split_by_prompt: ClassVar[bool] = True

    @abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """One example, prompt and reference answer."""

    @abstractmethod
    def score(self, prompt: str, answer: str) -> bool:
        """Whether ``answer`` is a valid answer to ``prompt`` (``prompt`` as produced by :meth:`sample`)."""

    def split_key(self, prompt: str) -> str:
        """The part of ``prompt`` that decides its split (default: all of it; a few-shot task: the question)."""
        return prompt

    def sample_for_training(self, rng: random.Random) -> Example:
        """One training example; a task may oversample its rare, hard cases here (default: :meth:`sample`)."""
        return self.sample(rng)

    def draw(self, rng: random.Random, split: Split) -> Example:
        """An example of ``split``: rejection-samples the held-out (eval) or the remaining (train) prompts."""
        sample = self.sample_for_training if split == "train" else self.sample
        for _ in range(100_000):
            ex = sample(rng)
            if not self.split_by_prompt or held_out(self.split_key(ex.prompt)) == (split == "eval"):
                return ex
        raise RuntimeError(f"task {self.name!r}: could not draw a {split} example")  # pragma: no cover

    def examples(self, n: int, *, seed: int = 0, split: Split = "eval") -> list[Example]:
        """``n`` examples of ``split``, reproducible from ``seed`` (train and eval use separate streams)."""
        rng = random.Random(f"{self.name}:{split}:{seed}")
        return [self.draw(rng, split) for _ in range(n)]

    def stream(self, *, seed: int = 0, split: Split = "train") -> Iterator[Example]:
        rng = random.Random(f"{self.name}:{split}:{seed}")
        while True:
            yield self.draw(rng, split)


def operand(rng: random.Random, max_digits: int) -> int:
    """A non-negative integer whose digit count is uniform in 1..max_digits (so short numbers appear)."""
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def body(prompt: str, prefix: str) -> str | None:
    """The part of ``prompt`` between ``prefix`` and the final ``=``, or None if it has another shape."""
    if not (prompt.startswith(prefix) and prompt.endswith("=")):
        return None
    return prompt[len(prefix) : -1]
