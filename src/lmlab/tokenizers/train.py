"""Train a subword tokenizer with the Hugging Face ``tokenizers`` library.

Two kinds, each set up like the model family that made it famous:

* ``"bpe"`` — byte-level BPE as in GPT-2/RoBERTa: ``ByteLevel`` pre-tokenizer (no prefix space),
  all 256 byte symbols in the initial alphabet, ``ByteLevel`` decoder. Lossless on any text.
  Default specials ``<pad> <s> </s> <unk> <mask>`` (roles pad, bos, eos, unk, mask).
* ``"wordpiece"`` — as in BERT: ``BertNormalizer`` (lower-casing, accent stripping),
  ``BertPreTokenizer``, WordPiece with ``##`` continuations. Default specials
  ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (roles pad, unk, cls, sep, mask; bos is ``[CLS]`` and eos
  is ``[SEP]``).

Special tokens get the first ids, in the order given. Encoding with ``add_special_tokens=True``
wraps a text as ``<s> … </s>`` (bpe) or ``[CLS] … [SEP]`` (wordpiece). BPE training is
deterministic; the library's WordPiece trainer numbers the same learned vocabulary differently
from run to run (hash order), so save a trained tokenizer rather than retraining it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmlab.errors import LmlabError
from lmlab.tokenizers.hf import HFTokenizer, first_line, infer_roles

TOKENIZER_TRAINING_KINDS = ("bpe", "wordpiece")
BYTE_ALPHABET_SIZE = 256
MAX_TRAINED_VOCAB_SIZE = 1 << 21  # ~2M ids: far above any real vocabulary, far below what the trainer cannot allocate

DEFAULT_ROLES: dict[str, dict[str, str]] = {
    "bpe": {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "wordpiece": {
        "pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]",
        "bos": "[CLS]", "eos": "[SEP]",
    },
}
DEFAULT_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "bpe": ("<pad>", "<s>", "</s>", "<unk>", "<mask>"),
    "wordpiece": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
}
# The roles whose tokens wrap a text when special tokens are added: (start, end).
_TEMPLATE_ROLES = {"bpe": ("bos", "eos"), "wordpiece": ("cls", "sep")}


def train_tokenizer(
    kind: str,
    files: str | Path | Sequence[str | Path] | Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] | None = None,
) -> HFTokenizer:
    """Train a ``kind`` tokenizer (one of ``TOKENIZER_TRAINING_KINDS``) of ``vocab_size`` ids.

    ``files`` is a path or a list of paths of UTF-8 text files, or any other iterable (e.g. a
    generator) of texts. ``special_tokens`` replaces the kind's defaults; their roles are then
    inferred from the usual token strings.
    """
    if kind not in TOKENIZER_TRAINING_KINDS:
        raise LmlabError(
            f"unknown tokenizer kind {kind!r} to train; "
            f"choose one of {', '.join(TOKENIZER_TRAINING_KINDS)}"
        )
    specials = list(DEFAULT_SPECIAL_TOKENS[kind] if special_tokens is None else special_tokens)
    roles = DEFAULT_ROLES[kind] if special_tokens is None else infer_roles(specials)
    _check_sizes(kind, vocab_size, min_frequency, specials)
    if kind == "bpe":
        backend, trainer = _byte_level_bpe(vocab_size, min_frequency, specials)
    else:
        backend, trainer = _wordpiece(vocab_size, min_frequency, specials, roles)
    _train(kind, backend, trainer, files)
    _add_template(backend, *(roles.get(role) for role in _TEMPLATE_ROLES[kind]))
    return HFTokenizer(backend, roles)


def _check_sizes(kind: str, vocab_size: int, min_frequency: int, specials: list[str]) -> None:
    """Reject a vocabulary too small for the specials (and, for bpe, the 256 bytes), or beyond
    :data:`MAX_TRAINED_VOCAB_SIZE` (the tokenizers library aborts the process on sizes it
    cannot allocate, so they never reach it)."""
    smallest = len(specials) + 1 + (BYTE_ALPHABET_SIZE - 1 if kind == "bpe" else 0)
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        extra = f" + {BYTE_ALPHABET_SIZE} bytes" if kind == "bpe" else " + 1"
        raise LmlabError(
            f"vocab_size {vocab_size!r} is too small for a {kind} tokenizer: it needs at least "
            f"{smallest} ({len(specials)} special tokens{extra})"
        )
    if vocab_size > MAX_TRAINED_VOCAB_SIZE:
        raise LmlabError(
            f"vocab_size {vocab_size} is beyond the largest trainable vocabulary ({MAX_TRAINED_VOCAB_SIZE}); "
            "real vocabularies have 1k-300k tokens"
        )
    if not isinstance(min_frequency, int) or min_frequency < 0:
        raise LmlabError(f"min_frequency must be a non-negative integer, got {min_frequency!r}")


def _byte_level_bpe(
    vocab_size: int, min_frequency: int, specials: list[str]
) -> tuple[HFBackend, trainers.Trainer]:
    """An untrained GPT-2-style byte-level BPE tokenizer and its trainer."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return backend, trainer


def _wordpiece(
    vocab_size: int, min_frequency: int, specials: list[str], roles: dict[str, str]
) -> tuple[HFBackend, trainers.Trainer]:
    """An untrained BERT-style WordPiece tokenizer and its trainer."""
    if "unk" not in roles:
        raise LmlabError(
            "a wordpiece tokenizer needs an unknown token: add [UNK] or <unk> to special_tokens"
        )
    backend = HFBackend(models.WordPiece(unk_token=roles["unk"], continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    return backend, trainer


def _train(
    kind: str,
    backend: HFBackend,
    trainer: trainers.Trainer,
    files: str | Path | Sequence[str | Path] | Iterable[str],
) -> None:
    """Train on files (a path or a list/tuple of paths) or on an iterable of texts."""
    if isinstance(files, (str, Path)):
        files = [files]
    paths = [str(path) for path in _existing(files)] if isinstance(files, Sequence) else None
    try:
        if paths is not None:
            backend.train(paths, trainer)
        else:
            backend.train_from_iterator(files, trainer)
    except Exception as exc:  # the library raises bare Exceptions (bad UTF-8, non-str items)
        reason = first_line(exc)
        raise LmlabError(f"training the {kind} tokenizer failed: {reason}") from exc


def _existing(files: Sequence[str | Path]) -> list[Path]:
    """``files`` as paths, after checking that there is at least one and that each exists."""
    if not files:
        raise LmlabError("no training files given; pass at least one text file")
    paths = [Path(path) for path in files]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(repr(path[:80]) for path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise LmlabError(
            f"training files not found: {shown}{more}; to train on in-memory texts pass an "
            "iterator, e.g. iter(texts)"
        )
    return paths


def _add_template(backend: HFBackend, start: str | None, end: str | None) -> None:
    """Make ``add_special_tokens=True`` wrap a text as ``start … end`` (and pairs as BERT does)."""
    if start is None or end is None:
        return
    backend.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}",
        pair=f"{start} $A {end} $B:1 {end}:1",
        special_tokens=[(start, backend.token_to_id(start)), (end, backend.token_to_id(end))],
    )
