"""What a generation call is asked to do (:class:`GenerationConfig`) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.errors import LmlabError
from lmlab.generation.processors import check_sampling_settings
from lmlab.kernels import MAX_ROWS

STRATEGY_NAMES = ("greedy", "sample", "beam")
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
        import math

        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise LmlabError(f"{name.replace('_', '-')} must be a finite number, got {value}")
        if self.strategy not in STRATEGY_NAMES:
            raise LmlabError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}")
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


@dataclass
class GenerationOutput:
    """``sequences``: new token ids of each returned sequence (prompt-major: the
    ``num_return_sequences`` of prompt 0 first), cut after EOS; ``scores``: beam search's
    length-penalised scores (None for greedy and sampling)."""

    sequences: list[list[int]]
    scores: list[float] | None = None
