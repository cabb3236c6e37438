import pytest

from odie_async.engine.batchfile import BatchReader, count_lines
from odie_async.exceptions import DuplicateIdError, InputError
from tests.helpers import chat_line


def _reader(tmp_path, content: bytes, **kw):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    return BatchReader(path, **kw), path


def test_valid_lines_stream_in_order(tmp_path):
    reader, _ = _reader(tmp_path, chat_line("a") + b"\n" + chat_line("b"))
    assert [(line.custom_id, line.line_no) for line in reader] == [("a", 1), ("b", 3)]


@pytest.mark.parametrize(
    "bad,expected",
    [
        (b'{"custom_id": "x", "method": "POST"', "not valid JSON"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}\n', "missing field(s): body"),
        (b'{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n', "method must be POST"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v2/x", "body": {}}\n', "is not one of"),
        (b'{"custom_id": "\xff\xfe", "method": "POST"}\n', "not valid UTF-8 (byte 0xff at column 16)"),
        (b"[1, 2]\n", "expected a JSON object"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad, expected):
    reader, path = _reader(tmp_path, chat_line("a") + chat_line("b") + bad)
    with pytest.raises(InputError) as info:
        list(reader)
    assert info.value.line_no == 3
    assert str(info.value).startswith(f"{path}:3: ")
    assert expected in str(info.value)


def test_skip_invalid_counts_and_continues(tmp_path):
    reader, _ = _reader(tmp_path, chat_line("a") + b"garbage\n" + chat_line("b"), skip_invalid=True)
    assert [line.custom_id for line in reader] == ["a", "b"]
    assert reader.invalid == 1


def test_duplicate_ids_name_both_lines(tmp_path):
    reader, _ = _reader(tmp_path, chat_line("a") + chat_line("b") + chat_line("a"))
    with pytest.raises(DuplicateIdError) as info:
        list(reader)
    assert info.value.first_line == 1 and info.value.line_no == 3
    assert "first seen on line 1" in str(info.value)


def test_count_lines_handles_missing_final_newline(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"a\nb\nc")
    assert count_lines(path) == 3
