"""The data of a fine-tuning task: reading examples, a seeded validation split, truncation to the
model's context, and the batches of each epoch.

Batches are planned per epoch from (seed, epoch) alone: the examples are shuffled, grouped in
chunks of about :data:`BUCKET_BATCHES` batches, sorted by length inside each chunk (so a batch
holds examples of similar length and little padding), cut into batches of ``batch_size``
examples or of at most ``max_tokens`` padded tokens, and the batches shuffled again. Batch
``i`` of the whole run is therefore a pure function of the data, the seed and ``i``, which is
what makes a resumed run exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from lmlab.data.readers import LabelledTexts, TextPair, read_labelled_texts, read_text_pairs, table_format
from lmlab.errors import LmlabError
from lmlab.objectives import IGNORE_INDEX
from lmlab.objectives.chat_sft import chat_example, check_messages
from lmlab.tokenizers import Tokenizer

BUCKET_BATCHES = 50  # batches per length-sorted chunk
TEXT_SUFFIXES = (".txt",)


# ----------------------------------------------------------------------------- reading
def read_classification(path: str | Path, text_column: str, label_column: str,
                        label_names: Sequence[str] | None = None) -> LabelledTexts:
    """Labelled texts of a CSV/TSV/JSONL file; an empty text or label is an error naming its row.
    With ``label_names`` (the training labels) a label outside them is an error too."""
    data = read_labelled_texts(path, text_column, label_column, label_names=label_names)
    for row, (text, label) in enumerate(zip(data.texts, data.labels), start=1):
        if not text.strip():
            raise LmlabError(f"{path}, data row {row}: the {text_column!r} text is empty; fill it in or drop the row")
        if not data.label_names[label].strip():
            raise LmlabError(f"{path}, data row {row}: the {label_column!r} label is empty; fill it in or drop the row")
    return data


def read_pairs(path: str | Path, source_column: str, target_column: str) -> list[TextPair]:
    """(source, target) pairs of a CSV/TSV/JSONL file; an empty side is an error naming its row."""
    pairs = read_text_pairs(path, source_column, target_column)
    for row, pair in enumerate(pairs, start=1):
        for text, column in ((pair.source, source_column), (pair.target, target_column)):
            if not text.strip():
                raise LmlabError(f"{path}, data row {row}: the {column!r} text is empty; fill it in or drop the row")
    return pairs


def read_documents(path: str | Path, text_column: str) -> list[str]:
    """Documents for continued pretraining: the ``.txt`` files of a directory (sorted by name),
    one ``.txt`` file, or the ``text_column`` of a CSV/TSV/JSONL file (one document a row)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise LmlabError(f"{path} holds no .txt files; put one document per .txt file there")
        documents = [_text_file(file) for file in files]
    elif path.suffix in TEXT_SUFFIXES:
        documents = [_text_file(path)]
    else:
        table_format(path, None)
        documents = _column_texts(path, text_column)
    kept = [d for d in documents if d.strip()]
    if not kept:
        raise LmlabError(f"{path} holds only empty documents; give it some text")
    return kept


Conversation = list[dict[str, Any]]  # OpenAI messages: [{"role": ..., "content": ...}, ...]


