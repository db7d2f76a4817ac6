"""Hugging Face Hub model ids wherever lmlab takes a model or tokenizer path.

:func:`resolve_model_path` returns a local path unchanged and turns a Hub id (``org/name``) into
the local snapshot directory ``huggingface_hub`` downloads it to — only the config, tokenizer and
weight files, kept in its cache (``HF_HUB_CACHE`` / ``HF_HOME``), so a model is fetched once and
works offline (``HF_HUB_OFFLINE=1``) afterwards. :func:`resolve_tokenizer` does the same for
:func:`lmlab.tokenizers.load_pretrained_tokenizer`, built-in tokenizer names first.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer, load_pretrained_tokenizer
from lmlab.tokenizers.pretrained import BUILT_IN

TOKENIZER_PATTERNS = ("*.json", "*.txt", "*.model", "*.jinja")  # configs, vocabularies, templates
MODEL_PATTERNS = (*TOKENIZER_PATTERNS, "*.safetensors")
BIN_WEIGHT_PATTERNS = ("*.bin",)  # only for repositories without safetensors weights


def resolve_model_path(name_or_path: str | Path, patterns: tuple[str, ...] = MODEL_PATTERNS) -> Path:
    """``name_or_path`` as a local path: unchanged when it exists or cannot be a Hub id, else the
    snapshot of that Hub model (the files matching ``patterns``; ``.bin`` weights when a model
    asked for has no safetensors)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or not _is_repo_id(str(name_or_path)):
        return path
    repo_id = str(name_or_path)
    folder = _snapshot(repo_id, patterns)
    if patterns == MODEL_PATTERNS and not any(folder.rglob("*.safetensors")):
        folder = _snapshot(repo_id, BIN_WEIGHT_PATTERNS)
    return folder


def resolve_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """:func:`~lmlab.tokenizers.load_pretrained_tokenizer` of a built-in name, a local path or a
    Hub model id (its tokenizer files only)."""
    if str(name_or_path) in BUILT_IN:
        return load_pretrained_tokenizer(name_or_path)
    return load_pretrained_tokenizer(resolve_model_path(name_or_path, TOKENIZER_PATTERNS))


def _is_repo_id(name: str) -> bool:
    """Whether ``name`` is spelled like a Hub model id (``name`` or ``org/name``)."""
    hub = _huggingface_hub(name)
    try:
        hub.utils.validate_repo_id(name)
    except hub.errors.HFValidationError:
        return False
    return True


def _snapshot(repo_id: str, patterns: tuple[str, ...]) -> Path:
    """The local snapshot directory of the Hub model ``repo_id`` (its files matching ``patterns``)."""
    hub = _huggingface_hub(repo_id)
    try:
        return Path(hub.snapshot_download(repo_id, allow_patterns=list(patterns)))
    except (hub.errors.HfHubHTTPError, hub.errors.LocalEntryNotFoundError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmlabError(
            f"{repo_id!r} is not a local path, and the Hugging Face Hub could not be reached or has "
            f"no such model ({type(exc).__name__}: {reason}); pass a local model directory instead "
            f"(e.g. 'huggingface-cli download {repo_id} --local-dir DIR' where there is a network)"
        ) from exc


def _huggingface_hub(name: str) -> ModuleType:
    """The ``huggingface_hub`` package, which only Hub ids need."""
    try:
        import huggingface_hub
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ModuleNotFoundError:
        raise LmlabError(
            f"{name!r} is not a local path; to fetch it as a Hugging Face Hub model id, "
            "install lmlab[hub] (or pass a local path)"
        ) from None
    return huggingface_hub
