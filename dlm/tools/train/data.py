"""Batches of task examples as token ids, laid out as the pipeline lays out a canvas.

The vocabulary is the character tokenizer of :func:`dlm.tools.checkpoints.write_char_tokenizer` (EOS 0,
EOT 1, MASK 2, then one id per character); :data:`VOCAB` mirrors it so batches are built without the
tokenizer library (a test checks the two agree). A row is ``[EOS pad | prompt | answer + EOS…]``: left
padding with the generation region at the same columns in every row, RoPE position ``column - pad`` and
padding masked out as keys, exactly like :func:`dlm.iteration.base.left_padded_canvas` at inference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from dlm.tools.tasks import ALL_TASKS, ANSWER_LENGTH, MAX_PROMPT_LENGTH, Example
from dlm.tools.checkpoints import CHARS, EOS_ID, MASK_ID, SPECIAL_TOKENS


def _vocab() -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    return vocab


VOCAB = _vocab()
VOCAB_SIZE = len(VOCAB)


def encode(text: str) -> list[int]:
    """Character ids of ``text`` (every character must be in the demo vocabulary)."""
    try:
        return [VOCAB[ch] for ch in text]
    except KeyError as err:
        raise ValueError(f"character {err.args[0]!r} is not in the demo vocabulary") from None


@dataclass(frozen=True)
class Batch:
    ids: Tensor  # [B, P + A] long: EOS pad | prompt | answer, EOS-padded to A tokens
    pad: Tensor  # [B] long: left-padding columns
    answer_start: int  # P: first answer column (same in every row)

    @property
    def positions(self) -> Tensor:
        """[B, L] RoPE positions ``column - pad`` (0 on padding columns)."""
        cols = torch.arange(self.ids.shape[1])
        return (cols[None, :] - self.pad[:, None]).clamp(min=0)

    @property
    def key_mask(self) -> Tensor:
        """[B, 1, 1, L] bool: True where a column may be attended to (not padding)."""
        cols = torch.arange(self.ids.shape[1])
        return (cols[None, :] >= self.pad[:, None])[:, None, None, :]


def make_batch(
    examples: Sequence[Example], *, prompt_length: int = MAX_PROMPT_LENGTH, answer_length: int = ANSWER_LENGTH
) -> Batch:
    """Left-pad prompts to ``prompt_length`` and EOS-pad answers to ``answer_length`` (both fixed, so every
    batch has the same shape)."""
    rows, pads = [], []
    for ex in examples:
        prompt, answer = encode(ex.prompt), encode(ex.answer)
        if len(prompt) > prompt_length or len(answer) > answer_length:
            raise ValueError(f"example {ex} is longer than {prompt_length} + {answer_length} tokens")
        pad = prompt_length - len(prompt)
        rows.append([EOS_ID] * pad + prompt + answer + [EOS_ID] * (answer_length - len(answer)))
        pads.append(pad)
    return Batch(torch.tensor(rows, dtype=torch.long), torch.tensor(pads, dtype=torch.long), prompt_length)


class Mixture:
    """An endless, seeded stream of training batches mixing the tasks with the given weights, every batch
    laid out with the same ``prompt_length`` + ``answer_length`` columns."""

    def __init__(
        self, weights: dict[str, float], *, seed: int, batch_size: int,
        prompt_length: int = MAX_PROMPT_LENGTH, answer_length: int = ANSWER_LENGTH,
    ) -> None:
        self.names = list(weights)
        self.weights = [weights[n] for n in self.names]
        self.streams = {n: ALL_TASKS[n].stream(seed=seed, split="train") for n in self.names}
        self.rng = random.Random(f"mixture:{seed}")
        self.batch_size = batch_size
        self.lengths = {"prompt_length": prompt_length, "answer_length": answer_length}

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        picks = self.rng.choices(self.names, weights=self.weights, k=self.batch_size)
        return make_batch([next(self.streams[n]) for n in picks], **self.lengths)


__all__ = ["Batch", "Mixture", "VOCAB", "VOCAB_SIZE", "MASK_ID", "EOS_ID", "encode", "make_batch"]
