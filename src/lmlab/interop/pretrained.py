"""Load pretrained models: a Hugging Face model directory (``config.json`` + weights + tokenizer
files) or a GGUF file, into an lmlab model with the same outputs as the reference implementation.

``load_pretrained(path)`` picks the reader from the path; ``load_hf`` and ``load_gguf`` are the two
readers. Families: GPT-2, Llama (and Mistral without sliding window), BERT, RoBERTa, T5, BART;
GGUF files of the Llama architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop.hf_config import CONFIG_FILE, HFConfig, read_hf_config
from lmlab.interop.weights import TensorSource, WeightSource
from lmlab.models import ModelConfig
from lmlab.tokenizers import Tokenizer, load_pretrained_tokenizer

GGUF_SUFFIX = ".gguf"
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)


@dataclass
class LoadedPretrained:
    """A pretrained model converted to lmlab, with its tokenizer (None when the directory has no
    tokenizer files) and the family it was read as (``"gpt2"``, ``"llama"``, ``"gguf-llama"``, ...)."""

    model: nn.Module
    tokenizer: Tokenizer | None
    model_config: ModelConfig
    family: str
    source: Path
    extra: dict[str, Any] = field(default_factory=dict)


def _families() -> dict[str, Callable[[HFConfig, TensorSource], tuple[nn.Module, ModelConfig]]]:
    from lmlab.interop import bart, bert, gpt2, llama, pegasus, t5

    return {
        "gpt2": gpt2.load,
        "llama": llama.load,
        "mistral": llama.load,
        "bert": bert.load,
        "roberta": bert.load,
        "t5": t5.load,
        "bart": bart.load,
        "pegasus": pegasus.load,
    }


def is_pretrained_path(path: str | Path) -> bool:
    """Whether ``path`` is a GGUF file or a Hugging Face model directory (config.json with a
    ``model_type``) rather than an lmlab run."""
    path = Path(path)
    if path.is_file():
        return path.suffix == GGUF_SUFFIX
    config = path / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return True  # let read_hf_config report the broken file


def load_pretrained(path: str | Path) -> LoadedPretrained:
    """A GGUF file or a Hugging Face model directory, as an lmlab model (eval mode) + tokenizer."""
    path = Path(path)
    if path.suffix == GGUF_SUFFIX or path.is_file():
        from lmlab.interop.gguf_llama import load_gguf

        return load_gguf(path)
    return load_hf(path)


def load_hf(directory: str | Path) -> LoadedPretrained:
    """A Hugging Face model directory: ``config.json``, the weights (safetensors or ``.bin``,
    single or sharded), and the tokenizer files when present. Weights are streamed one tensor at
    a time into the freshly built model; unused or missing tensors are an error listing them."""
    folder = Path(directory)
    if not folder.is_dir():
        raise LmlabError(f"{directory} is not a directory; pass a Hugging Face model directory or a .gguf file")
    families = _families()
    hf = read_hf_config(folder, supported=tuple(families))
    source = WeightSource.from_directory(folder)
    model, config = families[hf.model_type](hf, source)
    model.eval()
    extra = {"labels": class_labels(hf, config.num_labels)} if config.head == "classifier" else {}
    return LoadedPretrained(model, pretrained_tokenizer(folder), config, hf.model_type, folder, extra)


def class_labels(hf: HFConfig, num_labels: int) -> list[str]:
    """A classifier's class names in id order, from ``id2label`` (LABEL_i where it names none)."""
    id2label = hf.get("id2label") or {}
    if not isinstance(id2label, dict):
        raise LmlabError(f"{hf.path}: id2label must map class ids to names; fix the config")
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(num_labels)]


def pretrained_tokenizer(folder: Path) -> Tokenizer | None:
    """The tokenizer of a model directory, or None when it has no tokenizer files."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    return load_pretrained_tokenizer(folder)
