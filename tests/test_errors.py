"""lmlab.errors.read_json_file: the JSON in a file, or one line saying what is wrong and the fix."""

import pytest

from lmlab.errors import LmlabError, read_json_file


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
        (b"\xff\xfe{", None, "is not UTF-8 text; re-download it"),
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
