"""lmlab.errors: files read as UTF-8 text or JSON, optional dependencies and stdin decoding, each
problem one line saying what is wrong and the fix."""

import io
import sys

import pytest

from lmlab.errors import LmlabError, decode_stdin_as_utf8, read_json_file, read_text_file, require_optional


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_reads_the_json_value(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2]}', encoding="utf-8")
    assert read_json_file(tmp_path / "a.json", "fix it", dict) == {"x": [1, 2]}
    assert read_json_file(str(tmp_path / "a.json"), "fix it") == {"x": [1, 2]}


@pytest.mark.parametrize(
    "content,kind,message",
    [
        (None, None, "does not exist; re-download it"),
        (b"\xff\xfe{", None, r"is not UTF-8 text \(bad byte at offset 0\); re-download it"),
        (b'{"x": ', None, r"is not valid JSON \(.* at line 1\); re-download it"),
        (b"[1, 2]", dict, "does not hold a JSON object; re-download it"),
        (b'{"x": 1}', list, "does not hold a JSON array; re-download it"),
    ],
)
def test_each_problem_is_one_line_naming_the_file_and_the_fix(tmp_path, content, kind, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LmlabError, match=message) as excinfo:
        read_json_file(path, "re-download it", kind)
    assert one_line(excinfo).startswith(f"{path} ")


def test_text_that_is_not_utf8_names_the_file_and_the_offset(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"fine\nnot \xe9 utf-8\n")
    with pytest.raises(LmlabError, match="is not UTF-8 text \\(bad byte at offset 9\\); save it as UTF-8") as caught:
        read_text_file(path, "save it as UTF-8")
    assert one_line(caught).startswith(f"{path} ")
    path.write_text("héllo\n", encoding="utf-8")
    assert read_text_file(path, "save it as UTF-8") == "héllo\n"


def test_a_missing_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an uninstalled package looks like
    with pytest.raises(LmlabError) as caught:
        require_optional("matplotlib", "viz", "plotting")
    assert one_line(caught) == (
        "plotting needs the optional package matplotlib, which is not installed; pip install 'lmlab[viz]'"
    )
    assert require_optional("json", "none", "parsing") is sys.modules["json"]


def test_stdin_that_is_not_utf8_is_one_line():
    stream = io.TextIOWrapper(io.BytesIO(b"ok\n\xff\xfe\n"), encoding="latin-1")
    decode_stdin_as_utf8(stream)
    with pytest.raises(LmlabError) as caught:
        stream.read()
    assert "stdin is not UTF-8 text" in one_line(caught)
    decode_stdin_as_utf8(io.StringIO("a stand-in without reconfigure is left alone"))
