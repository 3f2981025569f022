"""Exporting judgments, streamed: plain judgments, and the two shapes TRL reads directly.

- `judgments`: one row per judgment, with its outputs (in the order the rater saw them) and answers.
- `sft`: `{"prompt", "completion"}`, one row per fix (a rater's improved output).
- `preference`: `{"prompt", "chosen", "rejected"}` from pairwise answers (ties skipped) and from
  rankings (every pair of outputs in different rank groups, the better one chosen).
- `qa2`: projects made from the (QA)² template only: one row per judgment of a question and its
  answer, in the released (QA)² data set's column names where they mean the same (see QA2_COLUMNS).
- `refiner`: what a refiner (π_Refine) learns from, one row per fix that comes with written feedback
  on the same judgment: the task, the `output` the feedback is about, the `feedback` and the
  `refinement` (the fix). A code prompt (`data` with `tests`) gives the engine's code-task shape:
  `text` (the description), `prompt` (a HumanEval prefix from `data`, else ""), `test`, `entry_point`.

Training exports (sft, preference) and the qa2 data set take only pending and accepted
judgments: a curator's rejection or exclusion takes a judgment out of the training data.

CSV is for people, who open it in a spreadsheet: nested values (outputs, answers) are JSON text,
and a cell a spreadsheet would run as a formula is escaped (see `csv_cell`). JSONL and parquet
hold the text verbatim.

Rows are made from a few queries of plain values (no model instances), each ordered by judgment
id and read a chunk at a time through a server-side cursor, merged in one pass, and written as
they come: an export holds a few chunks in memory whatever the project's size. Parquet is written
a row group at a time, and a download sends each row group as soon as it is written.
"""

from __future__ import annotations

import csv
import gc
import json
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from json.encoder import c_make_encoder, encode_basestring
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from django.contrib.auth import get_user_model
from django.db import connection, connections, transaction
from django.db.models import Exists, JSONField, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.sql.constants import MULTI

from annotation import templates_qa2
from annotation.errors import ApplicationError
from annotation.models import TRAINING_STATUSES, Answer, Judgment, Project, Task, TaskOutput
from annotation.questions import ranking_groups

KINDS = ("judgments", "sft", "preference", "qa2", "refiner")
FORMATS = ("jsonl", "csv", "parquet")
STATUSES = tuple(Judgment.Status.values)
CHUNK_SIZE = 2000  # rows a server-side cursor hands over at a time
# Columns holding nested answers, written as JSON text in parquet (their shape varies by question).
JSON_COLUMNS = {"judgments": ("answers",), "sft": (), "preference": (), "qa2": (), "refiner": ()}


class ExportError(ApplicationError, ValueError):
    """The export cannot be made as asked; `field` names the request parameter at fault."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field

    @property
    def extra(self) -> dict:
        return {"field": self.field}


def training_prompt(text: str, context: str = "") -> str:
    """The model's input for a prompt: its context (a post, a conversation), then its text."""
    return f"{context}\n\n{text}" if context else text


def _judgments(project: Project, statuses: Iterable[str] | None, round_number: int | None) -> QuerySet:
    judgments = Judgment.objects.filter(project=project)
    if statuses is not None:
        judgments = judgments.filter(status__in=list(statuses))
    if round_number is not None:
        judgments = judgments.filter(round_number=round_number)
    return judgments


def _training_statuses(statuses: Iterable[str] | None, kind: str) -> tuple[str, ...]:
    if statuses is None:
        return TRAINING_STATUSES
    statuses = tuple(statuses)
    outside = [status for status in statuses if status not in TRAINING_STATUSES]
    if outside:
        raise ExportError(
            f"{kind} exports are training data: they take only pending and accepted judgments "
            f"(not {outside[0]!r})",
            field="status",
        )
    return statuses


