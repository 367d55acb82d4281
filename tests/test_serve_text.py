"""The streamed text of a row: committed prefix, incremental detokenization, max_tokens and stop strings."""

from __future__ import annotations

from dlm.tools.serve.text import RowText, committed_prefix, stop_hold

MASK, EOS = 2, 0


class ByteDecoder:
    """A byte-level vocabulary (id = byte + 10), decoded like a BPE tokenizer: broken UTF-8 becomes U+FFFD."""

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 10 for i in ids).decode("utf-8", errors="replace")


def ids(text: str) -> list[int]:
    return [b + 10 for b in text.encode()]


def row(**kw) -> RowText:
    return RowText(ByteDecoder(), mask_id=MASK, end_ids=(EOS,), **{"max_tokens": 64, **kw})


def steps(canvases: list[list[int]], text: RowText) -> list[str]:
    return [text.update(c, final=i == len(canvases) - 1) for i, c in enumerate(canvases)]


def test_committed_prefix_stops_at_the_first_mask_or_end_token():
    assert committed_prefix([11, 12, MASK, 13], MASK, (EOS,)) == ([11, 12], False)
    assert committed_prefix([11, EOS, MASK], MASK, (EOS,)) == ([11], True)


def test_deltas_concatenate_to_the_final_text_and_never_split_a_character():
    word = ids("né!")  # 'é' is two bytes
    canvases = [
        [MASK, MASK, MASK, MASK, MASK],
        [word[0], word[1], MASK, MASK, EOS],  # 'n' and half of 'é'
        [word[0], word[1], word[2], MASK, EOS],
        word + [EOS],
    ]
    text = row()
    deltas = steps(canvases, text)
    assert deltas == ["", "n", "é", "!"]
    assert "".join(deltas) == "né!" and text.finish_reason == "stop"


def test_max_tokens_cuts_the_text_with_finish_reason_length():
    text = row(max_tokens=2)
    assert text.update(ids("abc") + [EOS]) == "ab"
    assert (text.finish_reason, text.tokens) == ("length", 2)


def test_an_end_token_right_after_max_tokens_is_a_stop():
    text = row(max_tokens=3)
    assert text.update(ids("abc") + [EOS]) == "abc"
    assert text.finish_reason == "stop"


def test_a_possible_stop_string_is_held_back_until_settled():
    text = row(stop=["xy"])
    assert text.update(ids("abx") + [MASK, MASK]) == "ab"  # 'x' may start 'xy'
    assert text.update(ids("abxz") + [MASK]) == "xz"
    assert text.update(ids("abxzxy")) == ""
    assert (text.sent, text.finish_reason) == ("abxz", "stop")


def test_stop_hold_is_the_longest_stop_prefix_ending_the_text():
    assert stop_hold("hello wor", ["world", "or"]) == 3
    assert stop_hold("hello", ["xyz"]) == 0


def test_a_row_ending_without_end_token_finishes_with_length():
    text = row()
    assert text.update(ids("ab") + [MASK]) == "ab"
    assert text.update(ids("ab") + [MASK], final=True) == ""  # cancelled with a mask left
    assert text.finish_reason == "length"
