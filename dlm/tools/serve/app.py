"""The FastAPI application: OpenAI-compatible completions and chat completions over one batching worker.

Endpoints: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/completions``,
``POST /v1/chat/completions``, ``GET /health`` and ``GET /`` (a page that shows the canvas denoising). Requests
are checked here, before they reach the worker, so a bad one is refused with a 400 naming the field and never
fails a batch; the answers are shaped in :mod:`dlm.tools.serve.responses`.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from dlm.config import MAX_SEED
from dlm.compat import registered_name, requires
from dlm.errors import ConfigError, InputError
from dlm.pipeline import Pipeline
from dlm.tools.serve.responses import Shape, collect, stream
from dlm.tools.serve.schemas import ChatRequest, CompletionRequest, ServeError, request_error
from dlm.tools.serve.variants import Variants
from dlm.tools.serve.continuous import EngineWorker
from dlm.tools.serve.worker import BatchWorker, Job, QueueFull, TooLarge, Unavailable

MAX_BODY_BYTES = 1 << 20


def default_model_name(pipe: Pipeline) -> str:
    """The id clients send as ``model``: the checkpoint directory's name, or ``dlm-demo``."""
    path = getattr(pipe.model.config, "path", None)
    return path.name if path is not None else "dlm-demo"


def create_app(
    pipeline: Pipeline, *, model_name: str | None = None, max_batch_size: int = 16, max_queue: int = 64,
    max_tokens: int | None = None, batching: str = "continuous", memory_budget: int | None = None,
) -> FastAPI:
    """An app serving ``pipeline``; its worker thread starts and stops with the app (lifespan).

    ``batching``: ``continuous`` (rows join running generations at step boundaries, admission bounded by
    ``memory_budget`` bytes) or ``static`` (one batch at a time)."""
    if pipeline.model.tokenizer is None:
        raise ConfigError("the server needs a model with a tokenizer (tokenizer.json in the checkpoint)")
    if max_batch_size < 1 or max_queue < 1:
        raise ConfigError("max_batch_size and max_queue must be at least 1")
    if "edits" in requires(pipeline.decoding):
        raise ConfigError(
            f"decoding {registered_name('decoding', pipeline.decoding)!r} edits placed tokens (token editing): the "
            "server streams each committed token once, so a client would get text a later step rewrites; serve "
            "a decoding strategy that does not edit")
    variants = Variants(pipeline, max_tokens=max_tokens)
    if batching == "continuous":
        worker = EngineWorker(variants, max_batch_size=max_batch_size, max_queue=max_queue,
                              memory_budget=memory_budget)
    elif batching == "static":
        worker = BatchWorker(variants, max_batch_size=max_batch_size, max_queue=max_queue)
    else:
        raise ConfigError(f"batching must be 'continuous' or 'static', not {batching!r}")
    api = Api(pipeline, variants, worker, model_name or default_model_name(pipeline))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.close()

    app = FastAPI(title="dlm serve", lifespan=lifespan)
    app.state.api = api

    @app.exception_handler(ServeError)
    async def _refused(request: Request, err: ServeError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        code = "not_found" if err.status_code == 404 else None
        body = ServeError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=code).body()
        return JSONResponse(body, status_code=err.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("dlm.tools.serve").joinpath("static/index.html").read_text())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok" if worker.is_alive() else "stopped", "batching": batching, "queued": worker.queued,
                "running_rows": worker.running_rows, **worker.counters()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [api.model_card()]}

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict:
        if model != api.name:
            raise ServeError(404, f"The model {model!r} does not exist; this server serves {api.name!r}",
                             param="model", code="model_not_found")
        return api.model_card()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = await api.parse(request, CompletionRequest)
        return await api.run(request, req, api.completion_prompts(req), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = await api.parse(request, ChatRequest)
        return await api.run(request, req, [api.chat_prompt(req)], chat=True)

    return app


class Api:
    """Request handling between the HTTP routes and the worker."""

    def __init__(self, pipe: Pipeline, variants: Variants, worker: BatchWorker | EngineWorker, name: str) -> None:
        self.pipe, self.variants, self.worker, self.name = pipe, variants, worker, name
        self.tokenizer = pipe.model.tokenizer
        self.created = int(time.time())

    def model_card(self) -> dict:
        lim, caps = self.variants.limits, self.pipe.model.capabilities
        return {
            "id": self.name, "object": "model", "created": self.created, "owned_by": "dlm",
            "dlm": {
                "context": lim.context, "max_tokens": lim.max_tokens, "default_max_tokens": lim.default_tokens,
                "block_length": lim.granule, "temperature": lim.temperature, "mask_id": caps.mask_id,
                "end_ids": list(caps.eos_ids), "chat_template": self.tokenizer.has_chat_template,
                "max_batch_size": self.worker.max_batch_size,
                "pipeline": {s: self.pipe.config.to_dict()[s]["name"] for s in ("iteration", "decoding", "cache")},
            },
        }

    # --- parsing and checks ---------------------------------------------------------------------------

    async def parse(self, request: Request, model: type) -> CompletionRequest | ChatRequest:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            raise ServeError(413, f"the request body has {size} bytes; the limit is {MAX_BODY_BYTES}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ServeError(413, f"the request body has {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            req = model.model_validate_json(body)
        except ValidationError as err:
            raise request_error(err, model) from None
        if req.model != self.name:
            raise ServeError(404, f"The model {req.model!r} does not exist; this server serves {self.name!r}",
                             param="model", code="model_not_found")
        return req

    def _encode(self, text: str, name: str) -> list[int]:
        """Token ids of one text prompt; text the tokenizer refuses (characters it cannot represent, control
        characters) is a 400 naming the prompt."""
        try:
            return self.tokenizer.encode(text)
        except InputError as err:
            raise ServeError(400, f"{name}: {err}", param="prompt") from None

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        p = req.prompt
        if isinstance(p, str):
            return [self._encode(p, "prompt")]
        if not p:
            raise ServeError(400, "prompt: give at least one prompt", param="prompt")
        if isinstance(p[0], str):
            return [self._encode(s, f"prompt[{i}]") for i, s in enumerate(p)]
        if isinstance(p[0], int):
            return [list(p)]
        return [list(q) for q in p]

    def chat_prompt(self, req: ChatRequest) -> list[int]:
        if not self.tokenizer.has_chat_template:
            raise ServeError(400, f"model {self.name!r} has no chat template, so it cannot take messages; "
                                  "use /v1/completions with a prompt", param="messages")
        try:
            return self.tokenizer.encode_chat([m.as_template() for m in req.messages])
        except InputError as err:
            raise ServeError(400, str(err), param="messages") from None

    def job(self, req, prompts: list[list[int]], *, chat: bool) -> Job:
        lim = self.variants.limits
        max_tokens = req.max_tokens
        if chat and req.max_completion_tokens is not None:
            if max_tokens is not None:
                raise ServeError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens")
            max_tokens = req.max_completion_tokens
        param = "max_completion_tokens" if chat and req.max_completion_tokens is not None else "max_tokens"
        max_tokens = max_tokens or lim.default_tokens
        if max_tokens > lim.max_tokens:
            raise ServeError(400, f"{param} is {max_tokens}; this model answers with at most {lim.max_tokens} tokens "
                                  f"(context {lim.context})", param=param)
        if req.temperature is not None and lim.temperature is None:
            raise ServeError(400, f"temperature: decoding {self.pipe.config.decoding.name!r} has no temperature "
                                  "setting; leave temperature out", param="temperature")
        if req.stream_options is not None and not req.stream:
            raise ServeError(400, "stream_options: applies to streamed answers only; send stream: true with it or "
                                  "leave stream_options out", param="stream_options")
        if req.dlm_stream == "steps" and not req.stream:
            raise ServeError(400, "dlm_stream: 'steps' streams every denoising step, so it needs stream: true",
                             param="dlm_stream")
        rows = len(prompts) * req.n
        if rows > self.worker.max_batch_size:
            raise ServeError(400, f"n: {len(prompts)} prompt(s) x n={req.n} is {rows} rows; this server batches at "
                                  f"most {self.worker.max_batch_size}", param="n")
        gen = lim.gen_length(max_tokens)
        where = "messages" if chat else "prompt"
        caps = self.pipe.model.capabilities
        vocab = caps.vocab_size
        for i, ids in enumerate(prompts):
            name = where if len(prompts) == 1 else f"{where}[{i}]"
            if not ids:
                raise ServeError(400, f"{name} is empty; give at least one token", param=where)
            if len(ids) + gen > lim.context:
                raise ServeError(400, f"{name} has {len(ids)} tokens; with {param} {max_tokens} (generation length "
                                      f"{gen}) that exceeds the model's context of {lim.context} tokens. Shorten it "
                                      f"to at most {lim.context - gen} tokens or lower {param}.", param=where)
            if vocab is not None and (min(ids) < 0 or max(ids) >= vocab):
                bad = min(ids) if min(ids) < 0 else max(ids)
                raise ServeError(400, f"{name} holds token id {bad}, outside the vocabulary [0, {vocab})",
                                 param=where)
            if caps.mask_id in ids:
                raise ServeError(400, f"{name} holds the MASK token (id {caps.mask_id}) at position "
                                      f"{ids.index(caps.mask_id)}; prompt positions are never denoised, so it would "
                                      "stay masked: remove it", param=where)
            if ids[0] in caps.eos_ids:
                raise ServeError(400, f"{name} starts with the end token {ids[0]}; the model would read the prompt "
                                      "as ended before it began: remove the leading end token(s)", param=where)
        base = self.pipe.config.run.seed if req.seed is None else req.seed
        if base + rows - 1 > MAX_SEED:
            raise ServeError(400, f"seed: {base} + {rows - 1} (one seed per row) exceeds {MAX_SEED}; give a seed of at "
                                  f"most {MAX_SEED - rows + 1}", param="seed")
        return Job(
            prompts=[ids for ids in prompts for _ in range(req.n)],
            seeds=[base + r for r in range(rows)],
            key=self.variants.key(max_tokens, req.temperature),
            max_tokens=max_tokens,
            stop=req.stops,
            steps=req.dlm_stream == "steps",
            loop=asyncio.get_running_loop(),
        )

    # --- running ------------------------------------------------------------------------------------

    async def run(self, request: Request, req, prompts: list[list[int]], *, chat: bool) -> Response:
        job = self.job(req, prompts, chat=chat)
        try:
            self.worker.submit(job)
        except QueueFull as err:
            raise ServeError(429, str(err), code="queue_full", type="rate_limit_error",
                             headers={"Retry-After": str(err.retry_after)}) from None
        except TooLarge as err:
            raise ServeError(400, str(err), param="max_tokens", code="too_large") from None
        except Unavailable as err:
            raise ServeError(503, str(err), code="unavailable", type="server_error",
                             headers={"Retry-After": "5"}) from None
        shape = Shape(self.name, chat, len(job.prompts))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream(job, shape, include_usage), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await collect(request, job, shape)
