"""What the trainer trains on: an objective turns token windows into batches, a loss and metrics.

The trainer only knows the :class:`TrainingTask` interface. Each pretraining objective is an
:class:`ObjectiveSpec` in :data:`OBJECTIVES`: the backbone it trains, the special tokens it needs,
how it turns windows into an :class:`~lmlab.objectives.LMBatch`, and how the model is called;
every objective's loss is :func:`~lmlab.objectives.token_cross_entropy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import nn

from lmlab.data.windows import TokenSpan
from lmlab.errors import LmlabError
from lmlab.evaluation import evaluate_batches
from lmlab.models import auxiliary_loss
from lmlab.objectives import (
    DEFAULT_DENOISERS,
    DenoisingConfig,
    LMBatch,
    causal_lm_batch,
    denoising_batch,
    mlm_batch,
    prefix_lm_batch,
    span_corruption_batch,
    token_cross_entropy,
    ul2_batch,
)
from lmlab.objectives.span_corruption import t5_num_noise_spans, t5_num_noise_tokens
from lmlab.tokenizers import Tokenizer

Transform = Callable[[torch.Tensor, torch.Generator], LMBatch]  # windows (B, L+1) → batch
SPECIAL_TOKEN_STRINGS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "mask": "<mask>"}
MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")  # UL2's R, X and S denoisers
SENTENCE_ENDS = (".", "!", "?")
SEQ2SEQ_ROOM = 3  # tokens an encoder-decoder objective may add to a document (BOS, EOS, mode token)


class TrainingTask(Protocol):
    """A source of batches plus the loss and evaluation that go with them."""

    tokens_per_batch: int

    def train_batch(self, generator: torch.Generator) -> LMBatch: ...

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]: ...


# ----------------------------------------------------------------------------- model calls
def call_decoder(model: nn.Module, batch: LMBatch) -> torch.Tensor:
    if batch.prefix_lengths is None:
        return model(batch.input_ids)
    return model(batch.input_ids, prefix_lengths=batch.prefix_lengths)


def call_encoder(model: nn.Module, batch: LMBatch) -> torch.Tensor:
    return model(batch.input_ids, attention_mask=batch.attention_mask)


def call_encoder_decoder(model: nn.Module, batch: LMBatch) -> torch.Tensor:
    return model(batch.input_ids, batch.decoder_input_ids, attention_mask=batch.attention_mask,
                 decoder_attention_mask=batch.decoder_attention_mask)


# ----------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class ObjectiveSpec:
    """How one objective trains: backbone, special tokens, batch transform and model call."""

    backbone: str
    roles: tuple[str, ...]  # special-token roles the tokenizer must have
    make_transform: Callable[[Tokenizer, int], Transform]  # (tokenizer, window length) → transform
    call: Callable[[nn.Module, LMBatch], torch.Tensor]
    sentinels: bool = False  # needs T5 sentinels <extra_id_k>
    mode_tokens: bool = False  # needs UL2's [NLU] [NLG] [S2S]


def _causal(tokenizer: Tokenizer, window: int) -> Transform:
    return lambda windows, generator: causal_lm_batch(windows)


def _prefix(tokenizer: Tokenizer, window: int) -> Transform:
    return prefix_lm_batch


def _mlm(tokenizer: Tokenizer, window: int) -> Transform:
    ids = tokenizer.special_tokens
    options = dict(mask_id=ids["mask"], pad_id=ids["pad"], vocab_size=tokenizer.vocab_size,
                   special_ids=sorted(set(ids.values())))
    return lambda windows, generator: mlm_batch(windows[:, :-1], generator, **options)


def _documents(windows: torch.Tensor) -> list[torch.Tensor]:
    """Rows of (B, L+1) windows as documents leaving room for the tokens seq2seq objectives add."""
    return list(windows[:, : windows.size(1) - SEQ2SEQ_ROOM])


def _span_corruption(tokenizer: Tokenizer, window: int) -> Transform:
    ids = tokenizer.special_tokens
    options = dict(sentinel_ids=sentinel_ids(tokenizer, window), eos_id=ids["eos"], pad_id=ids["pad"])
    return lambda windows, generator: span_corruption_batch(_documents(windows), generator, **options)


def _bart(tokenizer: Tokenizer, window: int) -> Transform:
    ids = tokenizer.special_tokens
    ends = [i for i in (tokenizer.token_to_id(t) for t in SENTENCE_ENDS) if i is not None]
    config = DenoisingConfig(permute_sentences=bool(ends))
    options = dict(mask_id=ids["mask"], pad_id=ids["pad"], config=config, sentence_end_ids=ends,
                   bos_id=ids["bos"], eos_id=ids["eos"])
    return lambda windows, generator: denoising_batch(_documents(windows), generator, **options)


def _ul2(tokenizer: Tokenizer, window: int) -> Transform:
    ids = tokenizer.special_tokens
    nlu, nlg, s2s = (tokenizer.token_to_id(t) for t in MODE_TOKENS)
    options = dict(sentinel_ids=sentinel_ids(tokenizer, window), eos_id=ids["eos"], pad_id=ids["pad"],
                   nlu_id=nlu, nlg_id=nlg, s2s_id=s2s)
    return lambda windows, generator: ul2_batch(_documents(windows), generator, **options).batch


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "causal-lm": ObjectiveSpec("decoder", (), _causal, call_decoder),
    "prefix-lm": ObjectiveSpec("decoder", (), _prefix, call_decoder),
    "mlm": ObjectiveSpec("encoder", ("pad", "mask"), _mlm, call_encoder),
    "span-corruption": ObjectiveSpec("encoder-decoder", ("pad", "eos"), _span_corruption,
                                     call_encoder_decoder, sentinels=True),
    "bart": ObjectiveSpec("encoder-decoder", ("pad", "bos", "eos", "mask"), _bart, call_encoder_decoder),
    "ul2": ObjectiveSpec("encoder-decoder", ("pad", "eos"), _ul2, call_encoder_decoder,
                         sentinels=True, mode_tokens=True),
}


def sentinel_count(window: int) -> int:
    """Sentinels enough for the most spans any span-corruption denoiser cuts from one document."""
    length = max(2, window - SEQ2SEQ_ROOM + 1)
    spans = (t5_num_noise_spans(t5_num_noise_tokens(length, d.rate), d.mean_span_length)
             for d in DEFAULT_DENOISERS if d.group != "S")
    return max(max(spans), t5_num_noise_spans(t5_num_noise_tokens(length, 0.15), 3.0))


def sentinel_ids(tokenizer: Tokenizer, window: int) -> list[int]:
    return [tokenizer.token_to_id(f"<extra_id_{k}>") for k in range(sentinel_count(window))]


def tokens_needed(objective: str, window: int) -> tuple[dict[str, str], list[str]]:
    """(role → token string, extra tokens) that ``objective`` needs in the vocabulary."""
    spec = OBJECTIVES[objective]
    roles = {role: SPECIAL_TOKEN_STRINGS[role] for role in spec.roles}
    extra = [f"<extra_id_{k}>" for k in range(sentinel_count(window))] if spec.sentinels else []
    return roles, extra + (list(MODE_TOKENS) if spec.mode_tokens else [])


def check_objective(objective: str, backbone: str, tokenizer: Tokenizer, window: int) -> None:
    """Fail clearly when the backbone or the tokenizer cannot serve ``objective``."""
    spec = OBJECTIVES[objective]
    if backbone != spec.backbone:
        raise LmlabError(
            f"objective {objective} trains a model.backbone={spec.backbone} model, not {backbone}; "
            f"add --set model.backbone={spec.backbone}"
        )
    roles, extra = tokens_needed(objective, window)
    missing = [role for role in roles if role not in tokenizer.special_tokens]
    missing += [token for token in extra if tokenizer.token_to_id(token) is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise LmlabError(
            f"objective {objective} needs special tokens the tokenizer lacks: {shown}; "
            "use data.tokenizer=char (which adds them) or a tokenizer that has them"
        )


# ----------------------------------------------------------------------------- the task
class ObjectiveTask:
    """Trains an objective on random windows of a token span; evaluates on the validation span."""

    def __init__(self, objective: str, tokenizer: Tokenizer, train: TokenSpan, val: TokenSpan,
                 batch_size: int, window: int):
        train.check_window(window)
        val.check_window(window)
        self.spec = OBJECTIVES[objective]
        self.transform = self.spec.make_transform(tokenizer, window)
        self.train_tokens, self.val_tokens = train, val
        self.batch_size, self.window = batch_size, window
        self.tokens_per_batch = batch_size * window

    def train_batch(self, generator: torch.Generator) -> LMBatch:
        return self.transform(self.train_tokens.random_windows(self.batch_size, self.window, generator), generator)

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor:
        """The objective's loss plus the model's MoE auxiliary losses (zero when dense)."""
        return token_cross_entropy(self.spec.call(model, batch), batch) + auxiliary_loss(model)

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]:
        """Validation metrics on ``num_batches`` random windows, the same ones at every call."""
        generator = torch.Generator().manual_seed(seed)
        batches = (
            self.transform(self.val_tokens.random_windows(self.batch_size, self.window, generator), generator)
            for _ in range(num_batches)
        )
        return evaluate_batches(model, batches, self.spec.call)

    def evaluate_span(self, model: nn.Module, span: TokenSpan, batch_size: int, seed: int = 0,
                      progress: bool = False) -> dict[str, float]:
        """Metrics over every window of ``span`` (non-overlapping), noised with a fixed seed; with
        ``progress``, a progress bar on stderr when the evaluation is long."""
        generator = torch.Generator().manual_seed(seed)
        batches = self._batches(span, batch_size, generator)
        return evaluate_batches(model, batches, self.spec.call, progress=progress, total=self._batch_count(span, batch_size))

    def _batches(self, span: TokenSpan, batch_size: int, generator: torch.Generator) -> Iterator[LMBatch]:
        for windows in span.sequential_windows(batch_size, self.window):
            if self._scores_window_of(windows.size(1)):
                yield self.transform(windows, generator)

    def _batch_count(self, span: TokenSpan, batch_size: int) -> int:
        """How many batches :meth:`_batches` yields for ``span``."""
        full = max(0, (len(span) - 1) // self.window)
        tail = len(span) - full * self.window
        return -(-full // batch_size) + int(tail >= 2 and self._scores_window_of(tail))

    def _scores_window_of(self, length: int) -> bool:
        """Whether a window of ``length`` tokens is scored: full ones always, a shorter tail by decoders only."""
        return length == self.window + 1 or self.spec.backbone == "decoder"
