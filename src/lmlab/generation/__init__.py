"""Decoding: logits processors, strategies and the cached decode loop."""

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

__all__ = [
    "GenerationConfig", "GenerationOutput", "LogitsPipeline", "beam_search", "generate", "generate_batch",
    "generate_seq2seq", "min_p_filter", "no_repeat_ngram_ban", "repetition_penalty", "stream_tokens",
    "top_k_filter", "top_p_filter",
]
