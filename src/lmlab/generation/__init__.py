"""Decoding: logits processors, strategies and the cached decode loop, scoring and streaming."""

from lmlab.generation.beam import beam_search
from lmlab.generation.generate import (
    GenerationConfig,
    GenerationOutput,
    generate,
    generate_batch,
    generate_seq2seq,
    stream_tokens,
)
from lmlab.generation.processors import (
    LogitsPipeline,
    min_p_filter,
    no_repeat_ngram_ban,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from lmlab.generation.scoring import ContinuationScore, format_alternatives, score_continuation, top_alternatives
from lmlab.generation.session import DecoderSession, Seq2SeqSession
from lmlab.generation.streaming import TextStreamer, stream_text

__all__ = [
    "ContinuationScore", "DecoderSession", "GenerationConfig", "GenerationOutput", "LogitsPipeline",
    "Seq2SeqSession", "TextStreamer", "beam_search", "format_alternatives", "generate", "generate_batch",
    "generate_seq2seq", "min_p_filter", "no_repeat_ngram_ban", "repetition_penalty", "score_continuation",
    "stream_text", "stream_tokens", "top_alternatives", "top_k_filter", "top_p_filter",
]
