"""Stream the tensors of a Hugging Face model directory into a preallocated model.

:class:`WeightSource` lists the tensors of ``model.safetensors``, a sharded
``model.safetensors.index.json``, ``pytorch_model.bin`` or a sharded
``pytorch_model.bin.index.json`` — names, shapes and dtypes, read from the headers without loading
any data — and hands them out one at a time. :func:`load_into` copies them into the parameters of
an already built model, so loading never holds two full copies of the weights: peak memory is the
model plus about one tensor (safetensors are read with ``pread``, pickles unmapped after each tensor).

Pickled ``.bin`` files are only ever opened with ``torch.load(..., weights_only=True, mmap=True)``.
Every name of the source must be used or explicitly ignored, and every target tensor filled.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
from safetensors import SafetensorError, safe_open

from lmlab.errors import LmlabError, read_json_file

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX_FILE = "pytorch_model.bin.index.json"
# Looked for in this order, as transformers does.
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_FILE, PYTORCH_INDEX_FILE)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SUPPORTED_DTYPES = frozenset(SAFETENSORS_DTYPES.values())
LISTED_NAMES = 10


@dataclass(frozen=True)
class TensorInfo:
    """What is known about a stored tensor before reading it: PyTorch-order shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return torch.Size(self.shape).numel() * self.dtype.itemsize


class TensorSource(Protocol):
    """Anything :func:`load_into` can read from: listed tensors handed out one at a time."""

    def names(self) -> list[str]:
        """Every tensor name, in storage order."""

    def info(self, name: str) -> TensorInfo:
        """Shape and dtype of one tensor, without reading its data."""

    def get(self, name: str) -> torch.Tensor:
        """The data of one tensor."""


def shorten(names: Sequence[str], limit: int = LISTED_NAMES) -> str:
    """``a, b, c`` for a few names, ``a, b, ... (+N more)`` for many."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} ... (+{len(names) - limit} more)"


def find_weight_file(directory: str | Path) -> Path:
    """The weight file (or shard index) of a Hugging Face model directory, by priority."""
    folder = Path(directory)
    if not folder.is_dir():
        raise LmlabError(
            f"model directory {directory} does not exist; pass a Hugging Face model directory"
        )
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise LmlabError(
        f"no weights in {directory}: looked for {', '.join(WEIGHT_FILES)}; "
        "download the checkpoint's weight files into that directory"
    )


class WeightSource:
    """The tensors of one Hugging Face checkpoint (single file or shards), read lazily.

    Build it with :meth:`from_directory` (or :meth:`from_file` for one ``.safetensors``/``.bin``
    file or an index). ``get`` reads one tensor and keeps nothing else of the file in memory, so
    memory holds only the tensors the caller keeps.
    """

    def __init__(self, infos: Mapping[str, TensorInfo]):
        self._infos = dict(infos)

    @classmethod
    def from_directory(cls, directory: str | Path) -> "WeightSource":
        """The weights of a Hugging Face model directory (see ``WEIGHT_FILES`` for what is read)."""
        return cls.from_file(find_weight_file(directory))

    @classmethod
    def from_file(cls, path: str | Path) -> "WeightSource":
        """The weights of one ``.safetensors`` / ``.bin`` file or of a ``*.index.json`` shard index."""
        path = Path(path)
        if not path.is_file():
            raise LmlabError(f"weight file {path} does not exist; check the path")
        files = _shards_of_index(path) if path.name.endswith(".index.json") else [path]
        infos: dict[str, TensorInfo] = {}
        for file in files:
            for info in _list_file(file):
                if info.name in infos:
                    raise LmlabError(
                        f"tensor {info.name!r} is stored twice ({infos[info.name].file.name} and "
                        f"{file.name}); the checkpoint is inconsistent, re-download it"
                    )
                infos[info.name] = info
        return cls(infos)

    def names(self) -> list[str]:
        """Every tensor name, grouped by file."""
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        """Shape and dtype of one tensor, without reading it."""
        if name not in self._infos:
            raise LmlabError(
                f"the checkpoint has no tensor {name!r}; it has {shorten(self.names())}"
            )
        return self._infos[name]

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    @property
    def nbytes(self) -> int:
        """Total size of all tensors' data in bytes."""
        return sum(info.nbytes for info in self._infos.values())

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (a fresh CPU tensor for safetensors; for ``.bin`` one backed by its own
        mapping of the file, released with the tensor)."""
        info = self.info(name)
        if info.file.suffix == ".safetensors":
            return _read_safetensor(info.file, name)
        return _read_bin_tensor(info.file, name)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor, one at a time."""
        for name in self.names():
            yield name, self.get(name)


