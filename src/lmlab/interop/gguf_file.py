"""Read GGUF files (llama.cpp's format) through the ``gguf`` package.

:class:`GGUFFile` gives the metadata as a plain dict (strings decoded, arrays as lists), the
architecture, the tokenizer and chat template stored in the metadata, and the tensors by name in
PyTorch dimension order (GGUF lists dimensions innermost first), dequantised to float32 — F32,
F16, BF16 and every quantised type ``gguf.quants`` can dequantise (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, the K-quants, ...). It is a tensor source for :func:`lmlab.interop.weights.load_into`.

llama.cpp's converter permutes the rows of Llama's ``q_proj``/``k_proj`` weights for its RoPE
kernel; :func:`unpermute_qk` restores the Hugging Face layout.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType, ReaderField, ReaderTensor
from gguf.quants import dequantize

from lmlab.errors import LmlabError
from lmlab.interop.weights import TensorInfo, shorten
from lmlab.tokenizers import Tokenizer
from lmlab.tokenizers.gguf_vocab import tokenizer_from_gguf_metadata

_INTERNAL_PREFIX = "GGUF."  # the reader's own fields: version, tensor and key counts


class GGUFFile:
    """One GGUF file: metadata, tokenizer and float32 tensors, read lazily from a memory map."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise LmlabError(f"GGUF file {path} does not exist; check the path")
        try:
            reader = GGUFReader(self.path)
        except (
            Exception
        ) as exc:  # the reader raises ValueError, IndexError, KeyError, ... on bad input
            raise LmlabError(
                f"{self.path} is not a readable GGUF file ({type(exc).__name__}: {exc}); "
                "it is truncated or not GGUF, re-download or re-convert it"
            ) from exc
        self.version = int(reader.fields["GGUF.version"].parts[-1][0])
        self.metadata: dict[str, Any] = {
            name: _field_value(field)
            for name, field in reader.fields.items()
            if not name.startswith(_INTERNAL_PREFIX)
        }
        self._tensors: dict[str, ReaderTensor] = {tensor.name: tensor for tensor in reader.tensors}
        self._map = getattr(reader.data, "_mmap", None)  # the file mapping, to release pages read

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (e.g. ``"llama"``, ``"gpt2"``), or None when absent."""
        return self.metadata.get("general.architecture")

    def arch_value(self, key: str) -> Any:
        """A hyper-parameter of the architecture, e.g. ``arch_value("block_count")`` reads
        ``llama.block_count`` for a Llama file."""
        full = f"{self.architecture}.{key}"
        if full not in self.metadata:
            raise LmlabError(
                f"{self.path.name} has no metadata key {full!r}; the file is incomplete"
            )
        return self.metadata[full]

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template stored under ``tokenizer.chat_template``, if any."""
        return self.metadata.get("tokenizer.chat_template")

    def tokenizer(self) -> Tokenizer:
        """The tokenizer described by the ``tokenizer.ggml.*`` metadata."""
        return tokenizer_from_gguf_metadata(self.metadata)

    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        """PyTorch-order shape of one tensor; dtype float32, what :meth:`get` returns."""
        tensor = self._tensor(name)
        return TensorInfo(name, _torch_shape(tensor), torch.float32, self.path)

    def tensor_type(self, name: str) -> str:
        """The stored GGML type of one tensor (``"F16"``, ``"Q4_K"``, ...)."""
        return self._tensor(name).tensor_type.name

    def get(self, name: str) -> torch.Tensor:
        """One tensor, dequantised to float32, in PyTorch dimension order."""
        tensor = self._tensor(name)
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise LmlabError(
                f"tensor {name!r} in {self.path.name} has type {tensor.tensor_type.name}, which "
                "lmlab cannot dequantise; re-quantise the model with another type"
            ) from exc
        # F32 data is a view of the read-only file map: copy it; dequantised data is already fresh.
        array = np.require(values, dtype=np.float32, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        self._release(tensor)
        return torch.from_numpy(array.reshape(_torch_shape(tensor)))

    def _release(self, tensor: ReaderTensor) -> None:
        """Drop the mapped pages of a tensor just read from this process's resident memory (they
        stay in the page cache), so loading a model holds the model plus about one tensor, not
        the model plus the whole file."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = int(tensor.data_offset) // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(int(tensor.data_offset) + int(tensor.n_bytes), len(self._map))
        try:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):  # not fatal: only memory use is at stake
            pass

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, float32 tensor) for every tensor, one at a time."""
        for name in self.names():
            yield name, self.get(name)

    def _tensor(self, name: str) -> ReaderTensor:
        if name not in self._tensors:
            raise LmlabError(
                f"{self.path.name} has no tensor {name!r}; it has {shorten(self.names())}"
            )
        return self._tensors[name]


def _torch_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """GGUF lists dimensions innermost first; PyTorch outermost first."""
    return tuple(int(dim) for dim in reversed(tensor.shape.tolist()))


def _field_value(field: ReaderField) -> Any:
    """A metadata field as plain Python: str, int, float, bool, or a list of them."""
    main_type = field.types[0]
    if main_type == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [_text(field.parts[index]) for index in field.data]
        return [value for index in field.data for value in field.parts[index].tolist()]
    if main_type == GGUFValueType.STRING:
        return _text(field.parts[-1])
    return field.parts[-1].tolist()[0]


def _text(data: np.ndarray) -> str:
    """A stored string; invalid UTF-8 (rare, in some vocabularies) is replaced, not fatal."""
    return data.tobytes().decode("utf-8", errors="replace")


def unpermute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's row permutation of a Llama ``q_proj``/``k_proj`` weight (or bias).

    The converter interleaves the two rotary halves of each head:
    ``w.reshape(n_head, 2, head_dim // 2, ...).swapaxes(1, 2).reshape(w.shape)``; this is the
    inverse. For ``k_proj`` pass the number of key/value heads.
    """
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise LmlabError(
            f"cannot unpermute a tensor with {rows} rows for {n_head} heads: rows must be a multiple "
            "of 2 × heads; check the head count"
        )
    rest = weight.shape[1:]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *rest).transpose(1, 2).reshape(weight.shape)
    )
