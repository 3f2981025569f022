"""Importing prompts (and outputs, and tasks over them) from JSONL or CSV, all or nothing.

A file is read line by line and every line is validated before anything is written; the first
bad line stops the import with its line number and the reason, and the database is untouched.
Then annotation.services.prompts.prompts_import writes everything in one transaction.

Fields of a line (after the mapping `{our_field: their_field}` renames the file's own names):

- `external_id` (required): unique within the file and not already used in the project.
- `text` (required, non-empty), `context`, `split` (train / eval / test, default train).
- `data`: an object (a code task's `tests`, `entry_point` ...); in CSV a JSON string. A code task
  may come in the MBPP shape (`test_list`, `test_setup_code`) or the HumanEval one (`test`, `prompt`,
  `entry_point`): its tests are then also stored as `tests`, the one name the loop reads.
- `gold`: known good answer(s), any JSON; in CSV the cell's text.
- `outputs`: a list of output texts or objects `{text, model_name, adapter, source, generation}`;
  in CSV a JSON string. `output` is the flat form: one output text (the usual CSV column).
  `model_name`, `adapter` and `source` on the line are the defaults for its outputs.

Other fields of a line are ignored.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import IO, Any

from annotation.errors import ApplicationError
from annotation.models import Output, Project, Prompt

FORMATS = ("jsonl", "csv")
TASK_MODES = ("none", "single", "pairwise", "ranking")
FIELDS = (
    "external_id",
    "text",
    "context",
    "split",
    "data",
    "gold",
    "outputs",
    "output",
    "model_name",
    "adapter",
    "source",
)
OUTPUT_KEYS = ("text", "model_name", "adapter", "source", "generation")
SPLITS = tuple(Prompt.Split.values)
SOURCES = tuple(Output.Source.values)
READ_CHUNK = 1 << 16

_external_id_length = Prompt._meta.get_field("external_id").max_length
_provenance_length = Output._meta.get_field("model_name").max_length


class ImportFileError(ApplicationError, ValueError):
    """The file cannot be imported. `line` is 1-based, or None when no one line is at fault."""

    def __init__(self, line: int | None, message: str, *, field: str | None = None, unit: str = "line"):
        super().__init__(message)
        self.line = line
        self.field = field  # which input the error is about, when it is not the file itself ("mapping")
        self.unit = unit  # "line" for files, "row" for a list of rows sent as JSON

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.message}" if self.line is not None else self.message

    @property
    def extra(self) -> dict:
        # Not one field's fault: the file's (or, sent as JSON, the rows').
        return {"field": self.field or ("file" if self.unit == "line" else "rows"), "line": self.line}


@dataclass
class OutputRow:
    text: str
    source: str = Output.Source.MODEL
    model_name: str = ""
    adapter: str = ""
    generation: dict = field(default_factory=dict)


@dataclass
class PromptRow:
    line: int
    external_id: str
    text: str
    context: str = ""
    split: str = Prompt.Split.TRAIN
    data: dict = field(default_factory=dict)
    gold: Any = None
    outputs: list[OutputRow] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def _open(source: str | Path | IO) -> tuple[IO, str, bool]:
    """The stream to read, its name (to guess the format by), and whether we opened it."""
    if isinstance(source, str | Path):
        return open(source, "rb"), str(source), True
    return source, str(getattr(source, "name", "") or ""), False


def _raw_lines(stream: IO) -> Iterator[bytes | str]:
    """Lines of a binary or text stream, ends kept, read in chunks (constant memory per line)."""
    pending: bytes | str | None = None
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            break
        pending = chunk if pending is None else pending + chunk
        newline = b"\n" if isinstance(pending, bytes) else "\n"
        *complete, pending = pending.split(newline)
        for line in complete:
            yield line + newline
    if pending:
        yield pending


def _text_lines(stream: IO) -> Iterator[str]:
    """Decoded lines: UTF-8 (a byte order mark at the start is dropped), anything else rejected."""
    for number, line in enumerate(_raw_lines(stream), start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ImportFileError(
                    number,
                    f"is not valid UTF-8 (byte 0x{line[error.start]:02x} at position {error.start + 1}); "
                    "save the file as UTF-8",
                ) from error
        if number == 1 and line.startswith(codecs.BOM_UTF8.decode("utf-8")):
            line = line[1:]
        yield line


def _guess_format(name: str, first_line: str | None) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if (first_line or "").lstrip().startswith("{") else "csv"


def _jsonl_records(lines: Iterator[str]) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ImportFileError(
                number, f"is not valid JSON ({error.msg} at column {error.colno})"
            ) from error
        if not isinstance(record, dict):
            raise ImportFileError(number, f"must be a JSON object, not {_json_type(record)}")
        yield number, record


def _csv_records(lines: Iterator[str], mapping: dict[str, str]) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        raise ImportFileError(1, f"is not valid CSV ({error})") from error
    header = [name.strip() for name in header]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ImportFileError(1, f"the header names the column {duplicated[0]!r} twice")
    missing = [theirs for theirs in mapping.values() if theirs not in header]
    if missing:
        raise ImportFileError(
            1,
            f"the mapping names the column {missing[0]!r}, which is not in the header "
            f"(columns: {', '.join(header)})",
            field="mapping",
        )
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ImportFileError(start, f"is not valid CSV ({error})") from error
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise ImportFileError(start, f"has {len(cells)} columns, the header has {len(header)}")
        # In CSV an empty cell is an absent value.
        yield start, {name: cell for name, cell in zip(header, cells, strict=True) if cell != ""}


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


def clean_mapping(mapping: dict[str, str] | None) -> dict[str, str]:
    """Check a `{our_field: their_field}` mapping; raises ImportFileError(field="mapping")."""
    if not mapping:
        return {}
    if not isinstance(mapping, dict):
        raise ImportFileError(None, "the mapping must be an object {our_field: their_field}", field="mapping")
    for ours, theirs in mapping.items():
        if ours not in FIELDS:
            raise ImportFileError(
                None,
                f"the mapping names {ours!r}, which is not a field (fields: {', '.join(FIELDS)})",
                field="mapping",
            )
        if not isinstance(theirs, str) or not theirs.strip():
            raise ImportFileError(None, f"the mapping of {ours!r} must be a column name", field="mapping")
    theirs_used = list(mapping.values())
    twice = sorted({name for name in theirs_used if theirs_used.count(name) > 1})
    if twice:
        raise ImportFileError(None, f"the mapping uses {twice[0]!r} for two fields", field="mapping")
    return {ours: theirs.strip() for ours, theirs in mapping.items()}


# ---------------------------------------------------------------- validating


def _label(name: str, mapping: dict[str, str]) -> str:
    return f"{mapping[name]!r} (mapped to {name})" if name in mapping else repr(name)


def _clean_text(value: Any, label: str, *, required: bool, max_length: int | None = None) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValueError(f"{label} is missing" if value is None else f"{label} is empty")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{label} must be a string, not {_json_type(value)}")
    if "\x00" in value:
        raise ValueError(f"{label} contains a NUL character (\\u0000), which cannot be stored")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{label} must be at most {max_length} characters")
    return value


def _refuse_nul(value: Any, label: str) -> None:
    """PostgreSQL stores no U+0000 in text or jsonb: refuse it here, with the line, not at write time."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and "\x00" in item:
            raise ValueError(f"{label} contains a NUL character (\\u0000), which cannot be stored")