def with_answers_and_outputs(judgments: QuerySet, *, answer_kinds: Iterable[str] | None = None) -> QuerySet:
    """Judgments with their answers as `answer_list` (oldest first; only those of `answer_kinds` when
    given) and their task's outputs as `task.shown` (TaskOutput rows with their output, in position
    order), each prefetched once per chunk. to_attr gives plain lists: no queryset is cloned per row.
    (For a few judgments at a time; the exports below read plain values instead.)"""
    answers = Answer.objects.order_by("id")
    if answer_kinds is not None:
        answers = answers.filter(kind__in=list(answer_kinds))
    return judgments.prefetch_related(
        Prefetch("answer_rows", queryset=answers, to_attr="answer_list"),
        Prefetch(
            "task__task_outputs",
            queryset=TaskOutput.objects.select_related("output").order_by("position"),
            to_attr="shown",
        ),
    )


def _check_statuses(statuses: Iterable[str] | None) -> None:
    for status in statuses or ():
        if status not in STATUSES:
            raise ExportError(f"status must be among {', '.join(STATUSES)} (got {status!r})", field="status")


# ---------------------------------------------------------------- reading plain values, in order
#
# An export reads a few queries of plain values, each ordered by judgment id and read through a
# server-side cursor (`.iterator()`), and merges them in one pass: the judgments, their answers and
# their tasks' outputs. No model instance is built and nothing is prefetched, and memory holds one
# cursor chunk of each query, whatever the project's size. Within a judgment, answers (by id) and
# outputs (by position) are put in order here, so the database can read them in judgment order
# from its indexes instead of sorting them all.


class _Rows:
    """The rows of `queryset.values_list(*fields)`, read chunk by chunk through a server-side cursor,
    with JSON columns left as their text (decode them with `json_value`). On PostgreSQL a thread fetches the next chunk while this one is used, so the database
    works while Python does; it holds at most two chunks besides the one being read."""

    AHEAD = 2

    def __init__(self, queryset: QuerySet, fields: tuple[str, ...], *, chunk_size: int):
        query = queryset.values_list(*fields)
        compiler = query.query.get_compiler(using=query.db)
        self._connection = connections[query.db]
        self._chunks = _closable(compiler.execute_sql(MULTI, chunked_fetch=True, chunk_size=chunk_size))
        selected = [column[0] for column in compiler.select[: compiler.col_count]] if compiler.select else []
        self._converters = [
            (position, convert)
            for position, (converters, expression) in compiler.get_converters(selected).items()
            if (convert := _converter(converters, expression, self._connection)) is not None
        ]
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if self._connection.vendor == "postgresql":
            self._queue = queue.Queue(maxsize=self.AHEAD)
            self._thread = threading.Thread(target=self._fetch, name="export-read-ahead", daemon=True)
            self._thread.start()

    def _fetch(self) -> None:
        try:
            for chunk in self._chunks:
                if self._stop.is_set():
                    break
                self._queue.put(chunk)
        except BaseException as error:  # handed to the reader, who raises it
            self._queue.put(_Failed(error))
        finally:
            self._chunks.close()
            self._queue.put(_DONE)

    def _fetched(self) -> Iterator[list]:
        if self._queue is None:
            yield from self._chunks
            return
        while (chunk := self._queue.get()) is not _DONE:
            if isinstance(chunk, _Failed):
                raise chunk.error
            yield chunk

    def __iter__(self) -> Iterator[list]:
        converters = self._converters
        for chunk in self._fetched():
            if not converters:
                yield from chunk
                continue
            for row in chunk:
                row = list(row)
                for position, convert in converters:
                    row[position] = convert(row[position])
                yield row

    def close(self) -> None:
        """Stop reading (at once, or after the chunk being fetched) and close the cursor."""
        if self._thread is None:
            self._chunks.close()
            return
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def _closable(chunks: Iterable[list]) -> Iterator[list]:
    yield from chunks  # closing this closes the cursor's own generator (an empty query has none)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


_scan_json = json.JSONDecoder().scan_once


