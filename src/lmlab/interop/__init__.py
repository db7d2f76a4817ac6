"""Move weights between lmlab and the Hugging Face / GGUF world: weight files, config.json, GGUF."""

from lmlab.interop.gguf_file import GGUFFile, unpermute_qk
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
