"""Decoding: logits processors, strategies over one cached decode loop, scoring and streaming;
the native fast path is swapped in by :mod:`~lmlab.generation.fast` when decoding starts."""

from lmlab.generation.beam import BeamSearch
from lmlab.generation.config import GenerationConfig, GenerationOutput
from lmlab.generation.loop import STRATEGIES, generate, generate_batch, generate_seq2seq, stream_tokens, strategy_for
from lmlab.generation.processors import (
    LogitsPipeline,
    min_p_filter,
    no_repeat_ngram_ban,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from lmlab.generation.scoring import ContinuationScore, format_alternatives, score_continuation, top_alternatives
from lmlab.generation.session import DecoderSession, Seq2SeqSession, SlidingWindowSession
from lmlab.generation.strategies import Greedy, Sampling, Strategy
from lmlab.generation.streaming import TextStreamer, stream_text

__all__ = [
    "STRATEGIES", "BeamSearch", "ContinuationScore", "DecoderSession", "GenerationConfig", "GenerationOutput",
    "Greedy", "LogitsPipeline", "Sampling", "Seq2SeqSession", "SlidingWindowSession", "Strategy", "TextStreamer",
    "format_alternatives", "generate", "generate_batch", "generate_seq2seq", "min_p_filter", "no_repeat_ngram_ban",
    "repetition_penalty", "score_continuation", "stream_text", "stream_tokens", "strategy_for", "top_alternatives",
    "top_k_filter", "top_p_filter",
]
