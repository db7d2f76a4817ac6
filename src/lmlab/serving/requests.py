"""What a request to the serving engine is and what it gets back: :class:`EngineRequest` (the
prompt and its sampling settings) and the checks of those settings, :class:`TokenEvent` (one
generated token or the end), :class:`RequestHandle` (to cancel it) and :class:`QueueFull`."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from lmlab.errors import LmlabError
from lmlab.generation.processors import check_sampling_settings

MAX_TOP_LOGPROBS = 20


@dataclass
class EngineRequest:
    """One completion to decode: the prompt's ids and the sampling settings (temperature 0 is
    greedy). ``presence_penalty`` / ``frequency_penalty`` follow OpenAI (over the generated
    tokens); ``top_logprobs``: how many alternatives each event reports (0..20). ``logprobs``
    False: the events' ``logprob`` is nan (not computed), which lets a greedy row without
    penalties take its token from the int8 head screen on the native path (``top_logprobs``
    > 0 computes them anyway)."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    eos_ids: tuple[int, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0
    logprobs: bool = True


@dataclass
class TokenEvent:
    """One generated token, or the end of a request.

    ``logprob``: the chosen token's log-probability under the penalised distribution divided
    by the temperature (1 for greedy), before top-k / top-p / min-p; ``top_logprobs``: the best
    (id, logprob) of that distribution, best first. ``finish_reason``: None while going on;
    ``"stop"`` (an eos id was produced: it is this event's token), ``"length"``
    (``max_new_tokens`` reached) or ``"error"`` (no token: ``token_id`` -1, the message in
    ``error``). The last event carries ``prompt_tokens`` and ``completion_tokens``.
    """

    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]
    finish_reason: str | None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class QueueFull(Exception):
    """:meth:`Engine.submit` found ``max_queue`` requests already waiting."""


class RequestHandle:
    """A submitted request; :meth:`cancel` takes it out at the next step boundary."""

    def __init__(self, request_id: int):
        self.id = request_id
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """The request leaves the batch (or the queue) at the next step boundary; no events
        follow but those of a step already under way."""
        self.cancelled.set()


def validate_sampling(request: EngineRequest) -> None:
    """:class:`LmlabError` for impossible sampling settings."""
    for name in ("temperature", "repetition_penalty", "presence_penalty", "frequency_penalty", "top_p", "min_p"):
        value = getattr(request, name)
        if value is not None and not math.isfinite(value):
            raise LmlabError(f"{name} must be a finite number, got {value}")
    if request.temperature < 0:
        raise LmlabError(f"temperature must be ≥ 0 (0 is greedy), got {request.temperature}")
    if request.temperature > 0:
        check_sampling_settings(request.temperature, request.top_k, request.top_p)
    if request.min_p is not None and not 0 <= request.min_p <= 1:
        raise LmlabError(f"min_p must be in [0, 1], got {request.min_p}")
    if not request.repetition_penalty > 0:
        raise LmlabError(f"repetition_penalty must be > 0, got {request.repetition_penalty}")
    if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
        raise LmlabError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {request.top_logprobs}")
