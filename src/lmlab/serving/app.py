"""The OpenAI-compatible HTTP app (FastAPI): routes, errors, the API key and the request counters.

:func:`create_app` takes a loaded model, its tokenizer and a started
:class:`~lmlab.serving.engine.Engine` (None for an encoder, which only embeds) and returns an
ASGI app; :mod:`lmlab.serving.server` runs it with uvicorn. Every refused request is a JSON
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; an unexpected failure is a
500 for that request only.
"""

from __future__ import annotations

import hmac
import inspect
import json
import time
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmlab.errors import LmlabError
from lmlab.serving.completions import (
    Generation, chat_body, completion_body, piece_choice, response_id, stream_chunk, RETRY_AFTER_S,
)
from lmlab.serving.engine import Engine
from lmlab.serving.requests import EngineRequest
from lmlab.serving.metrics import CONTENT_TYPE, Metrics
from lmlab.serving.protocol import (
    DEFAULT_CHAT_TOKENS, CompletionRequest, ProtocolError, completion_request, text_or_texts, token_ids,
)

MAX_BODY_BYTES = 4 * 1024 * 1024  # a larger request body is refused with 413
OPEN_ROUTES = ("/health",)  # reachable without the API key
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings",
          "/tokenize", "/detokenize")
Embedder = Callable[[Sequence[str]], list[list[float]]]


@dataclass
class Served:
    """What the routes serve: the model's name, tokenizer, context and engine (or embedder)."""

    name: str
    tokenizer: Any
    context: int | None
    engine: Engine | None
    embedder: Embedder | None
    eos_ids: tuple[int, ...]
    decode: Callable[[list[int]], str]
    created: int


def create_app(model, tokenizer, engine: Engine | None, *, model_name: str, api_key: str | None = None,
               embedder: Embedder | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The app serving ``model`` as ``model_name``: completions and chat through ``engine``,
    embeddings through ``embedder``; with ``api_key``, every route but ``/health`` needs
    ``Authorization: Bearer <api_key>``."""
    eos = tokenizer.special_tokens.get("eos")
    served = Served(model_name, tokenizer, model.max_positions, engine, embedder,
                    (eos,) if eos is not None else (), _decoder(tokenizer), int(time.time()))
    metrics = Metrics(engine.stats if engine is not None else None)
    app = FastAPI(title="lmlab", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_routes(app, served, metrics, max_body_bytes)
    app.add_middleware(GuardMiddleware, api_key=api_key, metrics=metrics)
    return app


def _decoder(tokenizer) -> Callable[[list[int]], str]:
    """The tokenizer's decode, leaving out special tokens where it can (as ``lmlab chat`` shows replies)."""
    if "skip_special_tokens" in inspect.signature(tokenizer.decode).parameters:
        return partial(tokenizer.decode, skip_special_tokens=True)
    return tokenizer.decode


# ------------------------------------------------------------------------------ errors
def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 429 else None
        return error_response(exc.status, exc.message, exc.param, headers)

    @app.exception_handler(LmlabError)
    async def lmlab_error(request: Request, exc: LmlabError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(exc).__name__}); the server is still running")


