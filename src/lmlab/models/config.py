"""``ModelConfig``: one dataclass that describes every model lmlab builds.

Variants are chosen by naming them (``position="rope"``, ``ffn="swiglu"``, ...); each field's
valid names live in its ``metadata["choices"]`` so config files and ``--set`` overrides are checked
against them with a one-line error that lists the valid ones. Mixture-of-Experts settings are the
nested :class:`MoEConfig` (``--set model.moe.num_experts=4``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.errors import LmlabError
from lmlab.layers.feedforward import FFN_KINDS
from lmlab.layers.moe import ROUTERS
from lmlab.layers.norms import NORMS, PLACEMENTS

POSITIONS = ("learned", "sinusoidal", "sinusoidal-halves", "rope", "alibi", "t5", "none")
BACKBONES = ("decoder", "encoder", "encoder-decoder")


def choice(default: str, choices: tuple[str, ...]):
    """A string field restricted to ``choices``."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class MoEConfig:
    """Mixture-of-Experts feed-forward layers; ``num_experts = 0`` keeps every layer dense."""

    num_experts: int = 0
    top_k: int = 2  # token-choice: experts per token (1: Switch, 2: GShard / Mixtral)
    router: str = choice("token-choice", ROUTERS)
    capacity_factor: float = 1.25  # expert capacity relative to an even split of the tokens
    drop_tokens: bool = True  # token-choice: drop tokens past capacity (False: no capacity limit)
    every: int = 1  # every n-th layer (the n-th, 2n-th, ...) is MoE; 2 gives Switch's every other layer
    balance_loss_weight: float = 0.01  # weight of the load-balancing loss E·Σ fᵢ·Pᵢ
    z_loss_weight: float = 0.001  # weight of the router z-loss

    def is_moe_layer(self, index: int) -> bool:
        """Whether block ``index`` (0-based) has an MoE feed-forward."""
        return self.num_experts > 0 and (index + 1) % self.every == 0

    def validate(self) -> None:
        """Raise :class:`LmlabError` for settings that cannot build an MoE layer."""
        if self.num_experts < 0 or self.every < 1:
            raise LmlabError("model.moe.num_experts must be ≥ 0 and model.moe.every ≥ 1")
        if self.num_experts and not 1 <= self.top_k <= self.num_experts:
            raise LmlabError(
                f"model.moe.top_k ({self.top_k}) must be between 1 and model.moe.num_experts ({self.num_experts})"
            )
        if not self.capacity_factor > 0:
            raise LmlabError(f"model.moe.capacity_factor must be positive, got {self.capacity_factor}")


@dataclass
class ModelConfig:
    """Architecture of a language model; ``vocab_size`` is filled in from the tokenizer."""

    arch: str = choice("transformer", ("transformer", "gru"))
    backbone: str = choice("decoder", BACKBONES)
    head: str = choice("lm", ("lm", "classifier", "none"))  # classifier: sequence classification (encoder: pooled; decoder: last token); none: encoder hidden states
    vocab_size: int = 0
    n_layer: int = 6  # per stack (the encoder and the decoder each have n_layer)
    n_head: int = 6
    n_kv_heads: int | None = None  # None: as many as n_head; fewer gives grouped-query attention
    d_model: int = 384
    d_ff: int | None = None  # None: 4 × d_model
    head_size: int | None = None  # None: d_model // n_head; set, heads need not split d_model (T5 v1.1 d_kv)
    context_length: int = 256
    dropout: float = 0.1
    bias: bool = True
    position: str = choice("learned", POSITIONS)
    rope_base: float = 10000.0
    rope_fraction: float = 1.0  # share of each head's dimensions RoPE rotates
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    norm: str = choice("layernorm", NORMS)
    norm_placement: str = choice("pre", tuple(PLACEMENTS))
    norm_eps: float = 1e-5  # epsilon of every norm (BERT 1e-12, T5 1e-6, Llama rms_norm_eps)
    ffn: str = choice("gelu", FFN_KINDS)
    moe: MoEConfig = field(default_factory=MoEConfig)
    tie_embeddings: bool = True  # LM head shares the (decoder's) token embedding
    share_embeddings: bool = True  # encoder-decoder: one token embedding for both stacks
    num_labels: int = 2  # classifier head: number of classes
    # classifier head: first token, mean over tokens, or first token → dense → tanh (BERT pooler / RoBERTa head)
    pooling: str = choice("cls", ("cls", "mean", "cls-dense-tanh"))
    head_bias: bool = False  # encoder-decoder LM head has a bias (BART final_logits_bias)
    rnn_hidden: int = 1024  # GRU baseline: hidden size (d_model is its embedding size)

    @property
    def ffn_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    def validate(self) -> None:
        """Raise :class:`LmlabError` for values that cannot build a model."""
        positive = ("n_layer", "n_head", "d_model", "context_length", "rnn_hidden", "num_labels")
        for name in positive:
            if getattr(self, name) < 1:
                raise LmlabError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.d_ff is not None and self.d_ff < 1:
            raise LmlabError(f"model.d_ff must be a positive integer (or null for 4 × d_model), got {self.d_ff}")
        if self.arch == "transformer":
            self._validate_heads()
            self.moe.validate()

    def _validate_heads(self) -> None:
        if self.head_size is not None and self.head_size < 1:
            raise LmlabError(f"model.head_size must be a positive integer, got {self.head_size}")
        if self.head_size is None and self.d_model % self.n_head:
            raise LmlabError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        kv = self.n_kv_heads or self.n_head
        if kv < 1 or self.n_head % kv:
            raise LmlabError(
                f"model.n_head ({self.n_head}) must be divisible by model.n_kv_heads ({kv})"
            )
        if not 0.0 < self.rope_fraction <= 1.0 or int(self.head_dim * self.rope_fraction) < 2:
            raise LmlabError(
                f"model.rope_fraction must be in (0, 1] and rotate at least 2 of the {self.head_dim} head dimensions"
            )


def estimated_parameter_count(config: ModelConfig) -> int:
    """A lower bound on the parameters ``config`` builds, computed without allocating them: the
    token embedding, learned positions, attention and feed-forward matrices (every expert of an
    MoE layer), an untied LM head; biases and norms left out. Lets callers refuse a model far
    beyond memory before building it."""
    d, vocab = config.d_model, config.vocab_size
    if config.arch == "gru":
        hidden = config.rnn_hidden
        stacks = 2 if config.backbone == "encoder-decoder" else 1
        gru = 3 * hidden * (d + hidden) + (config.n_layer - 1) * 3 * hidden * (2 * hidden)
        return vocab * d + stacks * gru + hidden * vocab
    heads, kv_heads = config.n_head, config.n_kv_heads or config.n_head
    attention = 2 * d * config.head_dim * (heads + kv_heads)
    dense_ffn = 2 * d * config.ffn_width
    ffn = sum(dense_ffn * (config.moe.num_experts if config.moe.is_moe_layer(i) else 1)
              for i in range(config.n_layer))
    blocks = config.n_layer * attention + ffn
    if config.backbone == "encoder-decoder":
        blocks = 2 * blocks + config.n_layer * attention  # the decoder's cross-attention
    positions = config.context_length * d if config.position == "learned" else 0
    untied_head = vocab * d if config.head == "lm" and not config.tie_embeddings else 0
    return vocab * d + positions + blocks + untied_head
