"""The continuous-batching engine: one model, one scheduler, many requests.

The scheduler runs on a thread of its own (:meth:`Engine.start`) or on the caller's
(:meth:`Engine.run`, what ``lmlab serve`` does with the process's main thread: on the CPU,
PyTorch's OpenMP workers serve the thread that first ran a parallel operation fastest, and a
second thread that runs the model next to it steps markedly slower). :meth:`Engine.warm_up`
makes the decoding twin, its native weights and the int8 head screen before the first request.

Requests wait in a bounded queue (:class:`QueueFull` past ``max_queue``). The scheduler loops
over step boundaries; at each one it

1. drops cancelled requests (their rows free at once) and admits waiting ones while fewer than
   ``max_batch`` are prefilling or running;
2. prefills, at most ``prefill_chunk`` prompt tokens per boundary: the whole prompts of the
   requests admitted together run in one forward pass (left-padded to the longest, as many as
   fit in the budget), and a prompt longer than the budget runs alone in chunks, one per
   boundary, while the others keep decoding; a finished prefill gives the first token, and the
   prompt's keys/values move into a free row of the batch cache
   (:class:`~lmlab.serving.batch.BatchCache`);
3. decodes one token for every running row in one forward pass (on the native path each block
   runs its kernel over groups of :data:`~lmlab.kernels.BLOCK_ROWS` rows, see
   :class:`~lmlab.generation.fast.block.NativeBlock`), each row with its own mask and positions;
   a row that finishes leaves at once. When one greedy row runs alone and no request could join it, the
   step is speculative, as ``generate``'s (:mod:`~lmlab.generation.speculative`): the int8
   draft proposes up to ``draft_tokens`` tokens, the float32 model checks them in one pass, and
   the row takes the ones the model agrees with and the model's own next token.

Each request chooses its tokens with its own settings and random generator
(:class:`~lmlab.serving.sampler.RowSampler`). Events go to the request's ``on_event`` from the
engine thread. A request whose prefill or token choice raises gets one event with
``finish_reason="error"`` (``token_id`` -1, the message in ``error``) and the others go on; a
failing batch step ends every running request that way; an ``on_event`` that raises cancels its
own request. The engine serves decoder-only Transformer models (padding masks and KV caches);
it refuses encoder-decoder and recurrent models.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch

from lmlab.errors import LmlabError
from lmlab.generation.config import GenerationConfig
from lmlab.generation.session import decoding_model, left_pad
from lmlab.kernels import MAX_ROWS
from lmlab.models.decoder import DecoderCache
from lmlab.models.interface import DECODER, require_generative
from lmlab.serving.batch import BatchCache
from lmlab.serving.requests import EngineRequest, QueueFull, RequestHandle, TokenEvent, validate_sampling
from lmlab.serving.sampler import Choice, RowSampler, choose_tokens

STOPPED = "the engine stopped"

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """A request inside the engine: its settings, sampler, progress and, while prefilling, the
    cache its prompt fills."""

    request: EngineRequest
    on_event: Callable[[TokenEvent], None]
    handle: RequestHandle
    sampler: RowSampler | None = None
    seen: torch.Tensor | None = None  # (1, prompt + max_new) every token so far
    prompt_cache: DecoderCache | None = None
    prefilled: int = 0
    generated: int = 0
    last_token: int = -1  # the newest generated token, what the next decode step feeds
    done: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)


@dataclass
class _Counters:
    """Totals since the engine was made, for :meth:`Engine.stats`."""

    submitted: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "error": 0, "cancelled": 0})
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    decoded_rows: int = 0


class Engine:
    """Continuous batching of :class:`EngineRequest` over one decoder model (see the module
    docstring). ``decode_group``: rows per forward pass of a decode step (default: every row);
    ``draft_tokens``: proposals per speculative step of a lone greedy row (0: none), as
    ``generate``'s ``--draft-tokens``."""

    def __init__(
        self, model, *, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 256,
        decode_group: int | None = None, draft_tokens: int = GenerationConfig.draft_tokens,
    ):
        require_generative(model)
        check_servable(model)
        limits = dict(max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk, decode_group=decode_group or 1)
        for name, value in limits.items():
            if value < 1:
                raise LmlabError(f"{name} must be at least 1, got {value}")
        if not 0 <= draft_tokens < MAX_ROWS:
            raise LmlabError(f"draft_tokens must be between 0 and {MAX_ROWS - 1}, got {draft_tokens}")
        self.model, self.fast = decoding_model(model)
        self.context: int = model.max_positions
        self.vocab_size: int = model.config.vocab_size
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.draft_tokens = draft_tokens
        self.decode_group = decode_group or max_batch
        self.device = next(model.parameters()).device
        self.batch = BatchCache(self.model, max_batch, self.context)
        self._cond = threading.Condition()
        self._waiting: deque[_Live] = deque()
        self._prefilling: list[_Live] = []
        self._running: list[_Live] = []  # row i of the batch cache is request i
        self._ids = itertools.count()
        self._counters = _Counters()
        self._claimed = False  # the scheduler was started (a thread) or is run (the caller's thread)
        self._scheduler: threading.Thread | None = None  # the thread running it
        self._served = threading.Event()  # set once the scheduler returned
        self._stopping = False

    # --- the public side (any thread) -------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler on a thread of its own (a daemon)."""
        with self._cond:
            self._claim()
            threading.Thread(target=self._serve, name="lmlab-engine", daemon=True).start()

    def run(self) -> None:
        """Run the scheduler on the calling thread until :meth:`stop` is called from another
        thread, or an exception (such as ``KeyboardInterrupt``) ends it."""
        with self._cond:
            self._claim()
        self._serve()

    def warm_up(self) -> None:
        """Decode one short greedy request before serving (counted in no statistics), so the
        first client does not wait for the native weights, the head screen and the int8 draft to
        be made (its decode step is speculative). Call it before :meth:`start` or :meth:`run`, on
        the thread that will run the model."""
        with self._cond:
            if self._claimed:
                raise LmlabError("warm the engine up before starting it")
        new_tokens = min(3, self.context - 1)  # the prefill's token, then a speculative step (its draft made)
        if new_tokens < 1:
            return
        live = _Live(EngineRequest([0], new_tokens, temperature=0.0, logprobs=False), lambda event: None,
                     RequestHandle(-1))
        self._prefilling.append(live)
        with torch.inference_mode():
            while not live.done:
                self._prefill_some()
                self._decode_step()
        self._running, self._prefilling = [], []
        self.batch.clear()
        self._counters = _Counters()

    def _claim(self) -> None:
        """Mark the scheduler as started (under ``_cond``); one line if it was already."""
        if self._claimed:
            raise LmlabError("the engine was started already; make a new Engine to start again")
        self._claimed = True

    def stop(self) -> None:
        """Stop the scheduler (waiting for its step to end, unless called from inside it); every
        unfinished request gets an ``"error"`` event ("the engine stopped")."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            claimed = self._claimed
        if claimed and threading.current_thread() is not self._scheduler:
            self._served.wait()
        self._end_all(STOPPED)

    def submit(self, request: EngineRequest, on_event: Callable[[TokenEvent], None]) -> RequestHandle:
        """Queue ``request``; ``on_event`` gets its events from the engine thread. Raises
        :class:`LmlabError` for a request that cannot run (e.g. prompt plus new tokens past the
        context, naming both numbers) and :class:`QueueFull` when ``max_queue`` requests wait."""
        self.validate(request)
        with self._cond:
            if self._stopping:
                raise LmlabError("the engine is stopped; it takes no more requests")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue {self.max_queue}); retry later")
            handle = RequestHandle(next(self._ids))
            self._waiting.append(_Live(request, on_event, handle))
            self._counters.submitted += 1
            self._cond.notify_all()
        return handle

    def stats(self) -> dict:
        """What /metrics reports: queue depth, rows running and prefilling, the limits, and
        totals (requests by finish reason, tokens in and out, decode steps and rows decoded)."""
        with self._cond:
            c = self._counters
            return {
                "queue_depth": len(self._waiting), "running": len(self._running),
                "prefilling": len(self._prefilling), "max_batch": self.max_batch, "max_queue": self.max_queue,
                "submitted": c.submitted, "finished": dict(c.finished), "prompt_tokens": c.prompt_tokens,
                "generated_tokens": c.generated_tokens, "decode_steps": c.decode_steps, "decoded_rows": c.decoded_rows,
                "native": self.fast is not None,
            }

    def validate(self, request: EngineRequest) -> None:
        """:class:`LmlabError` (one line) for a request the engine cannot run."""
        prompt = request.prompt_ids
        if not prompt:
            raise LmlabError("the prompt is empty; give at least one token")
        if any(not 0 <= t < self.vocab_size for t in prompt):
            bad = next(t for t in prompt if not 0 <= t < self.vocab_size)
            raise LmlabError(f"token id {bad} is outside the model's vocabulary of {self.vocab_size}")
        if request.max_new_tokens < 1:
            raise LmlabError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        total = len(prompt) + request.max_new_tokens
        if total > self.context:
            raise LmlabError(
                f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({request.max_new_tokens}) is {total} "
                f"positions but the model's context holds {self.context}; shorten the prompt or ask for fewer tokens"
            )
        validate_sampling(request)

    # --- the scheduler thread ---------------------------------------------------------------

    def _serve(self) -> None:
        self._scheduler = threading.current_thread()
        try:
            with torch.inference_mode():
                while self._next_boundary():
                    try:
                        self._prefill_some()
                        self._decode_step()
                    except Exception as exc:  # a fault outside any one request: end those in flight, go on
                        log.exception("the engine's step failed")
                        self._reset(exc)
        finally:
            self._served.set()

    def _reset(self, exc: Exception) -> None:
        """End every prefilling and running request with an ``"error"`` event; empty the batch."""
        for live in self._prefilling + self._running:
            self._fail(live, exc)
        self._prefilling, self._running = [], []
        self.batch.clear()

    def _next_boundary(self) -> bool:
        """Wait for work; drop cancelled requests, admit waiting ones. False once stopping."""
        with self._cond:
            while not self._stopping and not (self._waiting or self._prefilling or self._running):
                self._cond.wait()
            if self._stopping:
                return False
            for live in [w for w in self._waiting if w.handle.cancelled.is_set()]:
                self._waiting.remove(live)
                self._counters.finished["cancelled"] += 1
            while self._waiting and len(self._prefilling) + len(self._running) < self.max_batch:
                self._prefilling.append(self._waiting.popleft())
        self._prefilling = [live for live in self._prefilling if not self._dropped(live)]
        self._leave([i for i, live in enumerate(self._running) if self._dropped(live)])
        return True

    def _dropped(self, live: _Live) -> bool:
        if live.handle.cancelled.is_set() and not live.done:
            live.done = True
            self._count("cancelled")
        return live.done

    def _prefill_some(self) -> None:
        """Up to ``prefill_chunk`` prompt tokens of the prefilling requests, oldest first: the
        whole prompts that fit together in one forward pass (left-padded to the longest), or
        the next chunk of one long prompt."""
        budget = self.prefill_chunk
        while budget > 0 and self._prefilling:
            group = self._whole_prompts(budget)
            if len(group) > 1:
                budget -= self._prefill_together(group)
            else:
                budget -= self._prefill_alone(self._prefilling[0], budget)
            self._prefilling = [live for live in self._prefilling if not (live.done or live.prefilled == live.prompt_len)]

    def _whole_prompts(self, budget: int) -> list[_Live]:
        """The oldest prefilling requests not begun yet whose prompts, padded to the longest of
        them, fit in ``budget`` tokens together."""
        group: list[_Live] = []
        for live in self._prefilling:
            longest = max([live.prompt_len] + [other.prompt_len for other in group])
            if live.prefilled or (len(group) + 1) * longest > budget:
                break
            group.append(live)
        return group

    def _prefill_alone(self, live: _Live, budget: int) -> int:
        """The next chunk of one request's prompt (its failure ends that request only); returns the tokens run."""
        try:
            return self._prefill_chunk(live, budget)
        except Exception as exc:
            self._fail(live, exc)
            return live.prompt_len - live.prefilled

    def _prefill_chunk(self, live: _Live, budget: int) -> int:
        """Run the next at most ``budget`` tokens of ``live``'s prompt; after the last, choose the
        first token and move the prompt into the batch. Returns the tokens run."""
        if live.sampler is None:
            self._begin(live)
            live.prompt_cache = self.model.new_cache(1, live.prompt_len)
        lo = live.prefilled
        hi = min(live.prompt_len, lo + budget)
        chunk = live.seen[:, lo:hi]  # (1, T)
        hidden = self.model.hidden_states(chunk, live.prompt_cache, lo)  # (1, T, C)
        live.prefilled = hi
        if hi == live.prompt_len:
            logits = self.model.lm_head(hidden[:, -1])  # (1, V)
            [choice] = choose_tokens([live.sampler], [self._seen(live)], logits)
            self._take(live, choice)
            if not live.done:
                self.batch.add(live.prompt_cache, live.prompt_len)
                self._running.append(live)
            live.prompt_cache = None
        return hi - lo

    def _prefill_together(self, group: list[_Live]) -> int:
        """Every prompt of ``group`` in one forward pass, left-padded to the longest; each
        request's first token, and its keys/values into the batch. A failing pass ends the
        group's requests; a failing token choice only its own. Returns the padded tokens run."""
        prompts = [live.request.prompt_ids for live in group]
        ids, mask = left_pad(prompts, 0, self.device)  # (B, L)
        longest = ids.size(1)
        try:
            for live in group:
                self._begin(live)
            cache = self.model.new_cache(len(group), longest)
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L) each prompt from 0
            hidden = self.model.hidden_states(ids, cache, 0, attention_mask=mask, position_ids=positions)  # (B, L, C)
            logits = self.model.lm_head(hidden[:, -1])  # (B, V)
        except Exception as exc:
            for live in group:
                self._fail(live, exc)
            return ids.numel()
        for row, (live, choice) in enumerate(zip(group, self._choose_all(group, logits))):
            live.prefilled = live.prompt_len
            if isinstance(choice, Exception):
                self._fail(live, choice)
                continue
            self._take(live, choice)
            if not live.done:
                self.batch.add(cache, live.prompt_len, source_row=row, source_end=longest)
                self._running.append(live)
        return ids.numel()

    def _begin(self, live: _Live) -> None:
        request = live.request
        live.sampler = RowSampler(request, live.prompt_len, self.device)
        live.seen = torch.zeros(1, live.prompt_len + request.max_new_tokens, dtype=torch.long, device=self.device)
        live.seen[0, :live.prompt_len] = torch.tensor(request.prompt_ids, dtype=torch.long)
        with self._cond:
            self._counters.prompt_tokens += live.prompt_len

    def _decode_step(self) -> None:
        """One token for every running row (or a speculative step of a lone one); finished rows leave."""
        if not self._running:
            return
        draft_tokens = self._speculation()
        if draft_tokens:
            self._speculative_step(draft_tokens)
            return
        try:
            logits = self._batch_logits()  # (n, V)
        except Exception as exc:  # the whole step failed: every running request ends
            log.exception("a decode step failed")
            for live in self._running:
                self._fail(live, exc)
            self._leave(list(range(len(self._running))))
            return
        for live, choice in zip(self._running, self._choose_all(self._running, logits)):
            if isinstance(choice, Exception):
                self._fail(live, choice)
            else:
                self._take(live, choice)
        self._leave([i for i, live in enumerate(self._running) if live.done])

    def _speculation(self) -> int:
        """How many draft tokens this step proposes: 0 unless one greedy row (argmax only) runs
        alone, no waiting request could join it now, the int8 draft exists and the cache has
        room for the check."""
        joinable = self._waiting and len(self._running) + len(self._prefilling) < self.max_batch
        if len(self._running) != 1 or joinable or self._prefilling or self.fast is None or self.draft_tokens < 1:
            return 0
        live = self._running[0]
        if not live.sampler.argmax_only or self.fast.draft() is None:
            return 0
        room = self.batch.length - self.batch.longest() - 1  # slots after the checked token's
        return max(0, min(self.draft_tokens, live.request.max_new_tokens - live.generated - 1, room))

    def _speculative_step(self, k: int) -> None:
        """The lone row's ``k`` draft proposals checked in one float32 pass: it takes the agreed
        ones and the model's next token (the tokens plain greedy decoding gives)."""
        live, batch = self._running[0], self.batch
        batch.shift_to(batch.longest())  # the row from slot 0: no padding, positions = slots
        start, cache = batch.write, batch.view(0, 1)
        token = torch.tensor([live.last_token], device=self.device)  # (1,)
        try:
            at = SimpleNamespace(model=self.model, cache=cache, position=start)
            proposals = self.fast.draft().propose(at, token, k, lambda logits, _: logits.argmax(dim=-1), None)
            checked = torch.tensor([[live.last_token] + proposals], device=self.device)  # (1, k+1)
            hidden = self.model.hidden_states(checked, cache, start)[0]  # (k+1, C)
            best = choose_tokens([live.sampler] * (k + 1), [self._seen(live)] * (k + 1), self._head(hidden))
        except Exception as exc:
            log.exception("a speculative step failed")
            self._fail(live, exc)
            self._leave([0])
            return
        agreed = 0
        while agreed < k and proposals[agreed] == best[agreed].token_id:
            agreed += 1
        batch.write = start + 1 + agreed  # the rejected proposals' slots are written again later
        with self._cond:
            self._counters.decode_steps += 1
            self._counters.decoded_rows += 1
        for choice in best[:agreed + 1]:
            self._take(live, choice)
        if live.done:
            self._leave([0])

    def _batch_logits(self) -> torch.Tensor:
        """Feed every running row its last token at the shared write index → logits (n, V)."""
        batch, n = self.batch, len(self._running)
        batch.make_room()
        tokens = torch.tensor([[live.last_token] for live in self._running], device=self.device)  # (n, 1)
        hidden = []
        for lo in range(0, n, self.decode_group):
            hi = min(n, lo + self.decode_group)
            hidden.append(self.model.hidden_states(tokens[lo:hi], batch.view(lo, hi), batch.write,
                                                   **batch.padding(lo, hi))[:, -1])  # (g, C)
        batch.advance()
        with self._cond:
            self._counters.decode_steps += 1
            self._counters.decoded_rows += n
        return self._head(torch.cat(hidden) if len(hidden) > 1 else hidden[0])

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on the running rows' hidden states (n, C), or on a lone row's checked
        positions (a speculative step), → logits (n, V): through the int8
        head screen (exact at the best logit, −inf elsewhere) for each group of
        :data:`~lmlab.kernels.MAX_ROWS` rows that only needs its argmax, in full otherwise."""
        screen = self.fast.screen() if self.fast is not None else None
        if screen is None or not any(live.sampler.argmax_only for live in self._running):
            return self.model.lm_head(hidden)  # (n, V)
        pieces = []
        for lo in range(0, hidden.size(0), MAX_ROWS):
            rows = hidden[lo:lo + MAX_ROWS]  # (g, C)
            logits = None
            if all(live.sampler.argmax_only for live in self._running[lo:lo + MAX_ROWS]):
                logits = screen.top_logits(rows, 1)  # (g, V)
            pieces.append(logits if logits is not None else self.model.lm_head(rows))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _choose_all(self, rows: list[_Live], logits: torch.Tensor) -> list[Choice | Exception]:
        """The next token of each of ``rows`` from the logits (n, V), chosen together; if that
        fails, each row chooses alone, so only a failing row's request ends (its exception)."""
        try:
            return choose_tokens([live.sampler for live in rows], [self._seen(live) for live in rows], logits)
        except Exception:
            choices: list[Choice | Exception] = []
            for i, live in enumerate(rows):
                try:
                    choices += choose_tokens([live.sampler], [self._seen(live)], logits[i:i + 1])
                except Exception as exc:
                    choices.append(exc)
            return choices

    @staticmethod
    def _seen(live: _Live) -> torch.Tensor:
        """Every token of ``live`` so far (1, L)."""
        return live.seen[:, :live.prompt_len + live.generated]

    def _take(self, live: _Live, choice: Choice) -> None:
        """Record ``live``'s next token and send its event."""
        if live.done:
            return
        live.seen[0, live.prompt_len + live.generated] = choice.token_id
        live.generated += 1
        live.last_token = choice.token_id
        finish = None
        if choice.token_id in live.request.eos_ids:
            finish = "stop"
        elif live.generated == live.request.max_new_tokens:
            finish = "length"
        event = TokenEvent(choice.token_id, choice.logprob, choice.top_logprobs, finish)
        with self._cond:
            self._counters.generated_tokens += 1
        if finish is not None:
            live.done = True
            event.prompt_tokens, event.completion_tokens = live.prompt_len, live.generated
            self._count(finish)
        self._send(live, event)

    def _fail(self, live: _Live, exc: Exception) -> None:
        """End ``live`` with an ``"error"`` event."""
        if live.done:
            return
        log.warning("request %d failed: %s", live.handle.id, exc)
        self._end(live, f"{type(exc).__name__}: {exc}")

    def _end(self, live: _Live, message: str) -> None:
        live.done = True
        self._count("error")
        self._send(live, TokenEvent(-1, 0.0, [], "error", error=message,
                                    prompt_tokens=live.prompt_len, completion_tokens=live.generated))

    def _send(self, live: _Live, event: TokenEvent) -> None:
        """Call the request's ``on_event``; one that raises cancels its request."""
        try:
            live.on_event(event)
        except Exception:
            log.exception("on_event of request %d raised; the request is cancelled", live.handle.id)
            live.handle.cancel()
            if not live.done:
                live.done = True
                self._count("cancelled")

    def _count(self, reason: str) -> None:
        with self._cond:
            self._counters.finished[reason] += 1

    def _leave(self, rows: list[int]) -> None:
        """Rows ``rows`` of the batch leave (the last running row takes each place)."""
        for row in sorted(rows, reverse=True):
            self.batch.remove(row)
            self._running[row] = self._running[-1]
            self._running.pop()

    def _end_all(self, message: str) -> None:
        """After the thread stopped: every request not finished gets an ``"error"`` event."""
        with self._cond:
            everyone = list(self._waiting) + self._prefilling + self._running
            self._waiting.clear()
        self._prefilling, self._running = [], []
        for live in everyone:
            if not live.done and not live.handle.cancelled.is_set():
                self._end(live, message)
        self.batch.clear()


def check_servable(model) -> None:
    """:class:`LmlabError` unless the engine can batch ``model``: a decoder-only Transformer
    (padding masks, a KV cache per layer, a bounded context)."""
    name = type(model).__name__
    if model.structure != DECODER:
        raise LmlabError(
            f"{name} is an encoder-decoder model; the serving engine batches decoder-only models — "
            "use `lmlab generate` for it"
        )
    if not model.takes_padding or model.max_positions is None or not isinstance(model.new_cache(1, 1), DecoderCache):
        raise LmlabError(f"{name} keeps no per-layer KV cache; the serving engine batches Transformer decoders only")
