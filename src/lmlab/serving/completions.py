"""One HTTP completion request as engine requests, and the engine's token events as OpenAI JSON.

A :class:`Generation` submits one engine request per choice (prompts × ``n``), receives their
:class:`~lmlab.serving.requests.TokenEvent` s on the event loop (the engine calls back from its own
thread) and keeps, per :class:`Choice`, the text so far: UTF-8-safe pieces with the stop strings
cut (:class:`~lmlab.generation.streaming.TextStreamer`), the tokens with their log-probabilities,
and why it finished. A stop string cancels its engine request at once. The ``*_body`` and
``*_chunk`` functions write OpenAI's response and streaming-chunk objects.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from lmlab.generation.streaming import TextStreamer
from lmlab.serving.engine import Engine
from lmlab.serving.requests import EngineRequest, QueueFull, RequestHandle, TokenEvent
from lmlab.serving.metrics import Metrics
from lmlab.serving.protocol import CompletionRequest, ProtocolError

RETRY_AFTER_S = 1  # what a 429 asks the client to wait
ERROR = "error"  # the engine's finish reason for a request it could not finish


@dataclass
class TokenRecord:
    """One generated token as the response reports it."""

    text: str
    logprob: float
    alternatives: list[tuple[str, float]]  # best first


@dataclass
class Choice:
    """One sequence being generated for a request."""

    index: int
    prompt_tokens: int
    streamer: TextStreamer
    eos_ids: tuple[int, ...]
    handle: RequestHandle | None = None
    text: str = ""
    tokens: list[TokenRecord] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None  # the engine's message when it could not finish this choice

    def take(self, event: TokenEvent, token_text: Callable[[int], str]) -> tuple[str, TokenRecord | None]:
        """Add the engine's event; the new text (maybe empty) and the token's record (None for EOS
        and for the engine's error event)."""
        if event.finish_reason == ERROR:
            self.finish_reason, self.error = ERROR, event.error or "the engine failed"
            return "", None
        self.completion_tokens += 1
        if event.token_id in self.eos_ids:
            piece, record = self.streamer.flush(), None
            self.finish_reason = "stop"
        else:
            piece = self.streamer.push(event.token_id)
            record = TokenRecord(token_text(event.token_id), event.logprob,
                                 [(token_text(i), lp) for i, lp in event.top_logprobs])
            self.tokens.append(record)
            if self.streamer.stopped:
                self.finish_reason = "stop"
                if self.handle is not None:
                    self.handle.cancel()
            elif event.finish_reason is not None:
                piece += self.streamer.flush()
                self.finish_reason = event.finish_reason
        self.text += piece
        return piece, record


class Generation:
    """The engine requests of one HTTP request and the events they send back."""

    def __init__(self, engine: Engine, decode: Callable[[list[int]], str], metrics: Metrics, n: int):
        self.engine, self.decode, self.metrics = engine, decode, metrics
        self.n = n  # choices per prompt: a prompt's tokens count once in the usage
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()
        self.choices: list[Choice] = []
        self.started = time.perf_counter()
        self._last_token: dict[int, float] = {}

    def submit(self, request: EngineRequest, stop: tuple[str, ...]) -> None:
        """Start one more choice; 429 when the engine's queue is full (the choices already started are cancelled)."""
        choice = Choice(len(self.choices), len(request.prompt_ids), TextStreamer(self.decode, stop), request.eos_ids)
        self.choices.append(choice)
        try:
            choice.handle = self.engine.submit(request, self._callback(choice.index))
        except QueueFull:
            self.cancel()
            raise ProtocolError(f"the server is busy (its queue is full); retry in {RETRY_AFTER_S} s",
                                status=429) from None

    def _callback(self, index: int) -> Callable[[TokenEvent], None]:
        def on_event(event: TokenEvent) -> None:  # runs on the engine's thread
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))
            except RuntimeError:  # the event loop has closed: the server is shutting down
                pass
        return on_event

    async def stream(self) -> AsyncIterator[tuple[Choice, str, TokenRecord | None]]:
        """(choice, new text, token record) for every token until every choice has finished."""
        unfinished = sum(choice.finish_reason is None for choice in self.choices)
        while unfinished:
            index, event = await self.events.get()
            choice = self.choices[index]
            if choice.finish_reason is not None:  # a cancelled choice's late events
                continue
            self._time(index)
            piece, record = choice.take(event, self._token_text)
            if choice.finish_reason is not None:
                unfinished -= 1
            yield choice, piece, record
        self.metrics.count_tokens(self.prompt_tokens, self.completion_tokens)

    def error(self) -> str | None:
        """The engine's message if it failed any choice."""
        return next((choice.error for choice in self.choices if choice.error), None)

    def _time(self, index: int) -> None:
        now = time.perf_counter()
        last = self._last_token.get(index)
        if last is None:
            self.metrics.observe_first_token(now - self.started)
        else:
            self.metrics.observe_next_token(now - last)
        self._last_token[index] = now

    def _token_text(self, token_id: int) -> str:
        return self.decode([token_id])

    def cancel(self) -> None:
        """Cancel every choice still running (the client left, or the request failed)."""
        for choice in self.choices:
            if choice.finish_reason is None and choice.handle is not None:
                choice.handle.cancel()

    @property
    def prompt_tokens(self) -> int:
        return sum(choice.prompt_tokens for choice in self.choices[:: self.n])

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


# ------------------------------------------------------------------------------ OpenAI objects
def response_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def completion_logprobs(tokens: list[TokenRecord], offset: int = 0) -> dict:
    """The legacy completions ``logprobs`` object: tokens, their logprobs, alternatives and text offsets."""
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(t.alternatives) for t in tokens], "text_offset": offsets}


def chat_logprobs(tokens: list[TokenRecord]) -> dict:
    """The chat ``logprobs`` object: ``content``, one entry per token with its alternatives."""
    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t.text, t.logprob), "top_logprobs": [entry(a, lp) for a, lp in t.alternatives]}
                        for t in tokens]}


def completion_body(request: CompletionRequest, generation: Generation, rid: str, model: str,
                    prompt_texts: list[str]) -> dict:
    """The whole ``text_completion`` response once every choice has finished."""
    choices = []
    for choice in generation.choices:
        prefix = prompt_texts[choice.index // request.n] if request.echo else ""
        logprobs = completion_logprobs(choice.tokens, len(prefix)) if request.top_logprobs is not None else None
        choices.append({"index": choice.index, "text": prefix + choice.text, "logprobs": logprobs,
                        "finish_reason": choice.finish_reason})
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": generation.usage()}


def chat_body(request: CompletionRequest, generation: Generation, rid: str, model: str) -> dict:
    """The whole ``chat.completion`` response once every choice has finished."""
    choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.tokens) if request.top_logprobs is not None else None,
                "finish_reason": c.finish_reason} for c in generation.choices]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": generation.usage()}


def stream_chunk(chat: bool, rid: str, model: str, choice: dict) -> dict:
    """One streaming chunk carrying one choice's delta."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}


def piece_choice(request: CompletionRequest, chat: bool, choice: Choice, piece: str,
                 record: TokenRecord | None) -> dict:
    """A chunk's choice: the new text, this token's logprobs if asked, the finish reason on the last."""
    logprobs = None
    if request.top_logprobs is not None and record is not None:
        logprobs = chat_logprobs([record]) if chat else completion_logprobs([record])
    body = {"index": choice.index, "logprobs": logprobs, "finish_reason": choice.finish_reason}
    if chat:
        return {**body, "delta": {"content": piece} if piece or record else {}}
    return {**body, "text": piece}
