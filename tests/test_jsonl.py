"""The one JSON Lines reader (runtime/files.py `read_jsonl`) as both of its users see it:
task files (tasks/layouts.py `read_rows`) and prompts files (sampling `read_prompts`)
handle UTF-8, blank lines, gzip, bad JSON and lines that are not objects alike, each
error one line naming the file and the line."""

import gzip
import json

import pytest

from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime.files import read_jsonl
from selfimprove_jax.sampling.text import read_prompts
from selfimprove_jax.tasks.layouts import read_rows


def _write(tmp_path, name, data: bytes) -> str:
  path = tmp_path / name
  path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
  return str(path)


def test_rows_with_line_numbers_blank_lines_skipped_gzip_read(tmp_path):
  data = b'{"prompt": "a"}\n\n   \n{"prompt": "b"}\r\n'
  for name in ("p.jsonl", "p.jsonl.gz"):
    path = _write(tmp_path, name, data)
    assert read_jsonl(path, "test") == [(1, {"prompt": "a"}), (4, {"prompt": "b"})]
    assert read_rows(path, "jsonl:x") == [(1, {"prompt": "a"}), (4, {"prompt": "b"})]
    assert read_prompts(["c"], path) == ["a", "b", "c"]


def test_a_line_separator_inside_a_json_string_is_not_a_line_break(tmp_path):
  """JSON allows U+2028 and U+0085 raw inside strings; str.splitlines, which
  read_prompts used, split such a line in two and called the first half bad JSON."""
  text = "one\u2028two\u0085three"
  path = _write(tmp_path, "p.jsonl", (json.dumps({"prompt": text}, ensure_ascii=False)
                                      + "\n").encode())
  assert read_prompts(None, path) == [text]
  assert read_rows(path, "jsonl:x") == [(1, {"prompt": text})]


@pytest.mark.parametrize("data, message", [
    (b'{"prompt": "a"}\n{"prompt": \n', "{path}:2: not valid JSON (Expecting value)"),
    (b'["a"]\n', "{path}:1: expected {record}, got an array"),
    (b'"a"\n', "{path}:1: expected {record}, got a string"),
    (b'\n3\n', "{path}:2: expected {record}, got a number"),
    (b'true\n', "{path}:1: expected {record}, got true or false"),
    (b'null\n', "{path}:1: expected {record}, got null"),
    (b'{"prompt": "caf\xe9"}\n', "{path}: not UTF-8 text (byte 15); {what} must be UTF-8 "
     "JSON Lines"),
])
def test_both_readers_refuse_a_bad_file_in_one_line_naming_it(tmp_path, data, message):
  path = _write(tmp_path, "bad.jsonl", data)
  for read, what, record in [
      (lambda: read_rows(path, "jsonl:bad"), "task jsonl:bad", "a JSON object"),
      (lambda: read_prompts(None, path), "--prompts_file",
       'an object with a string "prompt"')]:
    with pytest.raises(UserError) as e:
      read()
    assert str(e.value) == message.format(path=path, what=what, record=record)


def test_what_each_reader_adds(tmp_path):
  path = _write(tmp_path, "p.jsonl", b'{"prompt": "a"}\n{"text": "b"}\n')
  with pytest.raises(UserError) as e:
    read_prompts(None, path)
  assert str(e.value) == f'{path}:2: expected an object with a string "prompt"'
  missing = str(tmp_path / "missing.jsonl")
  with pytest.raises(UserError) as e:
    read_prompts(None, missing)
  assert str(e.value) == f"{missing}: cannot read (No such file or directory); --prompts_file"
  with pytest.raises(UserError) as e:
    read_rows(missing, "jsonl:missing")
  assert str(e.value) == f"{missing}: no such file (task jsonl:missing)"
  broken = _write(tmp_path, "broken.jsonl.gz", b"")
  with open(broken, "wb") as f:
    f.write(b"not gzip")
  with pytest.raises(UserError, match=r"broken.jsonl.gz: cannot read \(.*\); task jsonl:b$"):
    read_rows(broken, "jsonl:b")
