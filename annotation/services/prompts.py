"""Prompts: one created through the API, or many imported (with their outputs and tasks) all or nothing.

Rows come validated from annotation.importing; this writes them, and checks what only the
database knows (external ids already in the project).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from annotation import selectors
from annotation.importing import TASK_MODES, ImportFileError, PromptRow
from annotation.models import Output, Project, Prompt, Task
from annotation.questions import questions_for
from annotation.services.tasks import BATCH_SIZE, TASK_SIZES, TaskDraft, output_create_many, task_create


@dataclass
class ImportResult:
    prompts: int
    outputs: int
    tasks: int


def prompt_create(*, project: Project, **fields: Any) -> Prompt:
    """A new prompt in the project; `fields` are the Prompt's others, validated by the caller."""
    return Prompt.objects.create(project=project, **fields)


def _check_task_shape(rows: list[PromptRow], tasks: str, unit: str) -> None:
    if tasks in ("none", "single"):
        return
    low, high = TASK_SIZES[tasks]
    need = f"exactly {low}" if low == high else f"{low} to {high}"
    for row in rows:
        if not low <= len(row.outputs) <= high:
            raise ImportFileError(
                row.line,
                f"{tasks} tasks need {need} outputs per prompt (this has {len(row.outputs)})",
                unit=unit,
            )


def _check_not_in_project(project: Project, rows: list[PromptRow], unit: str) -> None:
    line_of = {row.external_id: row.line for row in rows}
    taken = selectors.prompt_external_ids_taken(project, list(line_of))
    if taken:
        first = min(taken, key=line_of.__getitem__)
        raise ImportFileError(
            line_of[first], f"external_id {first!r} is already in project {project.name!r}", unit=unit
        )


def prompts_import(
    *,
    project: Project,
    rows: list[PromptRow],
    make_tasks: str | None = None,
    unit: str = "line",
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Write validated rows: prompts, their outputs, and tasks over them, in one transaction.

    `make_tasks`: "none"; "single" (a task per output; the default when any row has outputs);
    "pairwise" (a task per prompt over its two outputs; every prompt must have exactly 2);
    "ranking" (a task per prompt over its 2 to 10 outputs). Raises ImportFileError (nothing
    written) for an external id already in the project or outputs that do not fit the tasks.
    `progress` is called with the number of prompts written after each batch.
    """
    if make_tasks is None:
        make_tasks = "single" if any(row.outputs for row in rows) else "none"
    if make_tasks not in TASK_MODES:
        raise ImportFileError(
            None, f"tasks must be one of {', '.join(TASK_MODES)} (got {make_tasks!r})", field="tasks"
        )
    if make_tasks != "none" and not questions_for(project.questions, make_tasks):
        raise ImportFileError(
            None,
            f"the project asks no questions on {make_tasks} tasks: choose the tasks to make "
            f"({', '.join(TASK_MODES)}) to match its questions",
            field="tasks",
        )
    _check_task_shape(rows, make_tasks, unit)
    _check_not_in_project(project, rows, unit)

    counts = ImportResult(prompts=0, outputs=0, tasks=0)
    try:
        with transaction.atomic():
            # Batches of prompts keep every list below at BATCH_SIZE-ish rows, however big the file.
            for start in range(0, len(rows), BATCH_SIZE):
                batch = rows[start : start + BATCH_SIZE]
                _write_batch(project, batch, make_tasks, counts)
                if progress is not None:
                    progress(len(batch))
    except IntegrityError as error:
        # Only a concurrent import of the same external ids gets here: the check above passed.
        raise ImportFileError(
            None,
            "some of these external ids were added to the project meanwhile; nothing was written",
            unit=unit,
        ) from error
    return counts


def _write_batch(project: Project, batch: list[PromptRow], make_tasks: str, counts: ImportResult) -> None:
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                project=project,
                external_id=row.external_id,
                text=row.text,
                context=row.context,
                split=row.split,
                data=row.data,
                gold=row.gold,
            )
            for row in batch
        ],
        batch_size=BATCH_SIZE,
    )
    outputs = output_create_many(
        [
            Output(
                prompt=prompt,
                text=item.text,
                source=item.source,
                model_name=item.model_name,
                adapter=item.adapter,
                generation=item.generation,
            )
            for prompt, row in zip(prompts, batch, strict=True)
            for item in row.outputs
        ]
    )
    counts.prompts += len(prompts)
    counts.outputs += len(outputs)
    if make_tasks == "none":
        return

    # Each task with the outputs it shows, in position order.
    drafts: list[TaskDraft] = []
    taken = iter(outputs)
    for prompt, row in zip(prompts, batch, strict=True):
        own = [next(taken).pk for _ in row.outputs]
        if make_tasks == "single":
            drafts.extend(
                TaskDraft(prompt_id=prompt.pk, output_ids=[pk], kind=Task.Kind.SINGLE) for pk in own
            )
        elif own:
            drafts.append(TaskDraft(prompt_id=prompt.pk, output_ids=own, kind=make_tasks))
    counts.tasks += len(task_create(project=project, drafts=drafts))
