"""Generation calls: continue prompts with a strategy over a decoding session.

:func:`generate_batch` (decoder-only), :func:`generate_seq2seq` (encoder-decoder) and
:func:`stream_tokens` (one prompt, token by token, also past the model's context) build a session
(:mod:`~lmlab.generation.session`) and hand it to the strategy the config names
(:mod:`~lmlab.generation.strategies`).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.beam import BeamSearch
from lmlab.generation.config import GenerationConfig, GenerationOutput
from lmlab.generation.session import DecoderSession, Seq2SeqSession, SlidingWindowSession, left_pad
from lmlab.generation.strategies import Greedy, Sampling, Strategy

STRATEGIES: dict[str, Strategy] = {"greedy": Greedy(), "sample": Sampling(), "beam": BeamSearch()}


def strategy_for(config: GenerationConfig) -> Strategy:
    """The strategy ``config.strategy`` names (validated)."""
    return STRATEGIES[config.strategy]


def _generator(config: GenerationConfig, device: torch.device) -> torch.Generator | None:
    return torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None


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
    decodes as :func:`generate_batch` does (speculative decoding included); a longer one slides
    a window over the context (:class:`~lmlab.generation.session.SlidingWindowSession`), so
    greedy decoding and sampling can run longer than the model's context.
    """
    config.validate()
    strategy = strategy_for(config)
    history = fit_prompt(list(prompt), model.max_positions, config.prompt_overflow)
    if strategy.whole_sequences:
        yield from generate_batch(model, [history], config).sequences[0]
        return
    device = next(model.parameters()).device
    ids = torch.tensor([history], device=device)
    top_logits = strategy.decisive_logits(config)
    if model.max_positions is None or len(history) + config.max_new_tokens <= model.max_positions:
        session = DecoderSession(model, ids, None, config.max_new_tokens, top_logits)
    else:
        session = SlidingWindowSession(model, ids, config.max_new_tokens, top_logits)
    for token in strategy.steps(session, ids, config, _generator(config, device), pad_id=0):
        yield int(token)


def generate(model: nn.Module, prompt: list[int], config: GenerationConfig) -> list[int]:
    """The new token ids (without the prompt)."""
    return list(stream_tokens(model, prompt, config))


@torch.inference_mode()
def generate_batch(
    model: nn.Module, prompts: list[list[int]], config: GenerationConfig, pad_id: int = 0
) -> GenerationOutput:
    """Continue several prompts at once (a decoder-only model), left-padded with ``pad_id``."""
    config.validate()
    strategy = strategy_for(config)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)  # (B, L)
    copies = strategy.copies(config)
    session = DecoderSession(model, ids, mask, config.max_new_tokens, strategy.decisive_logits(config), copies)
    return decode(session, strategy, ids.repeat_interleave(copies, dim=0), config, pad_id, len(prompts))


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
    strategy = strategy_for(config)
    device = next(model.parameters()).device
    L = max(len(x) for x in inputs)
    if min(len(x) for x in inputs) == 0:
        raise LmlabError("every input needs at least one token")
    input_ids = torch.tensor([x + [pad_id] * (L - len(x)) for x in inputs], device=device)
    input_mask = torch.tensor([[True] * len(x) + [False] * (L - len(x)) for x in inputs], device=device)
    copies = strategy.copies(config)
    start = torch.full((len(inputs) * copies, 1), decoder_start_id, dtype=torch.long, device=device)
    session = Seq2SeqSession(model, input_ids, input_mask if not bool(input_mask.all()) else None, start,
                             config.max_new_tokens, copies)
    return decode(session, strategy, start, config, pad_id, len(inputs))


def decode(
    session, strategy: Strategy, ids: torch.Tensor, config: GenerationConfig, pad_id: int, batch_size: int
) -> GenerationOutput:
    """Run ``strategy`` over ``session`` (prompts ``ids``, one row per copy) to the end."""
    if config.max_new_tokens == 0:
        return GenerationOutput([[] for _ in range(batch_size * config.num_return_sequences)])
    return strategy.run(session, ids, config, _generator(config, ids.device), pad_id)