def json_value(text: Any) -> Any:
    """JSON text as its value, as JSONField.from_db_value reads it (text that is not JSON stays as it
    is), without json.loads's per-call overhead: the decoder's scanner reads the one value."""
    if text is None or not isinstance(text, str):
        return text
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, json.JSONDecodeError):
        end = -1
    if end == len(text):
        return value
    try:  # leading or trailing space, or not JSON: the slow path says which
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _converter(converters: list, expression, connection):
    """The database-to-Python converters of one selected column as one function of the value, less
    a JSONField's own (the reader decodes JSON text with `json_value` where it uses it); None when
    there are no others."""
    functions = [
        converter
        for converter in converters
        if getattr(converter, "__func__", None) is not JSONField.from_db_value
    ]
    if not functions:
        return None

    def convert(value):
        for function in functions:
            value = function(value, expression, connection)
        return value

    return convert


class _Reader:
    """The row streams of one export, read inside one snapshot of the database; closed together.

    While they are read, the objects the process held before (its modules, Django's and pyarrow's) are
    left out of the garbage collector's full passes (`gc.freeze`): an export makes millions of objects,
    enough to start a full pass every few thousand rows, and each pass scanned the whole heap, a
    fifth of a parquet export's CPU time. Those objects are collectable again when the export ends
    (a cycle among them that became garbage meanwhile is freed then); a concurrent export's end
    only hands them back early."""

    def __init__(self, chunk_size: int):
        self._chunk_size = chunk_size
        self._open: list[_Rows] = []

    def rows(self, queryset: QuerySet, *fields: str) -> _Rows:
        rows = _Rows(queryset, fields, chunk_size=self._chunk_size)
        self._open.append(rows)
        return rows

    def __enter__(self) -> _Reader:
        self._snapshot = _one_snapshot()
        self._snapshot.__enter__()
        gc.freeze()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            for rows in reversed(self._open):
                rows.close()
        finally:
            gc.unfreeze()
            self._snapshot.__exit__(*exc_info)


class _Follow:
    """Follows a stream of rows ordered by their first value (a judgment id) alongside the judgments,
    which come in the same order."""

    def __init__(self, rows: Iterable[list]):
        self._rows = iter(rows)
        self._next = next(self._rows, None)

    def of(self, judgment_id: int) -> list[list]:
        """This judgment's rows, sorted by their second value (an answer's id, an output's position);
        [] when it has none. Earlier judgments' rows are passed over."""
        row, rows = self._next, self._rows
        while row is not None and row[0] < judgment_id:
            row = next(rows, None)
        group = []
        while row is not None and row[0] == judgment_id:
            group.append(row)
            row = next(rows, None)
        self._next = row
        if len(group) > 1:
            group.sort(key=itemgetter(1))
        return group


def _answers_of(
    read: _Reader, judgments: QuerySet, *fields: str, kinds: Iterable[str] | None = None
) -> _Rows:
    """The answers of these judgments as (judgment id, answer id, *fields), in judgment order."""
    answers = Answer.objects.filter(judgment__in=judgments.values("id"))
    if kinds is not None:
        answers = answers.filter(kind__in=list(kinds))
    return read.rows(answers.order_by("judgment_id"), "judgment_id", "id", *fields)


def _outputs_of(read: _Reader, judgments: QuerySet, *fields: str) -> Iterator[list]:
    """The outputs of these judgments' tasks as (judgment id, position, output id, *fields), in judgment
    order (a judgment whose task has no outputs gives none)."""
    rows = read.rows(
        judgments.order_by("id"),
        "id",
        "task__task_outputs__position",
        "task__task_outputs__output_id",
        *(f"task__task_outputs__output__{name}" for name in fields),
    )
    return (row for row in rows if row[2] is not None)  # (an outer join: a task without outputs)


def _first_output_text() -> Subquery:
    """The text of the first output (by position) of a judgment's task; None when it has none."""
    first = TaskOutput.objects.filter(task_id=OuterRef("task_id")).order_by("position")
    return Subquery(first.values("output__text")[:1])


