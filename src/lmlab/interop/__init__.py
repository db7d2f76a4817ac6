"""Move weights between lmlab and the Hugging Face / GGUF world: weight files, config.json, GGUF."""

from lmlab.interop.gguf_file import GGUFFile, unpermute_qk
from lmlab.interop.pretrained import LoadedPretrained, is_pretrained_path, load_hf, load_pretrained
from lmlab.interop.hf_config import SUPPORTED_MODEL_TYPES, HFConfig, read_hf_config
from lmlab.interop.weights import (
    WEIGHT_FILES,
    Target,
    TensorInfo,
    TensorSource,
    WeightSource,
    find_weight_file,
    load_into,
)

__all__ = [
    "GGUFFile",
    "HFConfig",
    "LoadedPretrained",
    "is_pretrained_path",
    "load_hf",
    "load_pretrained",
    "load_gguf",
    "export_hf",
    "SUPPORTED_MODEL_TYPES",
    "Target",
    "TensorInfo",
    "TensorSource",
    "WEIGHT_FILES",
    "WeightSource",
    "find_weight_file",
    "load_into",
    "read_hf_config",
    "unpermute_qk",
]


def __getattr__(name: str):
    """Lazily expose the GGUF loader and the exporter."""
    if name == "load_gguf":
        from lmlab.interop.gguf_llama import load_gguf

        return load_gguf
    if name == "export_hf":
        from lmlab.interop.export import export_hf

        return export_hf
    raise AttributeError(name)
