"""What a client sees of one row: the committed left-to-right prefix, detokenized incrementally.

dlm never un-commits a token (:meth:`dlm.state.GenerationState.commit` only fills pending positions), so the
positions of a row's generation region before its first MASK are final the moment they are committed. The
workers hand it the row's *final* tokens: a provisional token (a draft, or any token of a revisable canvas) reads
as MASK there (:meth:`dlm.tools.serve.view.RowCanvas.final`), so no text a later step may change is ever sent. The
stream sends that prefix, cut at the first end token, at ``max_tokens`` and at the first stop string, as
text deltas that concatenate to exactly the final text: a trailing U+FFFD (a character whose bytes are not
all committed yet) and a tail that could still become a stop string are held back until they are settled.
"""

from __future__ import annotations

from typing import Protocol, Sequence

REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


def committed_prefix(ids: Sequence[int], mask_id: int, end_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The ids before the first MASK, cut at the first end token; and whether an end token was reached."""
    out: list[int] = []
    for t in ids:
        if t == mask_id:
            return out, False
        if t in end_ids:
            return out, True
        out.append(t)
    return out, False


def stop_hold(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that begin some stop string (so cannot be sent yet)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class RowText:
    """Incremental text of one row; :meth:`update` after each step returns the new text to send."""

    def __init__(
        self, decoder: Decoder, *, mask_id: int, end_ids: Sequence[int], max_tokens: int, stop: Sequence[str] = ()
    ) -> None:
        self.decoder = decoder
        self.mask_id, self.end_ids = mask_id, tuple(end_ids)
        self.max_tokens = max_tokens
        self.stop = tuple(s for s in stop if s)
        self.sent = ""  # text already handed out; a prefix of the final text
        self.text = ""  # the final text, once complete (equal to ``sent`` unless decoding rewrote earlier text)
        self.tokens = 0  # committed prefix tokens counted towards max_tokens
        self.finish_reason: str | None = None  # "stop" or "length" once the text is complete
        self.ids: list[int] = []  # the committed prefix so far (before the first MASK or end token)
        self.ended = False  # the prefix is followed by an end token
        self._decoded: str | None = None

    @property
    def complete(self) -> bool:
        return self.finish_reason is not None

    def update(self, generated: Sequence[int], *, final: bool = False) -> str:
        """New text after a step, given the row's generation region (``final``: the row takes no more steps).

        Committed tokens never change, so the scan resumes where the prefix ended and the text is decoded
        again only when the prefix grew.
        """
        if self.complete:
            return ""
        grown, _ = committed_prefix(generated[len(self.ids) :], self.mask_id, self.end_ids)
        self.ids += grown
        nxt = len(self.ids)
        self.ended = nxt < len(generated) and generated[nxt] in self.end_ids
        if not grown and not final and not self.ended and self._decoded is not None:
            return ""
        ended = self.ended and len(self.ids) <= self.max_tokens  # an end token past the cut does not count
        at_limit = len(self.ids) >= self.max_tokens
        prefix = self.ids[: self.max_tokens]
        self.tokens = len(prefix)
        text = self._decoded = self.decoder.decode(prefix)
        reason = "stop" if ended else "length" if (at_limit or final) else None
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            text, reason = text[: min(hits)], "stop"
        if reason is None:  # still growing: hold back what a later commit may still change
            text = text.rstrip(REPLACEMENT)
            text = text[: len(text) - stop_hold(text, self.stop)]
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent += delta
        self.finish_reason = reason
        if reason is not None:
            self.text = text
        return delta