@contextmanager
def _one_snapshot():
    """Every query of one export reads the same snapshot of the database. On PostgreSQL this also
    keeps the server-side cursors inside a transaction, so rows are streamed, not first copied out."""
    outermost = not connection.in_atomic_block
    if outermost and connection.vendor == "sqlite":
        # Refinery's SQLite transactions begin IMMEDIATE (they take the write lock at once, so
        # that queue transactions never interleave): an export that did so would hold every
        # rater's submission back for its whole run. It only reads, so it reads one WAL snapshot
        # in a deferred transaction, which never blocks a writer.
        with connection.cursor() as cursor:
            cursor.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("COMMIT")
        return
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                # Compiling a plan to machine code pays off for one big query run to its end, not
                # for cursors read a chunk at a time: it cost more than it saved here.
                cursor.execute("SET LOCAL jit = off")
        yield


def _username() -> str:
    return f"rater__{get_user_model().USERNAME_FIELD}"


def iter_judgment_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """One row per judgment of the project (all statuses unless `statuses` says which), oldest first."""
    _check_statuses(statuses)
    judgments = _judgments(project, statuses, round_number)
    with _Reader(chunk_size) as read:
        rows = read.rows(
            judgments.order_by("id"),
            "id",
            "task_id",
            "task__kind",
            "task__prompt__external_id",
            "task__prompt__text",
            _username(),
            "display_order",
            "time_spent_ms",
            "late",
            "status",
            "round_number",
            "created_at",
        )
        answers = _Follow(_answers_of(read, judgments, "question", "value"))
        outputs = _Follow(_outputs_of(read, judgments, "text", "model_name", "source"))
        for (
            judgment_id,
            task_id,
            task_kind,
            external_id,
            prompt_text,
            rater,
            display_order,
            time_spent_ms,
            late,
            status,
            round_number,
            created_at,
        ) in rows:
            by_id = {
                output_id: {"id": output_id, "text": text, "model_name": model_name, "source": source}
                for _, _, output_id, text, model_name, source in outputs.of(judgment_id)
            }
            display_order = json_value(display_order)
            order = display_order if sorted(display_order or []) == sorted(by_id) else list(by_id)
            yield {
                "judgment_id": judgment_id,
                "task_id": task_id,
                "task_kind": task_kind,
                "prompt_external_id": external_id,
                "prompt_text": prompt_text,
                "outputs": [by_id[output_id] for output_id in order],
                "rater": rater,
                "answers": {question: json_value(value) for _, _, question, value in answers.of(judgment_id)},
                "time_spent_ms": time_spent_ms,
                "late": late,
                "status": status,
                "round": round_number,
                "created_at": created_at.isoformat(),
            }


def iter_sft_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """`{"prompt", "completion"}` for every fix written on a pending or accepted judgment."""
    statuses = _training_statuses(statuses, "sft")
    fixes = Answer.objects.filter(
        kind=Answer.Kind.FIX, judgment__in=_judgments(project, statuses, round_number)
    ).order_by("judgment_id", "id")
    with _Reader(chunk_size) as read:
        for value, context, text in read.rows(
            fixes, "value", "judgment__task__prompt__context", "judgment__task__prompt__text"
        ):
            value = json_value(value)
            if isinstance(value, str) and value.strip():
                yield {"prompt": training_prompt(text, context), "completion": value}


def _preferred_pairs(kind: str, value: Any, output_ids: list[int]) -> Iterator[tuple[int, int]]:
    """(better, worse) output id pairs stated by one pairwise or ranking answer."""
    if kind == Answer.Kind.PAIRWISE:
        preferred = value.get("preferred") if isinstance(value, dict) else None
        if preferred is None or preferred not in output_ids:  # a tie says nothing about which is better
            return
        for other in output_ids:
            if other != preferred:
                yield preferred, other
    else:
        groups = ranking_groups(value)
        for index, better_group in enumerate(groups):
            for worse_group in groups[index + 1 :]:
                for better in better_group:
                    for worse in worse_group:
                        yield better, worse


COMPARISONS = (Answer.Kind.PAIRWISE, Answer.Kind.RANKING)


