"""The OpenAI request bodies the server takes, checked field by field.

A request body is plain JSON (a dict); :func:`completion_request` turns it into a
:class:`CompletionRequest` or raises :class:`ProtocolError` naming the field that is wrong (the
server answers 400 with that message). Fields the server does not know are ignored, as OpenAI's
own server ignores them; ``None`` means "the default" for every optional field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_N = 16  # choices per request
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DEFAULT_CHAT_TOKENS = 256  # at most this many for chat without max_tokens (never past the context)
CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")


class ProtocolError(Exception):
    """A request the server refuses: the HTTP status, a one-line message and the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass
class Sampling:
    """The sampling settings every choice of a request shares (engine semantics: temperature 0 is greedy)."""

    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass
class CompletionRequest:
    """A checked ``/v1/completions`` or ``/v1/chat/completions`` body.

    ``prompts`` holds text or token ids (completions) or one rendered conversation (chat, filled in
    by the server from ``messages``); ``max_tokens`` None means "as many as fit" (chat's default).
    """

    model: str | None
    prompts: list[str | list[int]]
    messages: list[dict[str, str]] | None
    max_tokens: int | None
    sampling: Sampling
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    top_logprobs: int | None  # None: no logprobs; 0..20 alternatives per token
    echo: bool = False  # completions: the prompt's text comes before the generated text


def completion_request(body: Any, chat: bool) -> CompletionRequest:
    """Check a completions (``chat`` False) or chat-completions body; :class:`ProtocolError` names the bad field."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object")
    messages = _messages(body) if chat else None
    prompts = [] if chat else _prompts(body)
    return CompletionRequest(
        model=_optional(body, "model", str),
        prompts=prompts,
        messages=messages,
        max_tokens=_max_tokens(body, chat),
        sampling=_sampling(body),
        stop=_stop(body),
        n=_integer(body, "n", 1, low=1, high=MAX_N),
        stream=_boolean(body, "stream", False),
        include_usage=_include_usage(body),
        top_logprobs=_chat_logprobs(body) if chat else _completion_logprobs(body),
        echo=False if chat else _boolean(body, "echo", False),
    )


def text_or_texts(body: Any, name: str) -> list[str]:
    """``body[name]`` as a non-empty list of strings (one string or a list of them): embeddings' ``input``."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object")
    value = body.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    raise ProtocolError(f"{name} must be a string or a non-empty list of strings", name)


def token_ids(body: Any, name: str) -> list[int]:
    """``body[name]`` as a list of non-negative integers: ``/detokenize``'s ``tokens``."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object")
    value = body.get(name)
    if not isinstance(value, list) or not all(_is_int(item) and item >= 0 for item in value):
        raise ProtocolError(f"{name} must be a list of non-negative token ids", name)
    return value


# ------------------------------------------------------------------------------ the fields
def _prompts(body: dict) -> list[str | list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(item) for item in prompt):
            return [prompt]
        if all(isinstance(item, str) for item in prompt):
            return list(prompt)
        if all(isinstance(item, list) and item and all(_is_int(i) for i in item) for item in prompt):
            return [list(item) for item in prompt]
    raise ProtocolError("prompt must be a string, a list of strings, a list of token ids or a list of such lists",
                        "prompt")


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("messages must be a non-empty list of {role, content} objects", "messages")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ProtocolError(f"{where} must be an object with role and content", where)
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise ProtocolError(f"{where}.role must be one of {', '.join(CHAT_ROLES)}", f"{where}.role")
        checked.append({"role": role, "content": _content_text(content, f"{where}.content")})
    return checked


def _content_text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                         and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    raise ProtocolError(f"{where} must be a string or a list of text parts", where)


def _max_tokens(body: dict, chat: bool) -> int | None:
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    default = None if chat else DEFAULT_COMPLETION_TOKENS
    return _integer(body, name, default, low=1)


def _sampling(body: dict) -> Sampling:
    top_k = _integer(body, "top_k", None, low=-1)
    return Sampling(
        temperature=_number(body, "temperature", 1.0, low=0.0, high=100.0),
        top_p=_number(body, "top_p", None, low=0.0, high=1.0, low_open=True),
        top_k=None if top_k is None or top_k <= 0 else top_k,  # 0 and -1 mean "off", as in vLLM
        min_p=_number(body, "min_p", None, low=0.0, high=1.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, low=0.0, high=100.0, low_open=True),
        presence_penalty=_number(body, "presence_penalty", 0.0, low=-2.0, high=2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, low=-2.0, high=2.0),
        seed=_integer(body, "seed", None, low=-(2 ** 63), high=2 ** 64 - 1),
    )


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(item, str) and item for item in stop):
        raise ProtocolError("stop must be a non-empty string or a list of non-empty strings", "stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise ProtocolError(f"stop has {len(stop)} strings; give at most {MAX_STOP_STRINGS}", "stop")
    return tuple(stop)


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ProtocolError("stream_options must be an object such as {\"include_usage\": true}", "stream_options")
    return _boolean(options, "include_usage", False, prefix="stream_options.")


def _completion_logprobs(body: dict) -> int | None:
    """Completions: ``logprobs`` is the number of alternatives per token (0..20), absent for none."""
    return _integer(body, "logprobs", None, low=0, high=MAX_TOP_LOGPROBS)


def _chat_logprobs(body: dict) -> int | None:
    """Chat: ``logprobs`` true asks for them, ``top_logprobs`` for that many alternatives."""
    wanted = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, low=0, high=MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise ProtocolError("top_logprobs needs logprobs set to true", "top_logprobs")
    return (top or 0) if wanted else None


# ------------------------------------------------------------------------------ typed fields
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(body: dict, name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise ProtocolError(f"{name} must be a {kind.__name__}", name)
    return value


def _boolean(body: dict, name: str, default: bool, prefix: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ProtocolError(f"{prefix}{name} must be true or false, got {value!r}", prefix + name)
    return value


def _integer(body: dict, name: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise ProtocolError(f"{name} must be an integer, got {value!r}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ProtocolError(f"{name} must be {_range(low, high, False)}, got {value}", name)
    return value


def _number(body: dict, name: str, default: float | None, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{name} must be a finite number, got {value!r}", name)
    if value < low or value > high or (low_open and value == low):
        raise ProtocolError(f"{name} must be {_range(low, high, low_open)}, got {value}", name)
    return float(value)


def _range(low: float | None, high: float | None, low_open: bool) -> str:
    if high is None:
        return f"at least {low}"
    return f"above {low} and at most {high}" if low_open else f"between {low} and {high}"
