"""JSON-lines files of objects, as the engine's commands and probe families read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JSONLError(ValueError):
    """A line that is not a JSON object."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; a JSONLError names the file and line of a bad one."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise JSONLError(f"{path}:{number}: not JSON ({error})") from error
            if not isinstance(row, dict):
                raise JSONLError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows
