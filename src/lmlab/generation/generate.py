"""The decoding loop: prefill the prompt into the KV cache, then decode one token at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.processors import LogitsPipeline, check_sampling_settings
from lmlab.generation.head_screen import screened_head
from lmlab.generation.session import DecoderSession, Seq2SeqSession, last_position_logits, left_pad, next_token_logits, ready_for_decoding
from lmlab.generation.speculative import can_speculate, int8_draft, speculative_decode
from lmlab.kernels import MAX_ROWS

STRATEGIES = ("greedy", "sample", "beam")
OVERFLOW_POLICIES = ("error", "truncate")


@dataclass
class GenerationConfig:
    """How to continue a prompt.

    ``eos_ids``: generation of a row stops after it produces one of these (the CLI takes them
    from the tokenizer's ``eos`` special token). ``stop``: stop strings, applied to decoded text
    (:func:`~lmlab.generation.streaming.stream_text` and the CLI). ``draft_tokens``: greedy
    decoding or sampling of one sequence with float32 CPU weights proposes this many tokens per
    step with an int8 copy of the model and keeps those the model agrees with (the same output,
    fewer passes over the weights; see :mod:`~lmlab.generation.speculative`); 0 turns it off.
    """

    max_new_tokens: int = 200
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    num_return_sequences: int = 1
    eos_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    seed: int | None = None
    prompt_overflow: str = "error"  # or "truncate": keep the prompt's last tokens that fit
    draft_tokens: int = 6  # speculative decoding: an int8 draft's proposals per check (0: off)

    def validate(self) -> None:
        """Raise :class:`LmlabError` for impossible settings."""
        if self.strategy not in STRATEGIES:
            raise LmlabError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.max_new_tokens < 0:
            raise LmlabError(f"max-new-tokens must be ≥ 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise LmlabError(f"min-new-tokens must be ≥ 0, got {self.min_new_tokens}")
        if self.prompt_overflow not in OVERFLOW_POLICIES:
            raise LmlabError(f"prompt_overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        if not self.repetition_penalty > 0:
            raise LmlabError(f"repetition-penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise LmlabError(f"no-repeat-ngram-size must be ≥ 0, got {self.no_repeat_ngram_size}")
        if not 0 <= self.draft_tokens < MAX_ROWS:
            raise LmlabError(f"draft-tokens must be between 0 and {MAX_ROWS - 1}, got {self.draft_tokens}")
        if self.num_beams < 1:
            raise LmlabError(f"num-beams must be at least 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            raise LmlabError(f"num-return-sequences must be at least 1, got {self.num_return_sequences}")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise LmlabError(
                f"num-return-sequences ({self.num_return_sequences}) cannot exceed num-beams ({self.num_beams})"
            )
        if self.strategy == "greedy" and self.num_return_sequences > 1:
            raise LmlabError("greedy decoding returns one sequence; use --strategy sample or beam for num-return-sequences > 1")
        if self.strategy != "beam" and self.num_beams > 1:
            raise LmlabError(f"num-beams {self.num_beams} needs --strategy beam")
        if self.strategy == "sample":
            check_sampling_settings(self.temperature, self.top_k, self.top_p)
            if self.min_p is not None and not 0 <= self.min_p <= 1:
                raise LmlabError(f"min-p must be in [0, 1], got {self.min_p}")

    def reads_history(self) -> bool:
        """Whether a processor looks at the tokens so far (penalties, n-gram bans, a minimum length)."""
        return bool(self.repetition_penalty != 1.0 or self.no_repeat_ngram_size or (self.min_new_tokens and self.eos_ids))

    def decisive_logits(self) -> int | None:
        """How many of each step's best logits decide the next token: 1 for greedy decoding, k for
        top-k sampling; None (all of them) for other sampling, beam search's log-softmax, or when a
        processor that reads the history may reorder them."""
        if self.reads_history():
            return None
        if self.strategy == "greedy":
            return 1
        return self.top_k if self.strategy == "sample" else None

    def pipeline(self, prompt_len: int) -> LogitsPipeline:
        """The logits processors these settings ask for."""
        return LogitsPipeline.build(
            sampling=self.strategy == "sample", prompt_len=prompt_len, eos_ids=list(self.eos_ids),
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size,
            min_new_tokens=self.min_new_tokens,
        )


def choose_next_token(
    logits: torch.Tensor,
    config: GenerationConfig,
    generator: torch.Generator | None,
    ids: torch.Tensor | None = None,
    pipeline: LogitsPipeline | None = None,
) -> torch.Tensor:
    """Pick the next token of each row from its scores. logits: (B, V) → (B,).

    ids (B, L): every token so far, for the processors that look at history (penalties, n-grams).
    """
    if pipeline is None:
        pipeline = config.pipeline(0 if ids is None else ids.size(1))
    if ids is None:
        ids = torch.zeros(logits.size(0), 0, dtype=torch.long, device=logits.device)
    if config.strategy == "sample":
        return pipeline.sample(ids, logits.float(), generator)
    if pipeline:
        logits = pipeline(ids, logits.float())
    return logits.argmax(dim=-1)


def fit_prompt(prompt: list[int], max_positions: int | None, policy: str) -> list[int]:
    """The prompt itself, or (with ``truncate``) its last tokens that leave room for one more."""
    if not prompt:
        raise LmlabError("the prompt is empty; give at least one token of text with --prompt")
    if max_positions is None or len(prompt) < max_positions:
        return prompt
    if policy == "truncate" and max_positions > 1:  # a 1-position context leaves no room at all
        return prompt[-(max_positions - 1):]
    raise LmlabError(
        f"the prompt is {len(prompt)} tokens but the model's context holds {max_positions} "
        "(with room for one new token); shorten it or pass --truncate-prompt to keep its end"
    )


@torch.inference_mode()
def stream_tokens(model: nn.Module, prompt: list[int], config: GenerationConfig) -> Iterator[int]:
    """Yield new token ids one by one (beam search: the best sequence's, once it is found).

    Stops after an id of ``config.eos_ids`` (which is yielded). A sequence that fits the context
    runs the loop :func:`generate_batch` runs (speculative decoding included); a longer one
    rebuilds the cache from the last half of the context whenever it fills up (a sliding window),
    so greedy decoding and sampling can run longer than the model's context.
    """
    config.validate()
    max_positions = getattr(model, "max_positions", None)
    history = fit_prompt(list(prompt), max_positions, config.prompt_overflow)
    if config.strategy == "beam":
        yield from generate_batch(model, [history], config).sequences[0]
        return
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    if max_positions is None or len(history) + config.max_new_tokens <= max_positions:  # fits: the shared loop
        session = DecoderSession(model, torch.tensor([history], device=device), None, config.max_new_tokens,
                                 config.decisive_logits())
        yield from (int(token) for token in decode_steps(session, session.ids, config, generator, pad_id=0))
        return
    model = ready_for_decoding(model)
    top_logits = config.decisive_logits()
    screen = screened_head(model) if top_logits is not None and not model.training else None
    cache = model.new_cache(1, max_positions)
    seen = torch.tensor([history + [0] * config.max_new_tokens], device=device)  # (1, L + N): every token so far
    pipeline = config.pipeline(len(history))
    eos = set(config.eos_ids)
    logits = last_position_logits(model, seen[:, :len(history)], cache, 0)
    length, position = len(history), len(history)
    for _ in range(config.max_new_tokens):
        token = choose_next_token(logits, config, generator, seen[:, :length], pipeline)  # (1,)
        seen[0, length] = token[0]
        length += 1
        value = int(token)
        history.append(value)
        yield value
        if value in eos:
            return
        if max_positions is not None and position >= max_positions:
            window = history[-(max_positions // 2):]
            logits = last_position_logits(model, torch.tensor([window], device=device), cache, 0)
            position = len(window)
        else:
            logits = next_token_logits(model, token, cache, position, screen, top_logits)
            position += 1


def generate(model: nn.Module, prompt: list[int], config: GenerationConfig) -> list[int]:
    """The new token ids (without the prompt)."""
    return list(stream_tokens(model, prompt, config))


@dataclass
class GenerationOutput:
    """``sequences``: new token ids of each returned sequence (prompt-major: the
    ``num_return_sequences`` of prompt 0 first), cut after EOS; ``scores``: beam search's
    length-penalised scores (None for greedy and sampling)."""

    sequences: list[list[int]]
    scores: list[float] | None = None


def decode_steps(
    session, ids: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None, pad_id: int
) -> Iterator[torch.Tensor]:
    """Greedy or sampled decoding of a session whose prompt is ``ids`` (B, L): yields the new
    token of every row (B,) per step; finished rows (after EOS) get ``pad_id``, as in the reference."""
    B, L = ids.shape
    seen = torch.empty(B, L + config.max_new_tokens, dtype=torch.long, device=ids.device)  # every token so far
    seen[:, :L] = ids
    pipeline = config.pipeline(L)
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=ids.device) if config.eos_ids else None
    unfinished = torch.ones(B, dtype=torch.bool, device=ids.device)
    if can_speculate(session, config):
        yield from speculative_decode(session, config, int8_draft(session.model), generator)
        return
    logits = session.prefill()
    for t in range(config.max_new_tokens):
        token = choose_next_token(logits, config, generator, seen[:, :L + t], pipeline)  # (B,)
        if eos is not None:
            token = torch.where(unfinished, token, pad_id)
            unfinished &= ~torch.isin(token, eos)
        seen[:, L + t] = token
        yield token
        if t + 1 == config.max_new_tokens or (eos is not None and not bool(unfinished.any())):
            return
        logits = session.step(token)


def _cut(rows: list[list[int]], eos_ids: tuple[int, ...]) -> list[list[int]]:
    """Each row up to and including its first EOS."""
    eos = set(eos_ids)
    out = []
    for row in rows:
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        out.append(row[:end])
    return out


@torch.inference_mode()
def generate_batch(
    model: nn.Module, prompts: list[list[int]], config: GenerationConfig, pad_id: int = 0
) -> GenerationOutput:
    """Continue several prompts at once (a decoder-only model), left-padded with ``pad_id``."""
    config.validate()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)  # (B, L)
    copies = config.num_beams if config.strategy == "beam" else config.num_return_sequences
    session = DecoderSession(model, ids, mask, config.max_new_tokens, config.decisive_logits(), copies)
    return _run(session, ids.repeat_interleave(copies, dim=0), config, pad_id, len(prompts))


@torch.inference_mode()
def generate_seq2seq(
    model: nn.Module,
    inputs: list[list[int]],
    config: GenerationConfig,
    decoder_start_id: int,
    pad_id: int = 0,
) -> GenerationOutput:
    """Decode an encoder-decoder model from ``decoder_start_id`` for each input (right-padded,
    with an encoder mask); the encoder runs once, its keys/values are cached."""
    config.validate()
    device = next(model.parameters()).device
    L = max(len(x) for x in inputs)
    if min(len(x) for x in inputs) == 0:
        raise LmlabError("every input needs at least one token")
    input_ids = torch.tensor([x + [pad_id] * (L - len(x)) for x in inputs], device=device)
    input_mask = torch.tensor([[True] * len(x) + [False] * (L - len(x)) for x in inputs], device=device)
    copies = config.num_beams if config.strategy == "beam" else config.num_return_sequences
    start = torch.full((len(inputs) * copies, 1), decoder_start_id, dtype=torch.long, device=device)
    session = Seq2SeqSession(model, input_ids, input_mask if not bool(input_mask.all()) else None, start,
                             config.max_new_tokens, copies)
    return _run(session, start, config, pad_id, len(inputs))


def _run(session, ids: torch.Tensor, config: GenerationConfig, pad_id: int, batch_size: int) -> GenerationOutput:
    from lmlab.generation.beam import beam_search

    if config.max_new_tokens == 0:
        return GenerationOutput([[] for _ in range(batch_size * config.num_return_sequences)])
    if config.strategy == "beam":
        return beam_search(session, ids, config, pad_id)
    generator = torch.Generator(device=ids.device).manual_seed(config.seed) if config.seed is not None else None
    steps = list(decode_steps(session, ids, config, generator, pad_id))
    rows = torch.stack(steps, dim=1).tolist()  # (B, N)
    return GenerationOutput(_cut(rows, config.eos_ids))
