"""Tokenizer loading from a checkpoint directory (``tokenizer.json`` + ``tokenizer_config.json``, or GPT-2's
``vocab.json`` + ``merges.txt``).

Uses transformers' fast tokenizer class directly, so no remote code can run; the chat template is read from
the directory when present. A directory with GPT-2's older files only (``vocab.json`` and ``merges.txt``, the
tokenizer MDLM and DiDi-Instruct use, which their checkpoints do not ship: copy GPT-2's files next to the
weights) gets the byte-level BPE those files define (GPT-2's pre-tokenizer and decoder), built offline with the
``tokenizers`` library; ``<|endoftext|>`` is its special token when the vocabulary has it. Text the vocabulary cannot represent is refused, not silently mapped to the
unknown token (docs/errors.md): a model never sees what the user did not write.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from dlm.errors import CheckpointError, InputError


class Tokenizer:
    """Text <-> ids, with the chat template of the checkpoint when it has one."""

    def __init__(self, directory: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import PreTrainedTokenizerFast

        directory = Path(directory)
        try:
            if (directory / "tokenizer.json").is_file():
                self._tok = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
            else:
                self._tok = _byte_level_bpe(directory)
        except CheckpointError:
            raise
        except Exception as err:  # tokenizers raises plain Exceptions on malformed files
            raise CheckpointError(f"cannot read the tokenizer in {directory}: {err}") from err

    @staticmethod
    def maybe_load(directory: Path) -> "Tokenizer | None":
        """The checkpoint's tokenizer (``tokenizer.json``, else ``vocab.json`` + ``merges.txt``), or None."""
        directory = Path(directory)
        found = (directory / "tokenizer.json").is_file() or all((directory / f).is_file() for f in GPT2_FILES)
        return Tokenizer(directory) if found else None

    @property
    def max_id(self) -> int | None:
        """The largest id this tokenizer can produce (its vocabulary and added tokens), or None if empty."""
        ids = self._tok.get_vocab().values()
        return max(ids) if ids else None

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    def token_id(self, token: str) -> int | None:
        """The id of a special token string, or None if the vocabulary has no such token."""
        tid = self._tok.convert_tokens_to_ids(token)
        return None if tid is None or tid == self._tok.unk_token_id and token != self._tok.unk_token else tid

    def render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """``messages`` ([{"role": ..., "content": ...}, ...]) as text, through the checkpoint's chat template."""
        if not self.has_chat_template:
            raise InputError("a chat template was asked for, but this checkpoint's tokenizer has no chat template")
        return self._tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def _unknown(self) -> tuple[int, str] | None:
        """(id, text) of the token that stands for text outside the vocabulary, or None (byte-level BPE)."""
        model = self._tok.backend_tokenizer.model
        unk = getattr(model, "unk_token", None)  # WordLevel, WordPiece, BPE
        if unk:
            uid = self._tok.backend_tokenizer.token_to_id(unk)
            return None if uid is None else (uid, unk)
        uid = getattr(model, "unk_id", None)  # Unigram
        return None if uid is None else (uid, self._tok.backend_tokenizer.id_to_token(uid))

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        """Token ids of ``text``; characters the vocabulary lacks raise :class:`InputError` naming them."""
        check_text(text)
        if chat:
            text = self.render_chat([{"role": "user", "content": text}])
        return self._ids(text)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Ids of a conversation (``[{"role": ..., "content": ...}, ...]``) in the chat template, ready for the
        assistant's answer."""
        for i, m in enumerate(messages):
            try:
                check_text(m.get("content", ""))
            except InputError as err:
                raise InputError(f"messages[{i}].content: {err}") from None
        return self._ids(self.render_chat(messages))

    def _ids(self, text: str) -> list[int]:
        # verbose=False: the context length is dlm's to check, with its own message (no stray warning first)
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = list(enc["input_ids"])
        unknown = self._unknown()
        if unknown is not None and unknown[0] in ids:
            chars = sorted({text[a:b] for i, (a, b) in zip(ids, enc["offset_mapping"])
                            if i == unknown[0] and text[a:b] != unknown[1]})
            if chars:
                shown = ", ".join(repr(c) for c in chars[:10])
                shown += f" and {len(chars) - 10} more" if len(chars) > 10 else ""
                raise InputError(
                    f"text holds {shown}, which this tokenizer cannot represent (it would silently become "
                    f"{unknown[1]!r}); remove or replace {'it' if len(chars) == 1 else 'them'}"
                )
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return self._tok.convert_ids_to_tokens(ids)


GPT2_FILES = ("vocab.json", "merges.txt")
GPT2_END = "<|endoftext|>"


def _byte_level_bpe(directory: Path):
    """A fast tokenizer for GPT-2's ``vocab.json`` + ``merges.txt`` (byte-level BPE, no prefix space), offline."""
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dlm.models.checkpoint import read_json

    vocab = read_json(directory / GPT2_FILES[0])
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise CheckpointError(f"{directory / GPT2_FILES[0]} must map tokens to integer ids")
    raw = RawTokenizer(models.BPE.from_file(str(directory / GPT2_FILES[0]), str(directory / GPT2_FILES[1])))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    special = {}
    if GPT2_END in vocab:
        raw.add_special_tokens([GPT2_END])
        special = {"eos_token": GPT2_END, "bos_token": GPT2_END, "unk_token": GPT2_END}
    return PreTrainedTokenizerFast(tokenizer_object=raw, **special)


ALLOWED_CONTROLS = "\t\n\r"


def check_text(text: str) -> None:
    """Refuse control characters other than tab, newline and carriage return (NUL, escape, DEL, C1 controls):
    never meant as prompt text, they are the mark of a binary file or a broken client, and a byte-level
    tokenizer would feed them to the model silently."""
    for i, ch in enumerate(text):
        if ch not in ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc":
            raise InputError(
                f"text holds the control character {ch!r} (U+{ord(ch):04X}) at character {i}; prompts are text: "
                "remove it (tab, newline and carriage return are allowed)"
            )
