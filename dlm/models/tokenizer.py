"""Tokenizer loading from a checkpoint directory (``tokenizer.json`` + ``tokenizer_config.json``).

Uses transformers' fast tokenizer class directly, so no remote code can run; the chat template is read from
the directory when present.
"""

from __future__ import annotations

import os
from pathlib import Path

from dlm.errors import CheckpointError, InputError


class Tokenizer:
    """Text <-> ids, with the chat template of the checkpoint when it has one."""

    def __init__(self, directory: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import PreTrainedTokenizerFast

        try:
            self._tok = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        except Exception as err:  # tokenizers raises plain Exceptions on malformed files
            raise CheckpointError(f"cannot read the tokenizer in {directory}: {err}") from err

    @staticmethod
    def maybe_load(directory: Path) -> "Tokenizer | None":
        return Tokenizer(directory) if (Path(directory) / "tokenizer.json").is_file() else None

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

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        if chat:
            return self.encode_chat([{"role": "user", "content": text}])
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Ids of a conversation (``[{"role": ..., "content": ...}, ...]``) in the chat template, ready for the
        assistant's answer."""
        text = self.render_chat(messages)
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return self._tok.convert_ids_to_tokens(ids)