def iter_preference_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """`{"prompt", "chosen", "rejected"}` from the comparisons and rankings of pending or accepted judgments."""
    statuses = _training_statuses(statuses, "preference")
    base = _judgments(project, statuses, round_number)
    judgments = base.filter(Exists(Answer.objects.filter(judgment_id=OuterRef("id"), kind__in=COMPARISONS)))
    with _Reader(chunk_size) as read:
        rows = read.rows(
            judgments.order_by("id"),
            "id",
            "task__prompt__text",
            "task__prompt__context",
        )
        answers = _Follow(_answers_of(read, base, "kind", "value", kinds=COMPARISONS))
        outputs = _Follow(_outputs_of(read, judgments, "text"))
        for judgment_id, text, context in rows:
            text_of = {output_id: output_text for _, _, output_id, output_text in outputs.of(judgment_id)}
            prompt = training_prompt(text, context)
            for _, _, kind, value in answers.of(judgment_id):
                for better, worse in _preferred_pairs(kind, json_value(value), list(text_of)):
                    if better in text_of and worse in text_of:
                        yield {"prompt": prompt, "chosen": text_of[better], "rejected": text_of[worse]}


def iter_refiner_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """One row per pending or accepted judgment with both a fix and written feedback (the first of
    each): the output they are about is the task's first shown output."""
    statuses = _training_statuses(statuses, "refiner")
    kinds = (Answer.Kind.FIX, Answer.Kind.FEEDBACK)
    judgments = _judgments(project, statuses, round_number)
    for kind in kinds:
        judgments = judgments.filter(Exists(Answer.objects.filter(judgment_id=OuterRef("id"), kind=kind)))
    with _Reader(chunk_size) as read:
        rows = read.rows(
            judgments.order_by("id").annotate(first_output=_first_output_text()),
            "id",
            "task__prompt__text",
            "task__prompt__context",
            "task__prompt__data",
            "first_output",
        )
        answers = _Follow(_answers_of(read, judgments, "kind", "value", kinds=kinds))
        for judgment_id, text, context, data, output in rows:
            first = {}
            for _, _, kind, raw in answers.of(judgment_id):
                value = json_value(raw)
                if isinstance(value, str) and value.strip():
                    first.setdefault(kind, value)
            if len(first) < 2 or output is None:
                continue
            data = json_value(data)
            data = data if isinstance(data, dict) else {}
            tests = data.get("tests")
            is_code = isinstance(tests, str) and bool(tests.strip())
            yield {
                "kind": "code" if is_code else "text",
                "prompt": str(data.get("prompt") or "") if is_code else training_prompt(text, context),
                "text": text,
                "test": tests if is_code else "",
                "entry_point": data.get("entry_point") if is_code else None,
                "output": output,
                "feedback": first[Answer.Kind.FEEDBACK],
                "refinement": first[Answer.Kind.FIX],
            }


# ---------------------------------------------------------------- (QA)²

# The released (QA)² data set's own column names (Kim et al., github.com/najoungkim/QAQA,
# QAQA_evaluation_set_Dec2022.csv) where a column means the same: `question`; `all_assumptions_valid`,
# "has_invalid" when the question holds a false or unverifiable assumption (the value its readers test
# for) and "all_valid" otherwise; `questionable_assumption`, that assumption's text ("" when none). The
# rest are Refinery's: the answer that was judged (the data set's `abstractive_answer` is its own
# reference answer, not a model's), and the rater's verdict on it.
QA2_HAS_INVALID, QA2_ALL_VALID = "has_invalid", "all_valid"
QA2_COLUMNS = (
    "judgment_id",
    "prompt_external_id",
    "question",
    "answer",  # the answer the rater judged
    "all_assumptions_valid",  # "has_invalid": the rater found a questionable assumption; else "all_valid"
    "questionable_assumption",  # the assumption, in the rater's words ("" when none)
    "acceptable",  # the rater found the answer acceptable
    "explanation",  # why not, and what it should say ("" when none written)
    "rater",
    "status",
    "round",
)


