"""Decoding: logits processors, strategies and the cached decode loop."""

from lmlab.generation.generate import GenerationConfig, generate, stream_tokens
from lmlab.generation.processors import top_k_filter, top_p_filter

__all__ = ["GenerationConfig", "generate", "stream_tokens", "top_k_filter", "top_p_filter"]
