"""Outputs and the rating tasks over them: the one writer of Output, Task and TaskOutput rows.

The API, the importer and the loop all write tasks through `task_create`; the loop writes its
outputs with their tasks through `outputs_enqueue`, which is safe to call again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F

from annotation.errors import EnqueueError
from annotation.models import Output, Project, Prompt, Task, TaskOutput, stats_changed
from annotation.questions import questions_for

# How many outputs a task of each kind shows (ranking: from 2 to 10).
TASK_SIZES = {Task.Kind.SINGLE: (1, 1), Task.Kind.PAIRWISE: (2, 2), Task.Kind.RANKING: (2, 10)}
BATCH_SIZE = 1000


def task_kind_check(project: Project, kind: str) -> None:
    """Raise EnqueueError unless tasks of this kind can be made in the project (it asks them questions)."""
    if kind not in TASK_SIZES:
        raise EnqueueError(f"task kind must be one of {', '.join(TASK_SIZES)} (got {kind!r})")
    if not questions_for(project.questions, kind):
        raise EnqueueError(f"the project asks no questions on {kind} tasks")


def task_size_check(kind: str, count: int) -> None:
    """Raise EnqueueError unless a task of this kind can show `count` outputs."""
    low, high = TASK_SIZES[kind]
    if not low <= count <= high:
        raise EnqueueError(f"a {kind} task shows {low} to {high} outputs (got {count})")


def output_create(*, prompt: Prompt, **fields: Any) -> Output:
    """A new output of the prompt; `fields` are the Output's others, validated by the caller."""
    return Output.objects.create(prompt=prompt, **fields)


def output_create_many(outputs: Sequence[Output]) -> list[Output]:
    """Write unsaved outputs in batches; returns them with their ids."""
    return Output.objects.bulk_create(outputs, batch_size=BATCH_SIZE)


@dataclass(frozen=True)
class TaskDraft:
    """A task to write over outputs of its prompt, in position order."""

    prompt_id: int
    output_ids: Sequence[int]
    kind: str = Task.Kind.SINGLE
    is_gold: bool = False
    gold_answers: Any = None
    priority: int = 0
    round_number: int | None = None

    def task(self, project: Project) -> Task:
        """The unsaved Task: every field of the draft but its outputs is one of the Task's."""
        fields = asdict(self)
        del fields["output_ids"]
        return Task(project=project, **fields)


def task_create(*, project: Project, drafts: Sequence[TaskDraft]) -> list[Task]:
    """Write tasks over existing outputs, with their outputs' positions, in one transaction.

    Every writer of tasks comes here: the API, the importer and the loop (outputs_enqueue).
    Callers check the prompts and outputs belong to the project; this checks each task's kind
    and size (EnqueueError, nothing written).
    """
    for kind in {draft.kind for draft in drafts}:
        task_kind_check(project, kind)
    for draft in drafts:
        task_size_check(draft.kind, len(draft.output_ids))
        if len(set(draft.output_ids)) != len(draft.output_ids):
            raise EnqueueError("the outputs of a task must be distinct")
    with transaction.atomic():
        # New tasks may come before raters' places in the queue (services.leases): bumping the
        # version sends each rater's next request back to the start. Locks the project row,
        # which the queue never locks; and serialises task writers of one project.
        Project.objects.filter(pk=project.pk).update(tasks_version=F("tasks_version") + 1)
        tasks = Task.objects.bulk_create([draft.task(project) for draft in drafts], batch_size=BATCH_SIZE)
        TaskOutput.objects.bulk_create(
            [
                TaskOutput(task=task, output_id=output_id, position=position)
                for task, draft in zip(tasks, drafts, strict=True)
                for position, output_id in enumerate(draft.output_ids)
            ],
            batch_size=BATCH_SIZE,
        )
        stats_changed(project.pk)  # the dashboard's progress counts tasks
    return tasks


@dataclass(frozen=True)
class NewOutput:
    """An output to write, with its provenance. `key` makes writing it idempotent (see outputs_enqueue)."""

    text: str
    key: str
    model_name: str = ""
    adapter: str = ""
    source: str = Output.Source.MODEL
    round_number: int | None = None
    generation: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NewTask:
    """A task over outputs of one prompt; the outputs are written first if they are not there yet."""

    prompt_id: int
    outputs: tuple[NewOutput, ...]
    round_number: int | None = None
    priority: int = 0


@dataclass
class EnqueueResult:
    outputs_created: int = 0
    tasks_created: int = 0
    tasks: list[Task] = field(default_factory=list)  # every task asked for, created or found


def outputs_enqueue(
    *, project: Project, items: Sequence[NewTask], task_kind: str, seed: int = 0
) -> EnqueueResult:
    """Write outputs and the rating tasks over them, in one transaction; safe to call again.

    Every output carries a `key` (stored in its `generation` as `"key"`), unique in the project:
    an output whose key is already there is not written again, and a task over exactly the same
    outputs and of the same kind is not made twice, so a worker that crashed halfway can simply
    run the same call again. Pairwise and ranking tasks get their outputs in an order shuffled by
    a RNG seeded from `seed` and the prompt (the rater's page shuffles them again per lease).
    """
    task_kind_check(project, task_kind)
    prompt_ids = {item.prompt_id for item in items}
    for item in items:
        task_size_check(task_kind, len(item.outputs))
        if len({output.key for output in item.outputs}) != len(item.outputs):
            raise EnqueueError("the outputs of a task need distinct keys")
    result = EnqueueResult()
    with transaction.atomic():
        # Two calls for one project queue up here, so a key is looked up and written by one at a time.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        found = set(Prompt.objects.filter(project=project, pk__in=prompt_ids).values_list("pk", flat=True))
        if found != prompt_ids:
            raise EnqueueError(f"prompt {min(prompt_ids - found)} is not in project {project.name!r}")
        keys = sorted({output.key for item in items for output in item.outputs})
        existing: dict[str, int] = {}
        for start in range(0, len(keys), 500):
            for pk, generation in Output.objects.filter(
                prompt__project=project, generation__key__in=keys[start : start + 500]
            ).values_list("pk", "generation"):
                existing[generation["key"]] = pk
        for item in items:
            output_ids = []
            for new in item.outputs:
                if new.key not in existing:
                    existing[new.key] = Output.objects.create(
                        prompt_id=item.prompt_id,
                        text=new.text,
                        source=new.source,
                        model_name=new.model_name,
                        adapter=new.adapter,
                        round_number=new.round_number,
                        generation={**new.generation, "key": new.key},
                    ).pk
                    result.outputs_created += 1
                output_ids.append(existing[new.key])
            task = _task_over(project, task_kind, output_ids)
            if task is None:
                if task_kind != Task.Kind.SINGLE:
                    random.Random(f"{seed}:{item.prompt_id}").shuffle(output_ids)
                draft = TaskDraft(
                    prompt_id=item.prompt_id,
                    output_ids=output_ids,
                    kind=task_kind,
                    round_number=item.round_number,
                    priority=item.priority,
                )
                (task,) = task_create(project=project, drafts=[draft])
                result.tasks_created += 1
            result.tasks.append(task)
    return result


def _task_over(project: Project, kind: str, output_ids: list[int]) -> Task | None:
    """The task of this kind over exactly these outputs (in any order), if there is one."""
    candidates = Task.objects.filter(project=project, kind=kind, task_outputs__output_id=output_ids[0])
    for task in candidates:
        if sorted(task.task_outputs.values_list("output_id", flat=True)) == sorted(output_ids):
            return task
    return None