def iter_qa2_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """One row per pending or accepted judgment of a single-answer, non-gold task, oldest first."""
    statuses = _training_statuses(statuses, "qa2")
    judgments = _judgments(project, statuses, round_number).filter(
        task__kind=Task.Kind.SINGLE, task__is_gold=False
    )
    with _Reader(chunk_size) as read:
        rows = read.rows(
            judgments.order_by("id").annotate(first_output=_first_output_text()),
            "id",
            "task__prompt__external_id",
            "task__prompt__text",
            "first_output",
            _username(),
            "status",
            "round_number",
        )
        answers_of = _Follow(_answers_of(read, judgments, "question", "value"))
        for judgment_id, external_id, question, output, rater, status, round_number in rows:
            answers = {name: json_value(value) for _, _, name, value in answers_of.of(judgment_id)}
            rubric = answers.get(templates_qa2.ASSUMPTION_QUESTION)
            rubric = rubric if isinstance(rubric, dict) else {}
            flagged = templates_qa2.ASSUMPTION_FLAG in (rubric.get("flags") or [])
            score = answers.get(templates_qa2.ACCEPTABLE_QUESTION)
            score = score.get(templates_qa2.ACCEPTABLE_QUESTION) if isinstance(score, dict) else None
            explanation = answers.get(templates_qa2.EXPLANATION_QUESTION)
            yield {
                "judgment_id": judgment_id,
                "prompt_external_id": external_id,
                "question": question,
                "answer": "" if output is None else output,
                "all_assumptions_valid": QA2_HAS_INVALID if flagged else QA2_ALL_VALID,
                "questionable_assumption": (rubric.get("notes") or {}).get(templates_qa2.ASSUMPTION_FLAG, "")
                if flagged
                else "",
                "acceptable": None if score is None else score == 1,
                "explanation": explanation if isinstance(explanation, str) else "",
                "rater": rater,
                "status": status,
                "round": round_number,
            }


def export_rows(
    project: Project,
    *,
    kind: str,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """The rows of one export kind. Raises ExportError (at once, not when iterated) for a bad request."""
    statuses = export_statuses(project, kind=kind, statuses=statuses)
    make = {
        "judgments": iter_judgment_rows,
        "sft": iter_sft_rows,
        "preference": iter_preference_rows,
        "qa2": iter_qa2_rows,
        "refiner": iter_refiner_rows,
    }[kind]
    return make(project, statuses=statuses, round_number=round_number, chunk_size=chunk_size)


def export_statuses(project: Project, *, kind: str, statuses: Iterable[str] | None) -> Iterable[str] | None:
    """The statuses an export of `kind` reads (a training kind: only those it may train on). Raises
    ExportError for a kind, status or project the request may not ask for."""
    if kind not in KINDS:
        raise ExportError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})", field="kind")
    _check_statuses(statuses)
    if kind != "judgments":
        statuses = _training_statuses(statuses, kind)
    if kind == "qa2" and not templates_qa2.is_qa2_project(project.questions):
        raise ExportError(
            "qa2 exports are for projects that ask the (QA)² template's questions", field="kind"
        )
    return statuses


def _json_text():
    """`json.dumps(value, ensure_ascii=False)`, with its encoder made once instead of on every call
    (json.dumps builds one per call when given options). The same text: the same C encoder, the
    same separators; only the circular-reference check, which export rows never need, is left out."""
    encoder = json.JSONEncoder(ensure_ascii=False)
    if c_make_encoder is None:
        return encoder.encode
    iterencode = c_make_encoder(
        None, encoder.default, encode_basestring, None, ": ", ", ", False, False, True
    )

    def dumps(value: Any) -> str:
        if isinstance(value, str):
            return encode_basestring(value)
        return "".join(iterencode(value, 0))

    return dumps


json_text = _json_text()


