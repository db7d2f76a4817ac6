"""What the serving tests share: a tiny random character-level decoder, its constants, and the
running server a test talks to (:class:`TinyServer`). A module of its own, not ``conftest``:
another test folder's ``conftest`` may be the one Python imports under that name."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: browser.py, tiny_models.py

from lmlab.generation import GenerationConfig, generate  # noqa: E402
from lmlab.models import ModelConfig, build_model  # noqa: E402
from lmlab.serving.engine import Engine  # noqa: E402
from lmlab.tokenizers import CharTokenizer  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog. THE END!\n"
EOS = "<|end|>"
MODEL_NAME = "tiny-char"
CONTEXT = 96
BODY_LIMIT = 64 * 1024  # the test app's request-body limit (the default is larger)
HANG_GUARD_S = 3600  # only catches a hung server; never a limit on how long it may take


@dataclass
class TinyServer:
    """A running server and what it serves."""

    url: str
    model: torch.nn.Module
    tokenizer: CharTokenizer
    engine: Engine

    def greedy_text(self, prompt: str, max_tokens: int) -> str:
        """What ``generate`` makes of ``prompt`` greedily (EOS ends it and is not text)."""
        eos = self.tokenizer.special_tokens["eos"]
        config = GenerationConfig(strategy="greedy", max_new_tokens=max_tokens, eos_ids=(eos,))
        ids = generate(self.model, self.tokenizer.encode(prompt), config)
        return self.tokenizer.decode([i for i in ids if i != eos])


def tiny_decoder() -> tuple[torch.nn.Module, CharTokenizer]:
    """A two-layer random decoder over the characters of :data:`TEXT` and an EOS token."""
    tokenizer = CharTokenizer(sorted(set(TEXT)), special_tokens={"eos": EOS})
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, d_model=32, context_length=CONTEXT,
                         dropout=0.0)
    return build_model(config).eval(), tokenizer