def _clean_choice(value: Any, label: str, choices: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(f"{label} must be one of {', '.join(choices)} (got {value!r})")
    return value.strip().lower()


def _from_json_cell(value: Any, label: str, *, csv_cell: bool) -> Any:
    if not csv_cell or value is None:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{label} is not valid JSON ({error.msg})") from error


def _clean_outputs(record: dict, mapping: dict[str, str], *, csv_cell: bool) -> list[OutputRow]:
    def get(name: str) -> Any:
        return record.get(mapping.get(name, name))

    defaults = {
        "source": _clean_choice(get("source"), _label("source", mapping), SOURCES, Output.Source.MODEL),
        "model_name": _clean_text(
            get("model_name"), _label("model_name", mapping), required=False, max_length=_provenance_length
        ),
        "adapter": _clean_text(
            get("adapter"), _label("adapter", mapping), required=False, max_length=_provenance_length
        ),
    }
    many, one = get("outputs"), get("output")
    if many is not None and one is not None:
        raise ValueError(f"give either {_label('outputs', mapping)} or {_label('output', mapping)}, not both")
    if one is not None:
        return [OutputRow(text=_clean_text(one, _label("output", mapping), required=True), **defaults)]
    label = _label("outputs", mapping)
    many = _from_json_cell(many, label, csv_cell=csv_cell)
    if many is None:
        return []
    if not isinstance(many, list):
        raise ValueError(f"{label} must be a list of texts or objects, not {_json_type(many)}")
    outputs = []
    for index, item in enumerate(many):
        where = f"{label}[{index}]"
        if isinstance(item, str):
            outputs.append(OutputRow(text=_clean_text(item, where, required=True), **defaults))
            continue
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a text or an object, not {_json_type(item)}")
        unknown = sorted(set(item) - set(OUTPUT_KEYS))
        if unknown:
            raise ValueError(f"{where} has an unknown key {unknown[0]!r} (keys: {', '.join(OUTPUT_KEYS)})")
        generation = item.get("generation") or {}
        if not isinstance(generation, dict):
            raise ValueError(f"{where}.generation must be an object")
        _refuse_nul(generation, f"{where}.generation")
        outputs.append(
            OutputRow(
                text=_clean_text(item.get("text"), f"{where}.text", required=True),
                source=_clean_choice(item.get("source"), f"{where}.source", SOURCES, defaults["source"]),
                model_name=_clean_text(
                    item.get("model_name"),
                    f"{where}.model_name",
                    required=False,
                    max_length=_provenance_length,
                )
                or defaults["model_name"],
                adapter=_clean_text(
                    item.get("adapter"), f"{where}.adapter", required=False, max_length=_provenance_length
                )
                or defaults["adapter"],
                generation=generation,
            )
        )
    return outputs


def code_task_data(data: dict) -> dict:
    """`data` with the tests of an MBPP (`test_list` + `test_setup_code`) or HumanEval (`test`) task
    also under `tests`; everything else as it came. Data that already has `tests` is left alone."""
    if "tests" in data:
        return data
    test_list = data.get("test_list")
    if isinstance(test_list, list) and all(isinstance(t, str) for t in test_list):
        setup = data.get("test_setup_code") if isinstance(data.get("test_setup_code"), str) else ""
        return {**data, "tests": "\n".join([setup, *test_list]).strip() + "\n"}
    if isinstance(data.get("test"), str) and data["test"].strip():
        return {**data, "tests": data["test"]}
    return data


def clean_record(record: dict, mapping: dict[str, str], *, line: int, csv_cell: bool = False) -> PromptRow:
    """One line of the file as a PromptRow; raises ValueError with the reason."""

    def get(name: str) -> Any:
        return record.get(mapping.get(name, name))

    external_id = get("external_id")
    if isinstance(external_id, int) and not isinstance(external_id, bool):
        external_id = str(external_id)  # JSONL ids are often numbers
    data = _from_json_cell(get("data"), _label("data", mapping), csv_cell=csv_cell)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{_label('data', mapping)} must be an object, not {_json_type(data)}")
    data = code_task_data(data)
    for name, value in (("data", data), ("gold", get("gold"))):
        _refuse_nul(value, _label(name, mapping))
    return PromptRow(
        line=line,
        external_id=_clean_text(
            external_id, _label("external_id", mapping), required=True, max_length=_external_id_length
        ).strip(),
        text=_clean_text(get("text"), _label("text", mapping), required=True),
        context=_clean_text(get("context"), _label("context", mapping), required=False),
        split=_clean_choice(get("split"), _label("split", mapping), SPLITS, Prompt.Split.TRAIN),
        data=data,
        gold=get("gold"),
        outputs=_clean_outputs(record, mapping, csv_cell=csv_cell),
    )


def clean_records(
    records: Iterable[tuple[int, dict]],
    mapping: dict[str, str],
    *,
    csv_cell: bool = False,
    unit: str = "line",
) -> Iterator[PromptRow]:
    """Validate numbered records one by one: each becomes a PromptRow or stops it all with ImportFileError."""
    seen: dict[str, int] = {}
    mapped_seen: set[str] = set()
    count = 0
    for line, record in records:
        mapped_seen.update(theirs for theirs in mapping.values() if theirs in record)
        try:
            row = clean_record(record, mapping, line=line, csv_cell=csv_cell)
        except ValueError as error:
            raise ImportFileError(line, str(error), unit=unit) from error
        if row.external_id in seen:
            raise ImportFileError(
                line,
                f"external_id {row.external_id!r} is already used on {unit} {seen[row.external_id]}",
                unit=unit,
            )
        seen[row.external_id] = line
        count += 1
        yield row
    if not count:
        raise ImportFileError(None, "there are no prompts to import", unit=unit)
    # A CSV header was checked up front; JSON lines have no header, so a mapped name that no line
    # has is caught here (a typo in the mapping would otherwise drop a field silently).
    never = [theirs for theirs in mapping.values() if theirs not in mapped_seen]
    if never:
        raise ImportFileError(None, f"the mapping names {never[0]!r}, which no {unit} has", field="mapping")


def iter_prompt_file(
    source: str | Path | IO, *, fmt: str | None = None, mapping: dict[str, str] | None = None
) -> Iterator[PromptRow]:
    """Read and validate a JSONL or CSV file lazily, a PromptRow per line (see `parse_prompt_file`)."""
    if fmt is not None and fmt not in FORMATS:
        raise ImportFileError(
            None, f"format must be one of {', '.join(FORMATS)} (got {fmt!r})", field="format"
        )
    mapping = clean_mapping(mapping)
    stream, name, opened = _open(source)
    try:
        lines = _text_lines(stream)
        first = next(lines, None)
        lines = chain([first] if first is not None else [], lines)
        fmt = fmt or _guess_format(name, first)
        if fmt == "jsonl":
            yield from clean_records(_jsonl_records(lines), mapping)
        else:
            yield from clean_records(_csv_records(lines, mapping), mapping, csv_cell=True)
    finally:
        if opened:
            stream.close()


def parse_prompt_file(
    source: str | Path | IO, *, fmt: str | None = None, mapping: dict[str, str] | None = None
) -> list[PromptRow]:
    """Every line of a JSONL or CSV file, validated, or ImportFileError for the first bad line.

    `source` is a path or a binary (or text) stream; `fmt` is "jsonl" or "csv", or None to guess
    from the file's extension, then its first line. `mapping` is `{our_field: their_field}`.
    """
    return list(iter_prompt_file(source, fmt=fmt, mapping=mapping))


def parse_prompt_rows(rows: Any, *, mapping: dict[str, str] | None = None) -> list[PromptRow]:
    """The same validation for rows given as a list of objects (the API's JSON body); rows count from 1."""
    if not isinstance(rows, list):
        raise ImportFileError(None, "rows must be a list of objects", field="rows")
    mapping = clean_mapping(mapping)

    def records() -> Iterator[tuple[int, dict]]:
        for number, record in enumerate(rows, start=1):
            if not isinstance(record, dict):
                raise ImportFileError(number, f"must be an object, not {_json_type(record)}", unit="row")
            yield number, record

    return list(clean_records(records(), mapping, unit="row"))


def project_by_reference(reference: str | int) -> Project:
    """A project by id or by name (for the command line); raises Project.DoesNotExist."""
    reference = str(reference).strip()
    if reference.isdigit():
        project = Project.objects.filter(pk=int(reference)).first()
        if project is not None:
            return project
    return Project.objects.get(name=reference)
