import json

import pytest

from feedback_loop.engine import cli
from feedback_loop.engine.jsonl import JSONLError, read_jsonl
from feedback_loop.engine.probes import load_hypothetical


def test_rows_are_the_objects_of_the_non_empty_lines_even_with_a_line_separator_inside_a_string(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": "a\u2028b"}, {"prompt": "c", "n": 2}]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n\n", encoding="utf-8")
    assert read_jsonl(path) == rows
    assert cli.read_jsonl(path) == rows


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": 1}\n\n{"a": \n', r"rows.jsonl:3: not JSON"),
        ('{"a": 1}\n[1, 2]\n', r"rows.jsonl:2: expected a JSON object"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line_in_the_command_and_in_the_probes(tmp_path, text, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JSONLError, match=message):
        read_jsonl(path)
    with pytest.raises(SystemExit, match=message):  # the command line says it and stops, no traceback
        cli.read_jsonl(path)
    with pytest.raises(ValueError, match=message):
        load_hypothetical(path)
