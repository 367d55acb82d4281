"""Request bodies of the OpenAI-compatible endpoints, and OpenAI-style error bodies.

Validation is strict (no "5" for 5, no true for 1) and unknown fields are refused, so a client learns at
once that a setting it sent is not honoured. Every refusal names the offending field (``error.param``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlm.config import MAX_SEED  # one seed rule everywhere: [0, 2**63 - 1], and seed + row stays within it


class ServeError(Exception):
    """A request the server refuses: HTTP status and an OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error", headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class _Request(BaseModel):
    """Settings shared by both endpoints."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=1, description="answer length in tokens (generation rounded up to blocks)")
    temperature: float | None = Field(None, ge=0.0, description="sampling temperature; default: the config's")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of choice 0; choice i uses seed + i")
    stop: str | list[str] | None = Field(None, description="cut the answer at the first of these strings")
    n: int = Field(1, ge=1, description="choices per prompt, generated as rows of one batch")
    stream: bool = False
    stream_options: StreamOptions | None = None
    dlm_stream: Literal["text", "steps"] = Field("text", description="'steps': a chunk per denoising step")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return v

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_Request):
    """``POST /v1/completions``: a prompt as text or token ids, or a list of them (one batch)."""

    prompt: str | list[str] | list[int] | list[list[int]]

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, v):
        """Name the element that is wrong (``prompt[2]``), not the union member pydantic tried last."""
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"a prompt is a string, a list of strings, a list of token ids or a list of such "
                             f"lists; got {_kind(v)}")
        if not v:
            return v
        first = v[0]
        want = str if isinstance(first, str) else int if _is_id(first) else list if isinstance(first, list) else None
        if want is None:
            raise ValueError(f"prompt[0] is {_kind(first)}; each element is a string, a token id or a list of ids")
        for i, item in enumerate(v):
            if want is list:
                if not isinstance(item, list):
                    raise ValueError(f"prompt[{i}] is {_kind(item)}, but prompt[0] is a list of token ids; give "
                                     "every element as a list of ids")
                for j, t in enumerate(item):
                    if not _is_id(t):
                        raise ValueError(f"prompt[{i}][{j}] is {_kind(t)}; token ids are integers")
            elif want is int and not _is_id(item):
                raise ValueError(f"prompt[{i}] is {_kind(item)}, but prompt[0] is a token id; a list of ids holds "
                                 "integers only")
            elif want is str and not isinstance(item, str):
                raise ValueError(f"prompt[{i}] is {_kind(item)}, but prompt[0] is a string; a list of prompts holds "
                                 "strings only")
        return v


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(v) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Request):
    """``POST /v1/chat/completions``: a conversation, put through the tokenizer's chat template."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")


def _param(loc: tuple) -> str | None:
    """``("messages", 0, "content", "str")`` -> ``"messages[0].content"`` (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out and not part.isidentifier():  # a union member tag such as 'list[int]'
            break
        elif part in ("str", "list", "int") and out:
            break
        else:
            out += f".{part}" if out else part
    return out or None


def request_error(err: ValidationError, model: type[BaseModel]) -> ServeError:
    """The first problem of a failed validation, as a 400 naming the field."""
    first = err.errors()[0]
    kind = first["type"]
    if kind == "json_invalid":
        return ServeError(400, f"the request body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}")
    if kind == "model_type" and not first["loc"]:
        return ServeError(400, "the request body must be a JSON object")
    param = _param(first["loc"])
    if kind == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return ServeError(400, f"unknown field {param!r}; this endpoint accepts: {allowed}", param=param)
    if kind == "missing":
        return ServeError(400, f"{param}: this field is required", param=param)
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    msg = first["msg"].removeprefix("Value error, ")
    return ServeError(400, f"{param}: {msg}{shown}", param=param)
