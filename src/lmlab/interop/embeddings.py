"""Sentence embeddings from encoder directories in the sentence-transformers layout.

``modules.json`` lists the pipeline: a Transformer module (the Hugging Face model, in the
directory itself or a subfolder), a Pooling module (``1_Pooling/config.json``: mean, cls or max
over the real tokens) and optionally a Normalize module (unit length). A plain Hugging Face encoder
directory without ``modules.json`` is mean-pooled, not normalised. Pooling always reads the
encoder's hidden states (its backbone), whatever head the checkpoint carries: a masked-LM or
classifier directory embeds like its bare ``BertModel``, as sentence-transformers does.

The embedding map (``lmlab embeddings``) reads these vectors, or a model's token embeddings
(:func:`word_vectors`), projects them to two dimensions (:func:`pca_2d`) and lists each one's
nearest neighbours by cosine similarity (:func:`nearest_neighbours`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError, read_json_file
from lmlab.interop.pretrained import LoadedPretrained, load_hf
from lmlab.models.inspection import token_embedding
from lmlab.tokenizers import Tokenizer

MODULES_FILE = "modules.json"
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
}


@dataclass
class SentenceEncoder:
    """An encoder, its tokenizer and how to turn hidden states into one vector per text."""

    loaded: LoadedPretrained
    pooling: str = "mean"  # cls, mean or max
    normalize: bool = False

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Tokenizer:
        return self.loaded.tokenizer

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, C) embeddings of ``texts`` (with the tokenizer's special tokens, e.g. [CLS] … [SEP])."""
        if self.tokenizer is None:
            raise LmlabError(f"{self.loaded.source} has no tokenizer files; cannot embed text")
        limit = self.loaded.model_config.context_length
        rows = [self.tokenizer.encode(text, add_special_tokens=True)[:limit] for text in texts]
        pad = self.tokenizer.special_tokens.get("pad", 0)
        width = max(len(row) for row in rows)
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        mask = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in rows])
        hidden = self.model.backbone(ids, attention_mask=mask)  # (N, T, C), before any head
        return pool(hidden, mask, self.pooling, self.normalize)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """(N, T, C) hidden states → (N, C) by ``mode`` over the real positions; unit length if asked."""
    weights = mask.to(hidden.dtype)[:, :, None]  # (N, T, 1)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "mean":
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    elif mode == "max":
        pooled = hidden.masked_fill(~mask[:, :, None], torch.finfo(hidden.dtype).min).amax(dim=1)
    else:
        raise LmlabError(f"unknown pooling {mode!r}; choose cls, mean or max")
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


def load_sentence_encoder(directory: str | Path) -> SentenceEncoder:
    """The sentence encoder of a sentence-transformers (or plain Hugging Face encoder) directory."""
    folder = Path(directory)
    modules = _read_modules(folder)
    model_dir, pooling, normalize = folder, "mean", False
    for module in modules:
        kind = str(module.get("type", ""))
        where = folder / str(module.get("path", ""))
        if kind.endswith("Transformer"):
            model_dir = where
        elif kind.endswith("Pooling"):
            pooling = _pooling_mode(where / "config.json")
        elif kind.endswith("Normalize"):
            normalize = True
        else:
            raise LmlabError(f"{folder / MODULES_FILE}: module type {kind!r} is not supported by lmlab")
    loaded = load_hf(model_dir)
    if loaded.model_config.backbone != "encoder":
        raise LmlabError(f"{directory} is a {loaded.family} model, not an encoder; sentence embeddings need BERT/RoBERTa")
    return SentenceEncoder(loaded, pooling, normalize)


def is_sentence_encoder_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory in the sentence-transformers layout (it has ``modules.json``)."""
    return (Path(path) / MODULES_FILE).is_file()


@torch.inference_mode()
def word_vectors(model: nn.Module, tokenizer: Tokenizer, words: Sequence[str]) -> torch.Tensor:
    """(N, C) input embeddings of ``words``: a word the tokenizer splits into several tokens gets
    the mean of its tokens' embedding rows. Words are encoded as given, without special tokens
    (for byte-level BPE, ``" cat"`` and ``"cat"`` are different tokens)."""
    table = token_embedding(model).weight  # (V, C)
    rows = []
    for word in words:
        ids = tokenizer.encode(word)
        if not ids:
            raise LmlabError(f"the word {word!r} encodes to no tokens; give words with visible characters")
        rows.append(table[torch.tensor(ids, device=table.device)].float().mean(dim=0).cpu())  # (C,)
    return torch.stack(rows)  # (N, C)


def pca_2d(vectors: torch.Tensor) -> torch.Tensor:
    """(N, C) vectors → (N, 2) coordinates on their first two principal components (centred, by
    SVD in float64). Each axis is signed so that its largest loading is positive. Centred points
    span at most N - 1 directions: with two points (or C = 1) the second coordinate is 0."""
    centred = vectors.double() - vectors.double().mean(dim=0)  # (N, C)
    _, singular, axes = torch.linalg.svd(centred, full_matrices=False)  # axes: (K, C), K = min(N, C)
    largest = axes.abs().argmax(dim=1, keepdim=True)  # (K, 1)
    axes = axes * axes.gather(1, largest).sign()
    coords = centred @ axes[:min(2, vectors.size(0) - 1)].T  # (N, 1 or 2)
    return F.pad(coords, (0, 2 - coords.size(1)))  # (N, 2)


def nearest_neighbours(vectors: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """For each of the (N, C) vectors, the ``k`` others most similar by cosine similarity, as
    (index, similarity), most similar first."""
    similarity = cosine_similarity_matrix(vectors.double())  # (N, N)
    similarity.fill_diagonal_(float("-inf"))
    top = similarity.topk(min(k, vectors.size(0) - 1), dim=1)
    return [list(zip(index, value)) for index, value in zip(top.indices.tolist(), top.values.tolist())]


def cosine_similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, N) cosine similarities of (N, C) embeddings."""
    unit = F.normalize(embeddings, p=2, dim=-1)
    return unit @ unit.T


def _read_modules(folder: Path) -> list[dict]:
    file = folder / MODULES_FILE
    if not file.is_file():
        return []
    modules = read_json_file(file, "fix or re-download it", list)
    return sorted(modules, key=lambda m: m.get("idx", 0))


def _pooling_mode(file: Path) -> str:
    if not file.is_file():
        raise LmlabError(f"no pooling config {file}; the sentence-transformers directory is incomplete")
    config = read_json_file(file, "fix or re-download it", dict)
    modes = [mode for key, mode in POOLING_MODES.items() if config.get(key)]
    unsupported = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in POOLING_MODES]
    if len(modes) != 1 or unsupported:
        raise LmlabError(
            f"{file}: lmlab supports exactly one of {', '.join(POOLING_MODES)}; got {modes + unsupported}"
        )
    return modes[0]
