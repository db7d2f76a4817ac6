"""The attention a model used over a text (and, optionally, over what it generated from it): per
layer and head, the weights, the pre-softmax scores (position biases included) and the queries and
keys they came from, for the attention views of ``lmlab attention``.

The weights are the ones the model's layers computed in the forward pass (``capture_attention``),
so ALiBi and T5 relative biases, causal masks and the model's own scaling are all in them.
Generated tokens are produced first with the normal decode loop; one forward pass over the whole
sequence then records the attention every position used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.config import GenerationConfig
from lmlab.generation.loop import generate, generate_seq2seq
from lmlab.layers.attention import Attention, CrossAttention, capture_attention
from lmlab.models.interface import DECODER, ENCODER_DECODER
from lmlab.tokenizers.base import Tokenizer

ENCODER_SIDE, DECODER_SIDE = "encoder", "decoder"
MASKED_BELOW = -1e30  # a score this low is a key the query may not see (masks use −inf or the dtype's lowest)
BIAS_TOLERANCE = 1e-4  # scores differing from q·k/√d by more than this carry a position bias
DIGITS = 6  # decimals the view data keeps


@dataclass
class AttentionStack:
    """One kind of attention in a model ("encoder", "decoder" self-attention or "cross"):
    queries come from the token list ``queries_from``, keys from ``keys_from``.
    Tensors are float32 on the CPU, over the chosen layers (L) and heads (H)."""

    name: str
    queries_from: str
    keys_from: str
    weights: torch.Tensor  # (L, H, T, S), rows sum to 1
    scores: torch.Tensor  # (L, H, T, S) before the softmax; masked keys ≤ MASKED_BELOW
    queries: torch.Tensor  # (L, H, T, D)
    keys: torch.Tensor  # (L, H, S, D)

    @property
    def has_position_bias(self) -> bool:
        """Whether the scores carry more than q·k/√d (ALiBi, T5 relative bias)."""
        plain = self.queries @ self.keys.transpose(-2, -1) / math.sqrt(self.queries.size(-1))  # (L, H, T, S)
        visible = self.scores > MASKED_BELOW
        return bool(((self.scores - plain).abs() > BIAS_TOLERANCE)[visible].any())


@dataclass
class AttentionTrace:
    """What the attention views show: token texts per side, where generated text and the second
    sentence of a pair start, the chosen layer and head numbers, and the stacks."""

    structure: str
    ids: dict[str, list[int]]  # side ("encoder", "decoder") → token ids
    tokens: dict[str, list[str]]  # side → each token's text
    layers: list[int]
    heads: list[int]
    stacks: list[AttentionStack]
    generated_from: dict[str, int] = field(default_factory=dict)  # side → index of its first generated token
    segment_b_from: dict[str, int] = field(default_factory=dict)  # side → index where sentence B starts

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (numbers rounded to :data:`DIGITS` decimals; masked scores None)."""
        return {
            "structure": self.structure, "ids": self.ids, "tokens": self.tokens, "layers": self.layers, "heads": self.heads,
            "generated_from": self.generated_from, "segment_b_from": self.segment_b_from,
            "stacks": [_stack_dict(stack) for stack in self.stacks],
        }


def _stack_dict(stack: AttentionStack) -> dict[str, Any]:
    scores = stack.scores.double().round(decimals=DIGITS)
    return {
        "name": stack.name, "queries_from": stack.queries_from, "keys_from": stack.keys_from,
        "has_position_bias": stack.has_position_bias,
        "weights": stack.weights.double().round(decimals=DIGITS).tolist(),
        "scores": [[[[s if s > MASKED_BELOW else None for s in row] for row in head] for head in layer]
                   for layer in scores.tolist()],
        "queries": stack.queries.double().round(decimals=DIGITS).tolist(),
        "keys": stack.keys.double().round(decimals=DIGITS).tolist(),
    }


