"""The decoding loop: prefill the prompt into the KV cache, then decode one token at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.processors import apply_temperature, check_sampling_settings, top_k_filter, top_p_filter

STRATEGIES = ("greedy", "sample")
OVERFLOW_POLICIES = ("error", "truncate")


@dataclass
class GenerationConfig:
    """How to continue a prompt."""

    max_new_tokens: int = 200
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    prompt_overflow: str = "error"  # or "truncate": keep the prompt's last tokens that fit

    def validate(self) -> None:
        """Raise :class:`LmlabError` for impossible settings."""
        if self.strategy not in STRATEGIES:
            raise LmlabError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.max_new_tokens < 0:
            raise LmlabError(f"max-new-tokens must be ≥ 0, got {self.max_new_tokens}")
        if self.prompt_overflow not in OVERFLOW_POLICIES:
            raise LmlabError(f"prompt_overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        if self.strategy == "sample":
            check_sampling_settings(self.temperature, self.top_k, self.top_p)


def choose_next_token(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token of each row from its scores. logits: (B, V) → (B,)."""
    if config.strategy == "greedy":
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), config.temperature)
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


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


def prefill(model: nn.Module, ids: torch.Tensor, cache) -> torch.Tensor:
    """Run the prompt (B, T) through the model, filling the cache; logits of the last position (B, V)."""
    return model(ids, cache, 0)[:, -1]


def decode_one_token(model: nn.Module, token: torch.Tensor, cache, position: int) -> torch.Tensor:
    """Feed one token (B,) at ``position``; logits for the next one (B, V)."""
    return model(token[:, None], cache, position)[:, -1]


@torch.inference_mode()
def stream_tokens(model: nn.Module, prompt: list[int], config: GenerationConfig) -> Iterator[int]:
    """Yield new token ids one by one.

    When the context fills up, the cache is rebuilt from the last half of the context (a
    sliding window), so generation can run longer than the model's context.
    """
    config.validate()
    max_positions = getattr(model, "max_positions", None)
    history = fit_prompt(list(prompt), max_positions, config.prompt_overflow)
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    device = next(model.parameters()).device
    cache = model.new_cache(1, max_positions)
    logits = prefill(model, torch.tensor([history], device=device), cache)
    position = len(history)
    for _ in range(config.max_new_tokens):
        token = choose_next_token(logits, config, generator)  # (1,)
        history.append(int(token))
        yield int(token)
        if max_positions is not None and position >= max_positions:
            window = history[-(max_positions // 2):]
            logits = prefill(model, torch.tensor([window], device=device), cache)
            position = len(window)
        else:
            logits = decode_one_token(model, token, cache, position)
            position += 1


def generate(model: nn.Module, prompt: list[int], config: GenerationConfig) -> list[int]:
    """The new token ids (without the prompt)."""
    return list(stream_tokens(model, prompt, config))
