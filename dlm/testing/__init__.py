"""Helpers for tests, benchmarks and plugin authors: tiny checkpoints in real on-disk layouts."""

from dlm.testing.checkpoints import CHARS, SPECIAL_TOKENS, make_llada_checkpoint, write_char_tokenizer

__all__ = ["make_llada_checkpoint", "write_char_tokenizer", "CHARS", "SPECIAL_TOKENS"]