class GuardMiddleware:
    """ASGI middleware: the API key (constant-time comparison) and the request counter by route and status."""

    def __init__(self, app, api_key: str | None, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = 500

        async def counted_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.expected is not None and path not in OPEN_ROUTES and not self._authorized(scope):
                response = error_response(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY'")
                await response(scope, receive, counted_send)
            else:
                await self.app(scope, receive, counted_send)
        finally:
            self.metrics.count_request(route, status)

    def _authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(given, self.expected)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes, 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"the request body has {declared} bytes; the limit is {limit}", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ProtocolError(f"the request body is over the limit of {limit} bytes", status=413)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None


# ------------------------------------------------------------------------------ routes
def _add_routes(app: FastAPI, served: Served, metrics: Metrics, limit: int) -> None:
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(resources.files("lmlab.serving").joinpath("playground.html").read_text(encoding="utf-8"))

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "lmlab", "max_model_len": served.context}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(served, metrics, completion_request(await read_json(request, limit), chat=False), False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(served, metrics, completion_request(await read_json(request, limit), chat=True), True)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        body = await read_json(request, limit)
        texts = text_or_texts(body, "input")
        _check_model(served, body.get("model"))
        if body.get("encoding_format", "float") != "float":
            raise ProtocolError("encoding_format must be \"float\" (base64 is not served)", "encoding_format")
        if served.embedder is None:
            raise ProtocolError(f"{served.name} is not an encoder; serve a sentence-transformers or BERT-style "
                                "directory for /v1/embeddings", "model")
        vectors = await run_in_threadpool(served.embedder, texts)
        tokens = sum(len(served.tokenizer.encode(text)) for text in texts)
        return {"object": "list", "model": served.name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        body = await read_json(request, limit)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise ProtocolError("prompt must be a string", "prompt")
        ids = served.tokenizer.encode(body["prompt"])
        return {"tokens": ids, "count": len(ids), "max_model_len": served.context}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        ids = token_ids(await read_json(request, limit), "tokens")
        _check_ids(served, ids, "tokens")
        return {"prompt": served.tokenizer.decode(ids)}


def _check_model(served: Served, name: Any) -> None:
    if name is not None and name != served.name:
        raise ProtocolError(f"the model {name!r} is not served here; this server serves {served.name!r}",
                            "model", status=404)


def _check_ids(served: Served, ids: list[int], field: str) -> None:
    vocab = served.tokenizer.vocab_size
    bad = [i for i in ids if i >= vocab]
    if bad:
        raise ProtocolError(f"{field} holds ids outside the vocabulary (size {vocab}): {bad[:5]}", field)


# ------------------------------------------------------------------------------ completions
async def _complete(served: Served, metrics: Metrics, request: CompletionRequest, chat: bool) -> Response:
    _check_model(served, request.model)
    if served.engine is None:
        raise ProtocolError(f"{served.name} is an encoder: it does not generate text; use /v1/embeddings", "model")
    prompt_texts, prompt_ids = _prompt_ids(served, request, chat)
    max_tokens = [_fitting_max_tokens(served, request, len(ids)) for ids in prompt_ids]
    generation = Generation(served.engine, served.decode, metrics, request.n)
    try:
        for ids, budget in zip(prompt_ids, max_tokens):
            for _ in range(request.n):
                generation.submit(_engine_request(served, request, ids, budget, len(generation.choices)), request.stop)
    except BaseException:
        generation.cancel()
        raise
    rid = response_id(chat)
    if request.stream:
        return StreamingResponse(_sse(served, request, generation, rid, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        async for _ in generation.stream():
            pass
    finally:
        generation.cancel()
    if generation.error():
        return error_response(500, f"generation failed: {generation.error()}")
    body = chat_body(request, generation, rid, served.name) if chat else \
        completion_body(request, generation, rid, served.name, prompt_texts)
    return JSONResponse(body)


def _prompt_ids(served: Served, request: CompletionRequest, chat: bool) -> tuple[list[str], list[list[int]]]:
    """Each prompt's text and token ids (chat: the conversation through the tokenizer's chat template)."""
    tokenizer = served.tokenizer
    if chat:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ProtocolError(f"{served.name} has no chat template; use /v1/completions", "messages")
        prompts: list[str | list[int]] = [tokenizer.apply_chat_template(request.messages, add_generation_prompt=True)]
    else:
        prompts = request.prompts
    ids = [tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt) for prompt in prompts]
    for row in ids:
        if not row:
            raise ProtocolError("the prompt is empty (no tokens); give some text", "messages" if chat else "prompt")
        _check_ids(served, row, "prompt")
    texts = [prompt if isinstance(prompt, str) else tokenizer.decode(prompt) for prompt in prompts]
    return texts, ids


def _fitting_max_tokens(served: Served, request: CompletionRequest, prompt_tokens: int) -> int:
    """``max_tokens`` (chat's default: what fits, at most 256), checked against the context."""
    context = served.context
    wanted = request.max_tokens
    if wanted is None:
        wanted = DEFAULT_CHAT_TOKENS if context is None else min(DEFAULT_CHAT_TOKENS, context - prompt_tokens)
        if wanted < 1:
            raise ProtocolError(f"the prompt has {prompt_tokens} tokens, which fills the model's context of "
                                f"{context} tokens; shorten the conversation", "messages")
    if context is not None and prompt_tokens + wanted > context:
        raise ProtocolError(f"the prompt has {prompt_tokens} tokens and max_tokens is {wanted}: {prompt_tokens + wanted} "
                            f"is over the model's context of {context} tokens; shorten the prompt or lower max_tokens",
                            "max_tokens")
    return wanted


def _engine_request(served: Served, request: CompletionRequest, ids: list[int], max_tokens: int,
                    index: int) -> EngineRequest:
    sampling = request.sampling
    return EngineRequest(
        prompt_ids=ids, max_new_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=sampling.top_k, min_p=sampling.min_p, repetition_penalty=sampling.repetition_penalty,
        presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
        eos_ids=served.eos_ids, seed=None if sampling.seed is None else sampling.seed + index,
        top_logprobs=request.top_logprobs or 0, logprobs=request.top_logprobs is not None,
    )


async def _sse(served: Served, request: CompletionRequest, generation: Generation, rid: str, chat: bool):
    """Server-sent events: a chunk per piece of text (per token with logprobs), then ``[DONE]``;
    a client that leaves cancels the engine requests."""
    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    try:
        if chat:
            for choice in generation.choices:
                yield event(stream_chunk(True, rid, served.name, {
                    "index": choice.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}))
        async for choice, piece, record in generation.stream():
            if choice.error:
                yield event({"error": {"message": f"generation failed: {choice.error}", "type": "server_error",
                                       "param": None, "code": None}})
                break
            if piece or choice.finish_reason is not None or (record is not None and request.top_logprobs is not None):
                yield event(stream_chunk(chat, rid, served.name, piece_choice(request, chat, choice, piece, record)))
        if request.include_usage and not generation.error():
            yield event({**stream_chunk(chat, rid, served.name, {}), "choices": [], "usage": generation.usage()})
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()

