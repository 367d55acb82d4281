"""OpenAI response objects of one request: plain completions, streamed chunks (server-sent events), usage.

A stream's chunks are the standard ones; the per-step view rides in an extra top-level ``dlm`` object of a
valid chunk, because OpenAI clients parse every event as a chunk (a custom event type would reach user code
as a malformed chunk).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from dlm.tools.serve.schemas import ServeError
from dlm.tools.serve.worker import Failed, Finished, Job


class Shape:
    """Builds the OpenAI response objects of one request (completion or chat, plain or chunk)."""

    def __init__(self, model: str, chat: bool, choices: int) -> None:
        self.model, self.chat, self.choices = model, chat, choices
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _wrap(self, obj: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def chunk(self, index: int, delta: str | None, finish: str | None, *, role: bool = False, **extra) -> dict:
        if self.chat:
            d = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice = {"index": index, "delta": d, "logprobs": None, "finish_reason": finish}
            return self._wrap("chat.completion.chunk", [choice], **extra)
        choice = {"index": index, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return self._wrap("text_completion", [choice], **extra)

    def usage_chunk(self, usage: dict) -> dict:
        return self._wrap("chat.completion.chunk" if self.chat else "text_completion", [], usage=usage)

    def response(self, texts: list[str], reasons: list[str | None], usage: dict, dlm: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
            return self._wrap("chat.completion", choices, usage=usage, dlm=dlm)
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return self._wrap("text_completion", choices, usage=usage, dlm=dlm)


def usage_of(done: Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


async def stream(job: Job, shape: Shape, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of one request; leaving early (client gone) cancels its rows."""
    try:
        if shape.chat:
            for i in range(shape.choices):
                yield sse(shape.chunk(i, None, None, role=True))
        while True:
            item = await job.queue.get()
            if isinstance(item, list):
                for u in item:
                    if u.view is not None:
                        yield sse(shape.chunk(u.index, u.delta, u.finish_reason, dlm={"index": u.index, **u.view}))
                    elif u.delta or u.finish_reason:
                        yield sse(shape.chunk(u.index, u.delta, u.finish_reason))
            elif isinstance(item, Finished):
                if include_usage:
                    yield sse(shape.usage_chunk(usage_of(item)))
                break
            elif isinstance(item, Failed):
                yield sse({"error": {"message": item.message, "type": "server_error", "param": None, "code": None}})
                break
        yield sse("[DONE]")
    finally:
        job.cancel()


async def collect(request: Request, job: Job, shape: Shape) -> Response:
    """Wait for the whole answer (a non-streamed request); a client that leaves cancels its rows."""
    reasons: list[str | None] = [None] * shape.choices
    while True:
        try:
            item = await asyncio.wait_for(job.queue.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                return Response(status_code=499)
            continue
        if isinstance(item, list):
            for u in item:
                reasons[u.index] = u.finish_reason or reasons[u.index]
        elif isinstance(item, Finished):
            dlm = {"nfe": item.nfe, "tokens_per_forward": item.tokens_per_forward}
            return JSONResponse(shape.response(item.texts, reasons, usage_of(item), dlm))
        elif isinstance(item, Failed):
            raise ServeError(500, item.message, type="server_error")
