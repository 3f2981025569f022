"""Everything that reads on the human side, with the access rules in one place."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from annotation.errors import NotAllowed, NotFound
from annotation.models import Answer, Judgment, Lease, Membership, Output, Project, Prompt, Task, Webhook
from annotation.questions import fix_limit, questions_for

CURATOR_ROLES = (Membership.Role.CURATOR, Membership.Role.ADMIN)


def project_list_visible(user: AbstractBaseUser) -> QuerySet[Project]:
    """Projects the user may see: superusers see all; everyone else those they are an active member of.

    Curators are staff (the admin's door) but not superusers: staff status alone opens no project.
    """
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user, memberships__is_active=True).distinct()


def membership_get(user: AbstractBaseUser, project: Project | int) -> Membership | None:
    project_id = project if isinstance(project, int) else project.pk
    return Membership.objects.filter(user=user, project_id=project_id, is_active=True).first()


def project_can_curate(user: AbstractBaseUser, project: Project | int) -> bool:
    if user.is_superuser:
        return True
    project_id = project if isinstance(project, int) else project.pk
    return Membership.objects.filter(
        user=user, project_id=project_id, is_active=True, role__in=CURATOR_ROLES
    ).exists()


def project_get_curated(user: AbstractBaseUser, project_id: int, *, to: str = "do this") -> Project:
    """The project, for one of its curators: the one rule of who may curate a project.

    Raises NotFound for a project the user cannot see (as if it did not exist) and NotAllowed,
    "only the project's curators can {to}", for one they see but do not curate.
    """
    project = project_list_visible(user).filter(pk=project_id).first()
    if project is None:
        raise NotFound("No Project matches the given query.")
    if not project_can_curate(user, project):
        raise NotAllowed(f"only the project's curators can {to}")
    return project


def project_list_curated(user: AbstractBaseUser) -> QuerySet[Project]:
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(
        memberships__user=user, memberships__is_active=True, memberships__role__in=CURATOR_ROLES
    ).distinct()


def prompt_list_visible(user: AbstractBaseUser) -> QuerySet[Prompt]:
    """Prompts of the projects the user may see (project_list_visible)."""
    return Prompt.objects.filter(project__in=project_list_visible(user))


# How many external ids one query checks (SQLite caps a statement's parameters).
EXTERNAL_ID_CHUNK = 900


def prompt_external_ids_taken(project: Project | int, external_ids: Sequence[str]) -> set[str]:
    """Which of these external ids the project's prompts already use: the one check of their uniqueness."""
    project_id = project if isinstance(project, int) else project.pk
    taken: set[str] = set()
    for start in range(0, len(external_ids), EXTERNAL_ID_CHUNK):
        taken.update(
            Prompt.objects.filter(
                project_id=project_id, external_id__in=external_ids[start : start + EXTERNAL_ID_CHUNK]
            ).values_list("external_id", flat=True)
        )
    return taken


def output_ids_missing(prompt: Prompt, output_ids: Sequence[int]) -> list[int]:
    """Those of these output ids that are not outputs of the prompt, in the order given."""
    found = set(Output.objects.filter(pk__in=output_ids, prompt=prompt).values_list("pk", flat=True))
    return [pk for pk in output_ids if pk not in found]


# A task's prompt (the first row), then its outputs in order: one statement for both.
_TASK_CONTENT = """
    SELECT 0 AS part, NULL AS output_id, external_id, text, context, 0 AS position
    FROM annotation_prompt WHERE id = %s
    UNION ALL
    SELECT 1, o.id, NULL, o.text, NULL, x.position
    FROM annotation_output o JOIN annotation_taskoutput x ON x.output_id = o.id WHERE x.task_id = %s
    ORDER BY 1, 6"""


def lease_task_content(lease: Lease) -> dict:
    """The task of a lease as its rater sees it: prompt, outputs in the lease's order, questions.

    Plain SQL, as in the queue's services: this runs on every request for a task. A task just
    leased carries its content already (`task.content`, read by services.leases.room_left).
    """
    task = lease.task
    project = task.project
    content = getattr(task, "content", None)
    if content is None:
        with connection.cursor() as cursor:
            cursor.execute(_TASK_CONTENT, [task.prompt_id, task.pk])
            (_, _, external_id, prompt_text, prompt_context, _), *outputs = cursor.fetchall()
        texts = {pk: text for _, pk, _, text, _, _ in outputs}
    else:
        external_id, prompt_text, prompt_context, texts = content
    order = lease.display_order or list(texts)
    questions = questions_for(project.questions, task.kind)
    for question in questions:
        # The page warns before a fix goes over the limit the server will hold it to.
        if question["kind"] == "fix":
            longest = max(map(len, texts.values()), default=0)
            question["max_length"] = fix_limit(longest, cap=project.max_fix_chars)
    return {
        "id": task.pk,
        "kind": task.kind,
        "project": project.pk,
        "prompt": {
            "id": task.prompt_id,
            "external_id": external_id,
            "text": prompt_text,
            "context": prompt_context,
        },
        "outputs": [{"id": pk, "text": texts[pk], "label": chr(ord("A") + i)} for i, pk in enumerate(order)],
        "questions": questions,
    }


def judgment_list_visible(user: AbstractBaseUser) -> QuerySet[Judgment]:
    """Curators see their projects' judgments; raters see only their own."""
    if user.is_superuser:
        return Judgment.objects.all()
    return Judgment.objects.filter(
        Q(project__in=project_list_curated(user)) | Q(rater=user, project__in=project_list_visible(user))
    )


def judgment_list(
    user: AbstractBaseUser,
    *,
    project: int | None = None,
    round_number: int | None = None,
    status: str = "",
    rater: str = "",
    kind: str = "",
) -> QuerySet[Judgment]:
    """The judgments the user may see (judgment_list_visible), filtered, with their answers, by id.

    An empty `status`, `rater` or `kind` filters nothing; `kind` keeps judgments with an answer of it.
    """
    judgments = judgment_list_visible(user).select_related("rater")
    if project is not None:
        judgments = judgments.filter(project_id=project)
    if round_number is not None:
        judgments = judgments.filter(round_number=round_number)
    if status:
        judgments = judgments.filter(status=status)
    if rater:
        judgments = judgments.filter(rater__username=rater)
    if kind:
        judgments = judgments.filter(Exists(Answer.objects.filter(judgment=OuterRef("pk"), kind=kind)))
    return judgments.prefetch_related("answer_rows").order_by("id")


def project_progress(
    project: Project, *, rater: AbstractBaseUser | None = None, judgments: int | None = None
) -> dict:
    """Done / remaining task counts (gold tasks aside), and the rater's own count if given;
    `judgments`: the project's judgments of non-gold tasks, if counted already."""
    counted = None if judgments is None else {project.pk: judgments}
    return projects_progress([project], rater=rater, judgments=counted)[project.pk]


def projects_progress(
    projects: Sequence[Project],
    *,
    rater: AbstractBaseUser | None = None,
    judgments: dict[int, int] | None = None,
) -> dict[int, dict]:
    """{project id: its progress} for many projects, in four queries whatever their number (three
    with `judgments`, their judgments of non-gold tasks counted already).

    Tasks and judgments are counted by separate aggregates: counted over a join of tasks with
    their judgments, every task would count once per judgment (overlap > 1 inflates both).
    """
    ids = [project.pk for project in projects]
    tasks = {
        row["project_id"]: row
        for row in Task.objects.filter(project_id__in=ids, is_gold=False)
        .order_by()
        .values("project_id")
        .annotate(total=Count("id"), done=Count("id", filter=~Q(status=Task.Status.OPEN)))
    }
    if judgments is None:
        judgments = _count_by_project(Judgment.objects.filter(project_id__in=ids, task__is_gold=False))
    progress = {}
    for project in projects:
        counts = tasks.get(project.pk, {"total": 0, "done": 0})
        progress[project.pk] = {
            "tasks": counts["total"],
            "tasks_done": counts["done"],
            "tasks_remaining": counts["total"] - counts["done"],
            "judgments": judgments.get(project.pk, 0),
            "judgments_needed": counts["total"] * project.overlap,
        }
    if rater is not None:
        own = _count_by_project(Judgment.objects.filter(project_id__in=ids, rater=rater))
        holding = set(
            Lease.objects.filter(
                task__project_id__in=ids, rater=rater, state=Lease.State.ACTIVE, expires_at__gt=timezone.now()
            )
            .order_by()
            .values_list("task__project_id", flat=True)
            .distinct()
        )
        for project_id, row in progress.items():
            row["own_judgments"] = own.get(project_id, 0)
            row["holding_lease"] = project_id in holding
    return progress


def _count_by_project(judgments: QuerySet[Judgment]) -> dict[int, int]:
    return dict(
        judgments.order_by().values("project_id").annotate(n=Count("id")).values_list("project_id", "n")
    )


def webhook_list(project: Project) -> QuerySet[Webhook]:
    return Webhook.objects.filter(project=project).select_related("created_by").order_by("id")