def attention_layers(model: nn.Module) -> list[Attention]:
    """The model's attention layers; an :class:`LmlabError` when it has none (a GRU)."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise LmlabError(f"{type(model).__name__} has no attention layers (a recurrent model); "
                         "give a Transformer model to look at its attention")
    return layers


def token_texts(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """What each token reads as: its decoded text, or its vocabulary entry when that decodes to
    nothing or to part of a character."""
    texts = []
    for token in ids:
        text = tokenizer.decode([token])
        texts.append(text if text and "\ufffd" not in text else tokenizer.id_to_token(token))
    return texts


def pair_ids(first: list[int], second: list[int], special_ids: set[int]) -> list[int]:
    """Two encoded sentences as one input: the second's leading special token (``[CLS]``, ``<s>``)
    dropped when the first starts with the same one, so the pair reads ``[CLS] A [SEP] B [SEP]``."""
    if first and second and second[0] == first[0] and first[0] in special_ids:
        second = second[1:]
    return first + second


def trace_attention(
    model: nn.Module,
    tokenizer: Tokenizer,
    text: str,
    *,
    text_b: str | None = None,
    generate_tokens: int = 0,
    decoder_start_id: int = 0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_tokens: int = 64,
) -> AttentionTrace:
    """Run ``model`` over ``text`` and record its attention.

    Encoders and decoders read ``text`` (and ``text_b`` after it, a sentence pair); an
    encoder-decoder encodes ``text`` and decodes ``text_b`` (teacher-forced after
    ``decoder_start_id``) or what it generates. ``generate_tokens`` first generates that many
    tokens greedily (decoders and encoder-decoders). ``layers`` and ``heads`` pick what to keep
    (default: all). More than ``max_tokens`` tokens on a side is an error naming ``--max-tokens``.
    """
    all_layers = attention_layers(model)
    special = set(tokenizer.special_tokens.values())
    if model.structure == ENCODER_DECODER:
        sides, marks = _seq2seq_sides(model, tokenizer, text, text_b, generate_tokens, decoder_start_id)
    else:
        sides, marks = _single_side(model, tokenizer, text, text_b, generate_tokens, special)
    for side, ids in sides.items():
        _check_length(side, ids, max_tokens, model.max_positions)
    stacks = _run_and_capture(model, all_layers, sides)
    n_layer, n_head = stacks[0].weights.shape[:2]
    chosen_layers = _chosen("layer", layers, n_layer)
    chosen_heads = _chosen("head", heads, n_head)
    stacks = [_select(stack, chosen_layers, chosen_heads) for stack in stacks]
    tokens = {side: token_texts(tokenizer, ids) for side, ids in sides.items()}
    return AttentionTrace(model.structure, sides, tokens, chosen_layers, chosen_heads, stacks, **marks)


def _single_side(model, tokenizer, text, text_b, generate_tokens, special) -> tuple[dict, dict]:
    """A decoder's or encoder's one token list, and where sentence B and generated text start."""
    side = DECODER_SIDE if model.structure == DECODER else ENCODER_SIDE
    ids = tokenizer.encode(text)
    marks: dict[str, dict[str, int]] = {"generated_from": {}, "segment_b_from": {}}
    if text_b is not None:
        marks["segment_b_from"][side] = len(ids)
        ids = pair_ids(ids, tokenizer.encode(text_b), special)
    if generate_tokens:
        if model.structure != DECODER:
            raise LmlabError(f"a {model.structure} model does not generate; drop --generate, "
                             "or give a decoder or encoder-decoder model")
        _check_length(side, ids, None, model.max_positions)
        marks["generated_from"][side] = len(ids)
        ids = ids + generate(model, ids, _greedy(generate_tokens, tokenizer))
    return {side: ids}, marks


def _seq2seq_sides(model, tokenizer, text, text_b, generate_tokens, decoder_start_id) -> tuple[dict, dict]:
    """An encoder-decoder's input and output token lists, and where generated text starts."""
    source = tokenizer.encode(text)
    marks: dict[str, dict[str, int]] = {"generated_from": {}, "segment_b_from": {}}
    if text_b is not None and generate_tokens:
        raise LmlabError("an encoder-decoder decodes either --text-b or what it generates; drop one of them")
    if text_b is not None:
        target = [decoder_start_id] + tokenizer.encode(text_b)
    elif generate_tokens:
        output = generate_seq2seq(model, [source], _greedy(generate_tokens, tokenizer), decoder_start_id,
                                  tokenizer.special_tokens.get("pad", 0))
        target = [decoder_start_id] + output.sequences[0]
        marks["generated_from"][DECODER_SIDE] = 1
    else:
        target = [decoder_start_id]
    return {ENCODER_SIDE: source, DECODER_SIDE: target}, marks