def _shards_of_index(index: Path) -> list[Path]:
    """The shard files an ``*.index.json`` names, checked to exist."""
    weight_map = read_json_file(index, "re-download it", dict).get("weight_map")
    if not isinstance(weight_map, dict):
        raise LmlabError(f"{index} is not a valid shard index (no 'weight_map' object); re-download it")
    shards = list(dict.fromkeys(index.parent / shard for shard in weight_map.values()))
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise LmlabError(
            f"{index.name} references missing shards {shorten(missing)}; download them into {index.parent}"
        )
    return shards


def _list_file(file: Path) -> list[TensorInfo]:
    """Names, shapes and dtypes of the tensors in one weight file."""
    if file.suffix == ".safetensors":
        return _list_safetensors(file)
    if file.suffix == ".bin":
        return [
            TensorInfo(name, tuple(tensor.shape), _checked_dtype(tensor.dtype, name, file), file)
            for name, tensor in _load_bin(file).items()
        ]
    raise LmlabError(f"cannot read weight file {file.name}: expected a .safetensors or .bin file")


def _list_safetensors(file: Path) -> list[TensorInfo]:
    """Read a safetensors header (names, shapes, dtypes) without touching the data."""
    try:
        with safe_open(str(file), framework="pt", backend="pread") as handle:
            headers = {name: handle.get_slice(name) for name in handle.keys()}
            listed = [(name, tuple(s.get_shape()), s.get_dtype()) for name, s in headers.items()]
    except SafetensorError as exc:
        raise LmlabError(
            f"{file} is not a valid safetensors file ({exc}); it is truncated or corrupt, re-download it"
        ) from exc
    infos = []
    for name, shape, dtype_name in listed:
        if dtype_name not in SAFETENSORS_DTYPES:
            raise LmlabError(
                f"tensor {name!r} in {file.name} has dtype {dtype_name}, which lmlab cannot load; "
                f"convert the checkpoint to one of {', '.join(SAFETENSORS_DTYPES)}"
            )
        infos.append(TensorInfo(name, shape, SAFETENSORS_DTYPES[dtype_name], file))
    return infos


def _read_safetensor(file: Path, name: str) -> torch.Tensor:
    """One tensor of a safetensors file, read with ``pread`` so no mapping of the file stays resident."""
    try:
        with safe_open(str(file), framework="pt", backend="pread") as handle:
            return handle.get_tensor(name)
    except SafetensorError as exc:
        raise LmlabError(
            f"cannot read tensor {name!r} from {file} ({exc}); the file is corrupt, re-download it"
        ) from exc


def _read_bin_tensor(file: Path, name: str) -> torch.Tensor:
    """One tensor of a pickled file, from a fresh mapping of the file that lives only as long as
    the tensor: a mapping kept open would count every page read so far as resident memory. (The
    cost: the pickle's small header is parsed once per tensor.)"""
    return _load_bin(file)[name]


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, opened safely: ``weights_only=True``, memory-mapped."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmlabError(
            f"cannot load {file} safely as tensors only ({message}); convert it to safetensors"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise LmlabError(
            f"{file} does not hold a flat dict of named tensors; convert it to safetensors"
        )
    return state


def _checked_dtype(dtype: torch.dtype, name: str, file: Path) -> torch.dtype:
    """``dtype`` when lmlab can load it, else an error naming the tensor."""
    if dtype not in SUPPORTED_DTYPES:
        raise LmlabError(
            f"tensor {name!r} in {file.name} has dtype {dtype}, which lmlab cannot load; "
            "convert the checkpoint to float32, float16 or bfloat16"
        )
    return dtype


# ---------------------------------------------------------------- copying into a model


