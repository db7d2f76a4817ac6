"""``ModelConfig``: one dataclass that describes every model lmlab builds.

Variants are chosen by naming them (``position="learned"``, ``ffn="gelu"``, ...); each field's
valid names live in its ``metadata["choices"]`` so config files and ``--set`` overrides are checked
against them with a one-line error that lists the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.errors import LmlabError
from lmlab.layers.feedforward import FFN_KINDS
from lmlab.layers.norms import NORMS


def choice(default: str, choices: tuple[str, ...]):
    """A string field restricted to ``choices``."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class ModelConfig:
    """Architecture of a language model; ``vocab_size`` is filled in from the tokenizer."""

    arch: str = choice("transformer", ("transformer", "gru"))
    backbone: str = choice("decoder", ("decoder",))
    vocab_size: int = 0
    n_layer: int = 6
    n_head: int = 6
    n_kv_heads: int | None = None  # None: as many as n_head; fewer gives grouped-query attention
    d_model: int = 384
    d_ff: int | None = None  # None: 4 × d_model
    context_length: int = 256
    dropout: float = 0.1
    bias: bool = True
    position: str = choice("learned", ("learned",))
    norm: str = choice("layernorm", NORMS)
    norm_placement: str = choice("pre", ("pre",))
    ffn: str = choice("gelu", FFN_KINDS)
    tie_embeddings: bool = True
    rnn_hidden: int = 1024  # GRU baseline: hidden size (d_model is its embedding size)

    @property
    def ffn_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    def validate(self) -> None:
        """Raise :class:`LmlabError` for values that cannot build a model."""
        positive = ("n_layer", "n_head", "d_model", "context_length", "rnn_hidden")
        for name in positive:
            if getattr(self, name) < 1:
                raise LmlabError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.arch == "transformer":
            self._validate_heads()

    def _validate_heads(self) -> None:
        if self.d_model % self.n_head:
            raise LmlabError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        kv = self.n_kv_heads or self.n_head
        if kv < 1 or self.n_head % kv:
            raise LmlabError(
                f"model.n_head ({self.n_head}) must be divisible by model.n_kv_heads ({kv})"
            )
