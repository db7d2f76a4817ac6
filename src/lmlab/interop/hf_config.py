"""Read and check the ``config.json`` of a Hugging Face model directory.

:func:`read_hf_config` returns an :class:`HFConfig`: the model type, the architectures and the
raw values, after checking that the keys which define the architecture of that model type are
there and are positive integers. Turning it into an lmlab ``ModelConfig`` is the job of the
per-family maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lmlab.errors import LmlabError, read_json_file

CONFIG_FILE = "config.json"

BART_SHAPE_KEYS = (
    "vocab_size",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "max_position_embeddings",
)
# The keys that define each supported model type's shapes (all positive integers).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions"),
    "bert": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    ),
    "roberta": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    ),
    "llama": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    ),
    "mistral": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    ),
    "qwen2": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    ),
    "t5": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"),
    "bart": BART_SHAPE_KEYS,
    "pegasus": BART_SHAPE_KEYS,  # BART's layers in a pre-norm layout
}
SUPPORTED_MODEL_TYPES = tuple(REQUIRED_KEYS)
# (width key, heads key) pairs whose width must split evenly into heads, when no head size is given.
_HEAD_SPLITS = (("n_embd", "n_head"), ("hidden_size", "num_attention_heads"))


@dataclass(frozen=True)
class HFConfig:
    """A checked Hugging Face ``config.json``: model type, architectures and the raw values."""

    model_type: str
    architectures: tuple[str, ...]
    values: Mapping[str, Any] = field(repr=False)
    path: Path

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when the config does not set it."""
        return self.values.get(key, default)

    def require(self, key: str) -> Any:
        """The value of ``key``; a missing key is an error naming the file."""
        if key not in self.values:
            raise LmlabError(
                f"{self.path} has no {key!r}, which a {self.model_type} model needs; add it to the config"
            )
        return self.values[key]


def read_hf_config(
    path: str | Path, supported: tuple[str, ...] = SUPPORTED_MODEL_TYPES
) -> HFConfig:
    """Read ``config.json`` (the file, or the model directory holding it) and check it.

    The model type must be one of ``supported``; the keys of ``REQUIRED_KEYS`` for that type must
    be positive integers; the width must split evenly into attention heads, and the attention heads
    into key/value heads when ``num_key_value_heads`` is set.
    """
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILE
    if not file.is_file():
        raise LmlabError(f"no {CONFIG_FILE} at {path}; pass a Hugging Face model directory")
    values = read_json_file(file, "re-download it", dict)
    model_type = values.get("model_type")
    if model_type not in supported:
        raise LmlabError(
            f"{file} has model_type {model_type!r}, which lmlab cannot load; "
            f"supported types: {', '.join(supported)}"
        )
    config = HFConfig(model_type, tuple(values.get("architectures") or ()), values, file)
    _check_values(config)
    return config


def _check_values(config: HFConfig) -> None:
    """Required keys are positive integers and head counts divide what they split."""
    for key in REQUIRED_KEYS.get(config.model_type, ()):
        _positive_int(config, key)
    if "head_dim" not in config:
        for width, heads in _HEAD_SPLITS:
            if width in config and heads in config:
                _divides(config, heads, width)
    if "num_key_value_heads" in config and config.get("num_key_value_heads") is not None:
        _positive_int(config, "num_key_value_heads")
        _divides(config, "num_key_value_heads", "num_attention_heads")


def _positive_int(config: HFConfig, key: str) -> int:
    """``config[key]`` checked to be an integer ≥ 1."""
    value = config.require(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LmlabError(
            f"{config.path}: {key} must be a positive integer, got {value!r}; fix the config"
        )
    return value


def _divides(config: HFConfig, divisor: str, dividend: str) -> None:
    """``config[divisor]`` divides ``config[dividend]`` evenly."""
    if _positive_int(config, dividend) % _positive_int(config, divisor):
        raise LmlabError(
            f"{config.path}: {dividend}={config.get(dividend)} is not divisible by "
            f"{divisor}={config.get(divisor)}; fix the config"
        )