def read_conversations(path: str | Path, column: str) -> list[Conversation]:
    """The conversations of a JSONL file, one a line in field ``column`` (OpenAI ``messages``);
    a missing field, malformed JSON or a message without a role is an error naming its line."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise LmlabError(f"chat data must be a .jsonl file of {{{column!r}: [messages]}} lines; got {path}")
    conversations = []
    for number, line in enumerate(_text_file(path).splitlines(), start=1):
        if line.strip():
            conversations.append(_conversation(json_record(line, path, number), column, path, number))
    if not conversations:
        raise LmlabError(f"{path} holds no conversations; write one JSON object per line")
    return conversations


def json_record(line: str, path: Path, number: int) -> dict[str, Any]:
    """One line of a JSONL file as an object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LmlabError(f"{path}, line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise LmlabError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
    return record


def _conversation(record: dict[str, Any], column: str, path: Path, number: int) -> Conversation:
    if column not in record:
        available = ", ".join(map(repr, record)) or "none"
        raise LmlabError(f"{path}, line {number}: no field {column!r} (available: {available}); pass --messages-column")
    try:
        check_messages(record[column])
    except LmlabError as exc:
        raise LmlabError(f"{path}, line {number}: {exc}") from None
    return record[column]


def chat_examples(tokenizer: Tokenizer, conversations: list[Conversation], truncation: Truncation,
                  what: str) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each conversation rendered by the chat template (labels on the
    assistant's tokens), cut by ``truncation``; a cut that leaves no assistant token is an error."""
    examples = []
    for row, messages in enumerate(conversations, start=1):
        ids, labels = chat_example(tokenizer, messages)
        ids = truncation.apply(ids, what, row)
        labels = labels[: len(ids)]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise LmlabError(f"{what} {row}: no assistant token within the model's {truncation.max_tokens} tokens; "
                             "shorten the turns before the first reply")
        examples.append((ids, labels))
    return examples


def _text_file(path: Path) -> str:
    if not path.is_file():
        raise LmlabError(f"no such file: {path}; check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LmlabError(f"{path} is not UTF-8 text (bad byte at offset {exc.start}); convert it to UTF-8") from None


def _column_texts(path: Path, column: str) -> list[str]:
    """One column of a table, read as the source side of text pairs of that column with itself."""
    return [pair.source for pair in read_text_pairs(path, column, column)]


# ----------------------------------------------------------------------------- splitting
def split_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) example indices: a seeded random ``fraction`` held out."""
    if not 0 < fraction < 1:
        raise LmlabError(f"--val-fraction must be between 0 and 1, got {fraction}")
    held_out = max(1, round(count * fraction))
    if held_out >= count:
        raise LmlabError(f"{count} examples are too few to hold out {fraction:.0%} for validation; pass --val FILE")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[held_out:]), sorted(order[:held_out])


# ----------------------------------------------------------------------------- truncation
@dataclass
class Truncation:
    """Cut token sequences to ``max_tokens``, counting the ones cut (or refusing, when not allowed)."""

    max_tokens: int
    allowed: bool = True
    cut: int = 0

    def apply(self, ids: list[int], what: str, row: int) -> list[int]:
        """``ids`` cut to the limit; without ``allowed`` a longer sequence is an error naming ``row``."""
        if len(ids) <= self.max_tokens:
            return ids
        if not self.allowed:
            raise LmlabError(
                f"{what} {row} has {len(ids)} tokens, more than the model's {self.max_tokens}; "
                "shorten it or drop --no-truncate"
            )
        self.cut += 1
        return ids[: self.max_tokens]


# ----------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class BatchSize:
    """A fixed number of examples per batch, or a budget of padded tokens per batch."""

    examples: int | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.examples is None) == (self.max_tokens is None):
            raise LmlabError("give either a batch size or a token budget per batch, not both or neither")
        if (self.examples or self.max_tokens) < 1:
            raise LmlabError("--batch-size and --max-tokens-per-batch must be at least 1")

    def cut(self, ordered: list[int], lengths: Sequence[int]) -> list[list[int]]:
        """Consecutive batches of ``ordered`` example indices."""
        if self.examples is not None:
            return [ordered[i : i + self.examples] for i in range(0, len(ordered), self.examples)]
        batches: list[list[int]] = [[]]
        for index in ordered:
            longest = max([lengths[index]] + [lengths[i] for i in batches[-1]])
            if batches[-1] and longest * (len(batches[-1]) + 1) > self.max_tokens:
                batches.append([])
            batches[-1].append(index)
        return batches

    def chunk_examples(self, mean_length: float) -> int:
        """Examples per length-sorted chunk: about :data:`BUCKET_BATCHES` batches' worth."""
        per_batch = self.examples or max(1, int(self.max_tokens // max(mean_length, 1.0)))
        return per_batch * BUCKET_BATCHES


class EpochPlan:
    """The batches (lists of example indices) of every epoch, from (seed, epoch) alone."""

    def __init__(self, lengths: Sequence[int], size: BatchSize, seed: int):
        if not lengths:
            raise LmlabError("no training examples; give a file with data rows")
        self.lengths, self.size, self.seed = list(lengths), size, seed
        self._epochs: list[list[list[int]]] = []

    def epoch(self, number: int) -> list[list[int]]:
        """The batches of epoch ``number`` (0-based), in training order."""
        while len(self._epochs) <= number:
            self._epochs.append(self._plan(len(self._epochs)))
        return self._epochs[number]

    def locate(self, index: int) -> tuple[int, int]:
        """(epoch, batch within it) of the run's ``index``-th batch."""
        epoch = 0
        while index >= len(self.epoch(epoch)):
            index -= len(self.epoch(epoch))
            epoch += 1
        return epoch, index

    def batch(self, index: int) -> list[int]:
        """The example indices of the run's ``index``-th batch."""
        epoch, position = self.locate(index)
        return self.epoch(epoch)[position]

    def epoch_ends(self, epochs: int) -> list[int]:
        """The batch counts after which each of the first ``epochs`` epochs ends."""
        ends, total = [], 0
        for number in range(epochs):
            total += len(self.epoch(number))
            ends.append(total)
        return ends

    def _plan(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        chunk = self.size.chunk_examples(sum(self.lengths) / len(self.lengths))
        batches: list[list[int]] = []
        for start in range(0, len(order), chunk):
            ordered = sorted(order[start : start + chunk], key=lambda i: self.lengths[i])
            batches += self.size.cut(ordered, self.lengths)
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffle]


def sequential_batches(count: int, batch_size: int) -> list[list[int]]:
    """Indices 0..count-1 in order, in batches of ``batch_size`` (for evaluation)."""
    return [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]

