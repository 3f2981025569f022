"""The export rows as the ORM reads them, one judgment object (and its prefetches) at a time.

annotation.exporting reads the same rows with a few ordered queries of plain values; this slower,
plainer reading is what tests/test_export_equivalence.py holds it to, row for row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from django.db.models import Prefetch

from annotation import templates_qa2

# The request's checks, the filters, the prefetch and which pairs a preference states are
# annotation.exporting's own: what is held to the ORM reading is how the rows are read and put
# together.
from annotation.exporting import (
    QA2_ALL_VALID,
    QA2_HAS_INVALID,
    _check_statuses,
    _judgments,
    _preferred_pairs,
    _training_statuses,
    export_statuses,
    training_prompt,
    with_answers_and_outputs,
)
from annotation.models import Answer, Project, Task, TaskOutput

CHUNK_SIZE = 500


def iter_judgment_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """One row per judgment of the project (all statuses unless `statuses` says which), oldest first."""
    _check_statuses(statuses)
    judgments = with_answers_and_outputs(
        _judgments(project, statuses, round_number).select_related("task__prompt", "rater").order_by("id")
    )
    for judgment in judgments.iterator(chunk_size=chunk_size):
        task, prompt = judgment.task, judgment.task.prompt
        by_id = {shown.output_id: shown.output for shown in task.shown}
        order = (
            judgment.display_order if sorted(judgment.display_order or []) == sorted(by_id) else list(by_id)
        )
        yield {
            "judgment_id": judgment.pk,
            "task_id": task.pk,
            "task_kind": task.kind,
            "prompt_external_id": prompt.external_id,
            "prompt_text": prompt.text,
            "outputs": [
                {
                    "id": output_id,
                    "text": by_id[output_id].text,
                    "model_name": by_id[output_id].model_name,
                    "source": by_id[output_id].source,
                }
                for output_id in order
            ],
            "rater": judgment.rater.get_username(),
            "answers": {answer.question: answer.value for answer in judgment.answer_list},
            "time_spent_ms": judgment.time_spent_ms,
            "late": judgment.late,
            "status": judgment.status,
            "round": judgment.round_number,
            "created_at": judgment.created_at.isoformat(),
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
    fixes = (
        Answer.objects.filter(kind=Answer.Kind.FIX, judgment__in=_judgments(project, statuses, round_number))
        .order_by("judgment_id", "id")
        .values_list("value", "judgment__task__prompt__context", "judgment__task__prompt__text")
    )
    for value, context, text in fixes.iterator(chunk_size=chunk_size):
        if isinstance(value, str) and value.strip():
            yield {"prompt": training_prompt(text, context), "completion": value}


def iter_preference_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """`{"prompt", "chosen", "rejected"}` from the comparisons and rankings of pending or accepted judgments."""
    statuses = _training_statuses(statuses, "preference")
    answers = (
        Answer.objects.filter(
            kind__in=[Answer.Kind.PAIRWISE, Answer.Kind.RANKING],
            judgment__in=_judgments(project, statuses, round_number),
        )
        .select_related("judgment__task__prompt")
        .only("kind", "value", "judgment__task__prompt__context", "judgment__task__prompt__text")
        .prefetch_related(
            Prefetch(
                "judgment__task__task_outputs",
                queryset=TaskOutput.objects.select_related("output").only("task_id", "output__text"),
                to_attr="shown",
            )
        )
        .order_by("judgment_id", "id")
    )
    for answer in answers.iterator(chunk_size=chunk_size):
        task = answer.judgment.task
        text_of = {shown.output_id: shown.output.text for shown in task.shown}
        prompt = training_prompt(task.prompt.text, task.prompt.context)
        for better, worse in _preferred_pairs(answer.kind, answer.value, list(text_of)):
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
    judgments = with_answers_and_outputs(
        _judgments(project, statuses, round_number)
        .filter(answer_rows__kind=Answer.Kind.FIX)
        .filter(answer_rows__kind=Answer.Kind.FEEDBACK)
        .distinct()
        .select_related("task__prompt")
        .order_by("id"),
        answer_kinds=[Answer.Kind.FIX, Answer.Kind.FEEDBACK],
    )
    for judgment in judgments.iterator(chunk_size=chunk_size):
        first = {}
        for answer in judgment.answer_list:
            if isinstance(answer.value, str) and answer.value.strip():
                first.setdefault(answer.kind, answer.value)
        prompt, shown = judgment.task.prompt, judgment.task.shown
        if len(first) < 2 or not shown:
            continue
        data = prompt.data if isinstance(prompt.data, dict) else {}
        tests = data.get("tests")
        is_code = isinstance(tests, str) and bool(tests.strip())
        yield {
            "kind": "code" if is_code else "text",
            "prompt": str(data.get("prompt") or "")
            if is_code
            else training_prompt(prompt.text, prompt.context),
            "text": prompt.text,
            "test": tests if is_code else "",
            "entry_point": data.get("entry_point") if is_code else None,
            "output": shown[0].output.text,
            "feedback": first[Answer.Kind.FEEDBACK],
            "refinement": first[Answer.Kind.FIX],
        }


def iter_qa2_rows(
    project: Project,
    *,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[dict]:
    """One row per pending or accepted judgment of a single-answer, non-gold task, oldest first."""
    statuses = _training_statuses(statuses, "qa2")
    judgments = with_answers_and_outputs(
        _judgments(project, statuses, round_number)
        .filter(task__kind=Task.Kind.SINGLE, task__is_gold=False)
        .select_related("task__prompt", "rater")
        .order_by("id")
    )
    for judgment in judgments.iterator(chunk_size=chunk_size):
        answers = {answer.question: answer.value for answer in judgment.answer_list}
        rubric = answers.get(templates_qa2.ASSUMPTION_QUESTION)
        rubric = rubric if isinstance(rubric, dict) else {}
        flagged = templates_qa2.ASSUMPTION_FLAG in (rubric.get("flags") or [])
        score = answers.get(templates_qa2.ACCEPTABLE_QUESTION)
        score = score.get(templates_qa2.ACCEPTABLE_QUESTION) if isinstance(score, dict) else None
        explanation = answers.get(templates_qa2.EXPLANATION_QUESTION)
        shown = judgment.task.shown
        yield {
            "judgment_id": judgment.pk,
            "prompt_external_id": judgment.task.prompt.external_id,
            "question": judgment.task.prompt.text,
            "answer": shown[0].output.text if shown else "",
            "all_assumptions_valid": QA2_HAS_INVALID if flagged else QA2_ALL_VALID,
            "questionable_assumption": (rubric.get("notes") or {}).get(templates_qa2.ASSUMPTION_FLAG, "")
            if flagged
            else "",
            "acceptable": None if score is None else score == 1,
            "explanation": explanation if isinstance(explanation, str) else "",
            "rater": judgment.rater.get_username(),
            "status": judgment.status,
            "round": judgment.round_number,
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