def _greedy(max_new_tokens: int, tokenizer: Tokenizer) -> GenerationConfig:
    eos = tokenizer.special_tokens.get("eos")
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_ids=(eos,) if eos is not None else ())


def _check_length(side: str, ids: list[int], max_tokens: int | None, max_positions: int | None) -> None:
    if not ids:
        raise LmlabError(f"the {side} text has no tokens; give some text to look at")
    if max_positions is not None and len(ids) > max_positions:
        raise LmlabError(f"the {side} side is {len(ids)} tokens, longer than the model's context of "
                         f"{max_positions}; give a shorter text or fewer --generate tokens")
    if max_tokens is not None and len(ids) > max_tokens:
        raise LmlabError(f"the {side} side is {len(ids)} tokens; the view draws at most {max_tokens} "
                         "(raise the limit with --max-tokens, or give a shorter text)")


def _run_and_capture(model: nn.Module, layers: list[Attention], sides: dict[str, list[int]]) -> list[AttentionStack]:
    """One forward pass with every attention layer keeping its weights → the stacks, in the order
    encoder, decoder, cross."""
    device = next(model.parameters()).device
    ids = {side: torch.tensor([tokens], device=device) for side, tokens in sides.items()}  # (1, T) each
    with torch.inference_mode(), capture_attention(model):
        if model.structure == ENCODER_DECODER:
            memory = model.encode(ids[ENCODER_SIDE])
            encoder = [layer for layer in layers if layer.weights is not None]
            model.decode(ids[DECODER_SIDE], memory)
            decoder = [layer for layer in layers if layer not in encoder]
            return [
                _stack(ENCODER_SIDE, ENCODER_SIDE, ENCODER_SIDE, encoder),
                _stack(DECODER_SIDE, DECODER_SIDE, DECODER_SIDE,
                       [layer for layer in decoder if not isinstance(layer, CrossAttention)]),
                _stack("cross", DECODER_SIDE, ENCODER_SIDE, [layer for layer in decoder if isinstance(layer, CrossAttention)]),
            ]
        (side,) = ids
        if model.structure == DECODER:
            model.hidden_states(ids[side])
        else:
            model(ids[side])
        return [_stack(side, side, side, layers)]


def _stack(name: str, queries_from: str, keys_from: str, layers: list[Attention]) -> AttentionStack:
    """The captured tensors of ``layers`` (batch of one) stacked over layers."""
    def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t[0].float().cpu() for t in tensors])  # (L, H, ·, ·)

    return AttentionStack(
        name, queries_from, keys_from,
        weights=stacked([layer.weights for layer in layers]), scores=stacked([layer.scores for layer in layers]),
        queries=stacked([layer.queries for layer in layers]), keys=stacked([layer.keys for layer in layers]),
    )


def _chosen(what: str, picked: Sequence[int] | None, count: int) -> list[int]:
    """``picked`` checked against ``count`` (all of them when None)."""
    if picked is None:
        return list(range(count))
    for index in picked:
        if not 0 <= index < count:
            raise LmlabError(f"there is no {what} {index}: the model has {count} {what}s per stack "
                             f"(0 to {count - 1}); fix --{what}s")
    return list(dict.fromkeys(picked))


def _select(stack: AttentionStack, layers: list[int], heads: list[int]) -> AttentionStack:
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[layers][:, heads]  # (L', H', ·, ·)

    return AttentionStack(stack.name, stack.queries_from, stack.keys_from, pick(stack.weights),
                          pick(stack.scores), pick(stack.queries), pick(stack.keys))