@dataclass(frozen=True)
class Target:
    """Where a source tensor goes: a target tensor ``name``, optionally after ``transform``
    (e.g. a transpose or a slice of a fused tensor) and optionally into the region ``index`` of
    the target (to fill a fused target from several sources).

    Transforms must be plain tensor operations: they are first run on meta tensors to check shapes.
    """

    name: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    index: Any = None

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` after the transform (unchanged without one)."""
        return tensor if self.transform is None else self.transform(tensor)

    def region(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of the target tensor this assignment fills."""
        return tensor if self.index is None else tensor[self.index]


Assignments = str | Target | Sequence[str | Target]
NameMap = Mapping[str, Assignments] | Callable[[str], Assignments | None]


def load_into(
    target: Mapping[str, torch.Tensor],
    source: TensorSource,
    name_map: NameMap,
    ignore: Sequence[str] = (),
    allow_missing: Sequence[str] = (),
) -> None:
    """Copy ``source``'s tensors into ``target`` (e.g. ``model.state_dict()``) one at a time.

    ``name_map`` maps a source name to a target name, a :class:`Target`, a list of them (one
    source filling several targets), or None/absent for "not used". Every source name must be
    mapped or match one of the ``ignore`` glob patterns (e.g. ``"*.attn.bias"``); every target
    tensor must be filled (exactly once) or match an ``allow_missing`` pattern. The whole plan —
    names and shapes — is checked before any data is read; tensors are converted to the target's
    dtype while copying.
    """
    plan = _plan(target, source, name_map, ignore, allow_missing)
    with torch.no_grad():
        for name, targets in plan:
            tensor = source.get(name)
            for assignment in targets:
                assignment.region(target[assignment.name]).copy_(assignment.apply(tensor))
            del tensor


def _plan(
    target: Mapping[str, torch.Tensor],
    source: TensorSource,
    name_map: NameMap,
    ignore: Sequence[str],
    allow_missing: Sequence[str],
) -> list[tuple[str, list[Target]]]:
    """Resolve and check every assignment (names, shapes, coverage) without reading any data."""
    plan, unused = [], []
    filled: dict[str, int] = {}
    for name in source.names():
        targets = _targets(name_map, name)
        if not targets:
            if not _matches(name, ignore):
                unused.append(name)
            continue
        for assignment in targets:
            _check_assignment(target, source.info(name), assignment)
            region = assignment.region(target[assignment.name].to("meta"))
            filled[assignment.name] = filled.get(assignment.name, 0) + region.numel()
        plan.append((name, targets))
    _check_coverage(target, filled, unused, allow_missing)
    return plan


def _targets(name_map: NameMap, name: str) -> list[Target]:
    """The assignments ``name_map`` gives a source name, as a list of :class:`Target`."""
    found = name_map(name) if callable(name_map) else name_map.get(name)
    if found is None:
        return []
    items = [found] if isinstance(found, (str, Target)) else list(found)
    return [Target(item) if isinstance(item, str) else item for item in items]


def _check_assignment(
    target: Mapping[str, torch.Tensor], info: TensorInfo, assignment: Target
) -> None:
    """One assignment's target exists and its shape matches the transformed source's."""
    if assignment.name not in target:
        raise LmlabError(
            f"source tensor {info.name!r} maps to {assignment.name!r}, which the model does not have; "
            "fix the name map"
        )
    placeholder = torch.empty(info.shape, dtype=info.dtype, device="meta")
    shape = tuple(assignment.apply(placeholder).shape)
    expected = tuple(assignment.region(target[assignment.name].to("meta")).shape)
    if shape != expected:
        raise LmlabError(
            f"tensor {info.name!r} has shape {shape} after mapping but {assignment.name!r} expects "
            f"{expected}; the checkpoint does not match the model config"
        )


def _check_coverage(
    target: Mapping[str, torch.Tensor],
    filled: Mapping[str, int],
    unused: list[str],
    allow_missing: Sequence[str],
) -> None:
    """Every source tensor used and every target tensor filled exactly once, else one error listing them."""
    problems = []
    if unused:
        problems.append(f"checkpoint tensors never used: {shorten(unused)}")
    unfilled = [
        name
        for name, tensor in target.items()
        if filled.get(name, 0) < tensor.numel() and not _matches(name, allow_missing)
    ]
    if unfilled:
        problems.append(f"model tensors never filled: {shorten(unfilled)}")
    twice = [name for name, count in filled.items() if count > target[name].numel()]
    if twice:
        problems.append(f"model tensors filled more than once: {shorten(twice)}")
    if problems:
        raise LmlabError(
            "; ".join(problems)
            + "; fix the name map or list known-unused names in ignore/allow_missing"
        )


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` matches any of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