def jsonl_lines(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield json_text(row) + "\n"


def write_jsonl(rows: Iterable[dict], stream: IO[str], *, lines_per_write: int = 1000) -> int:
    """Write rows as JSON lines to a text stream, a thousand lines a write. Returns how many."""
    count = 0
    pending: list[str] = []
    for line in jsonl_lines(rows):
        pending.append(line)
        if len(pending) >= lines_per_write:
            stream.write("".join(pending))
            count += len(pending)
            pending = []
    if pending:
        stream.write("".join(pending))
        count += len(pending)
    return count


# Cells a spreadsheet reads as a formula (or, for tab and CR, as one once trimmed): OWASP's list.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = {
    "judgments": (
        "judgment_id",
        "task_id",
        "task_kind",
        "prompt_external_id",
        "prompt_text",
        "outputs",
        "rater",
        "answers",
        "time_spent_ms",
        "late",
        "status",
        "round",
        "created_at",
    ),
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "qa2": QA2_COLUMNS,
    "refiner": ("kind", "prompt", "text", "test", "entry_point", "output", "feedback", "refinement"),
}


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: nested values as JSON text, and text that a spreadsheet would take
    for a formula (`=HYPERLINK(...)`, `+1`, `@SUM`) prefixed with a single quote, so that it is
    shown, not run. Raters' and models' text is untrusted; numbers and booleans stay as they are.
    """
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _Line:
    """A file-like object whose write() hands back the text, for csv.writer one row at a time."""

    def write(self, text: str) -> str:
        return text


def csv_lines(rows: Iterable[dict], *, kind: str) -> Iterator[str]:
    """The header, then one CSV line per row (RFC 4180 quoting, CRLF line ends)."""
    columns = CSV_COLUMNS[kind]
    writer = csv.writer(_Line())
    yield writer.writerow(columns)
    for row in rows:
        yield writer.writerow([csv_cell(row[name]) for name in columns])


def write_csv(rows: Iterable[dict], stream: IO[str], *, kind: str) -> int:
    """Write rows as CSV to a text stream (open it with newline=""). Returns how many rows."""
    count = -1  # the header is not a row
    for line in csv_lines(rows, kind=kind):
        stream.write(line)
        count += 1
    return count


def export_schema(kind: str):
    """The fixed parquet schema of an export kind (so an empty export still has its columns)."""
    import pyarrow as pa

    if kind == "sft":
        return pa.schema([("prompt", pa.string()), ("completion", pa.string())])
    if kind == "preference":
        return pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])
    if kind == "refiner":
        return pa.schema([(name, pa.string()) for name in CSV_COLUMNS["refiner"]])
    if kind == "qa2":
        number, flag = pa.int64(), pa.bool_()
        types = {"judgment_id": number, "round": number, "acceptable": flag}
        return pa.schema([(name, types.get(name, pa.string())) for name in QA2_COLUMNS])
    if kind == "judgments":
        output = pa.struct(
            [("id", pa.int64()), ("text", pa.string()), ("model_name", pa.string()), ("source", pa.string())]
        )
        return pa.schema(
            [
                ("judgment_id", pa.int64()),
                ("task_id", pa.int64()),
                ("task_kind", pa.string()),
                ("prompt_external_id", pa.string()),
                ("prompt_text", pa.string()),
                ("outputs", pa.list_(output)),
                ("rater", pa.string()),
                ("answers", pa.string()),  # JSON text: {question: value}
                ("time_spent_ms", pa.int64()),
                ("late", pa.bool_()),
                ("status", pa.string()),
                ("round", pa.int64()),
                ("created_at", pa.string()),
            ]
        )
    raise ExportError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})", field="kind")


PARQUET_BATCH_ROWS = 5000  # rows per parquet row group: what a parquet export holds in memory
# The columns parquet stores dictionary-encoded, by kind (a kind not named here: every column, as
# pyarrow does by default). A judgment's texts, answers, ids and times are nearly all distinct within
# a row group: a dictionary of them is as big as the values and slows writing (the file came out a
# fifth bigger); one of its kind, rater and status is small.
PARQUET_DICTIONARY_COLUMNS = {
    "judgments": [
        "task_kind",
        "rater",
        "status",
        "outputs.list.element.model_name",
        "outputs.list.element.source",
    ],
}


def _parquet_writer(where, kind: str):
    import pyarrow.parquet as pq

    return pq.ParquetWriter(
        where, export_schema(kind), use_dictionary=PARQUET_DICTIONARY_COLUMNS.get(kind, True)
    )


def _record_batches(rows: Iterable[dict], *, kind: str, batch_size: int):
    """Rows as record batches of the kind's schema, `batch_size` rows at a time, built column by
    column (RecordBatch.from_pylist, row by row, takes several times as long).

    A batch holds each row as a tuple of its cell values, not the row itself: JSON columns as their
    text and a list of structs (a judgment's outputs) as tuples of the structs' values. Tuples of
    plain values are soon untracked by Python's garbage collector, which otherwise scans a batch's
    nested dicts and lists again and again while the batch fills, and with them the whole heap:
    that cost more than converting the batch."""
    import pyarrow as pa

    schema = export_schema(kind)
    json_columns = JSON_COLUMNS[kind]

    def cell(field) -> Any:
        """How a row's value becomes the batch's: None to keep it as it is."""
        if field.name in json_columns:
            return json_text
        if pa.types.is_list(field.type) and pa.types.is_struct(field.type.value_type):
            struct_values = itemgetter(*(child.name for child in field.type.value_type))
            return lambda items: tuple(map(struct_values, items))
        return None

    converted = [(field.name, convert) for field in schema if (convert := cell(field)) is not None]
    plain = [field.name for field in schema if field.name not in dict(converted)]
    # The batch's column order: the plain columns, then the converted ones.
    order = [*plain, *(name for name, _ in converted)]
    position = [order.index(field.name) for field in schema]

    plain_values = itemgetter(*plain) if len(plain) > 1 else lambda row: (row[plain[0]],)

    def values_of(row: dict) -> tuple:
        if not converted:
            return plain_values(row)
        return plain_values(row) + tuple([convert(row[name]) for name, convert in converted])

    def record_batch(batch: list[tuple]):
        columns = list(zip(*batch, strict=True))
        arrays = [pa.array(columns[position[index]], type=field.type) for index, field in enumerate(schema)]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    batch: list[tuple] = []
    for row in rows:
        batch.append(values_of(row))
        if len(batch) >= batch_size:
            yield record_batch(batch)
            batch = []
    if batch:
        yield record_batch(batch)


def write_parquet(
    rows: Iterable[dict],
    path_or_stream: str | Path | IO[bytes],
    *,
    kind: str,
    batch_size: int = PARQUET_BATCH_ROWS,
) -> int:
    """Write rows to a parquet file a row group at a time (memory: one batch). Returns the row count."""
    where = str(path_or_stream) if isinstance(path_or_stream, Path) else path_or_stream
    count = 0
    with _parquet_writer(where, kind) as writer:
        for batch in _record_batches(rows, kind=kind, batch_size=batch_size):
            writer.write_batch(batch)
            count += batch.num_rows
    return count


class _Outbox:
    """A write-only binary stream that keeps what is written until it is taken: the sink a parquet
    writer writes into while the bytes it has written so far are sent on."""

    closed = False

    def __init__(self):
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def parquet_chunks(rows: Iterable[dict], *, kind: str, batch_size: int | None = None) -> Iterator[bytes]:
    """A parquet file as the bytes of one row group after another, each handed on as soon as it is
    written (the footer, which indexes them, comes last): memory holds one batch of rows, however
    many there are."""
    outbox = _Outbox()
    writer = _parquet_writer(outbox, kind)
    try:
        for batch in _record_batches(rows, kind=kind, batch_size=batch_size or PARQUET_BATCH_ROWS):
            writer.write_batch(batch)
            if data := outbox.take():
                yield data
    finally:
        writer.close()
    yield outbox.take()


MEDIA_TYPES = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}


def file_chunks(rows: Iterable[dict], *, kind: str, fmt: str) -> Iterator[bytes]:
    """An export file's bytes, piece by piece as the rows are read: JSONL and CSV (UTF-8) a line at
    a time, parquet a row group at a time. What a download sends, whichever process makes it."""
    if fmt == "parquet":
        return parquet_chunks(rows, kind=kind)
    lines = jsonl_lines(rows) if fmt == "jsonl" else csv_lines(rows, kind=kind)
    return (line.encode("utf-8") for line in lines)
