"""Everything that reads on the human side, with the access rules in one place."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from annotation.models import Judgment, Lease, Membership, Project, Prompt, Task, Webhook

CURATOR_ROLES = (Membership.Role.CURATOR, Membership.Role.ADMIN)


def projects_for(user: AbstractBaseUser) -> QuerySet[Project]:
    """Projects the user may see: superusers see all; everyone else those they are an active member of.

    Curators are staff (the admin's door) but not superusers: staff status alone opens no project.
    """
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user, memberships__is_active=True).distinct()


def membership_of(user: AbstractBaseUser, project: Project | int) -> Membership | None:
    project_id = project if isinstance(project, int) else project.pk
    return Membership.objects.filter(user=user, project_id=project_id, is_active=True).first()


def can_curate(user: AbstractBaseUser, project: Project | int) -> bool:
    if user.is_superuser:
        return True
    project_id = project if isinstance(project, int) else project.pk
    return Membership.objects.filter(
        user=user, project_id=project_id, is_active=True, role__in=CURATOR_ROLES
    ).exists()


def curated_projects(user: AbstractBaseUser) -> QuerySet[Project]:
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(
        memberships__user=user, memberships__is_active=True, memberships__role__in=CURATOR_ROLES
    ).distinct()


def prompts_visible_to(user: AbstractBaseUser) -> QuerySet[Prompt]:
    """Prompts of the projects the user may see (projects_for)."""
    return Prompt.objects.filter(project__in=projects_for(user))


def judgments_visible_to(user: AbstractBaseUser) -> QuerySet[Judgment]:
    """Curators see their projects' judgments; raters see only their own."""
    if user.is_superuser:
        return Judgment.objects.all()
    return Judgment.objects.filter(
        Q(project__in=curated_projects(user)) | Q(rater=user, project__in=projects_for(user))
    )


def project_progress(project: Project, *, rater: AbstractBaseUser | None = None) -> dict:
    """Done / remaining task counts (gold tasks aside), and the rater's own count if given.

    Tasks and judgments are counted by separate aggregates: counted over a join of tasks with
    their judgments, every task would count once per judgment (overlap > 1 inflates both).
    """
    tasks = Task.objects.filter(project=project, is_gold=False)
    counts = tasks.aggregate(total=Count("id"), done=Count("id", filter=~Q(status=Task.Status.OPEN)))
    judgments = Judgment.objects.filter(project=project, task__is_gold=False).count()
    progress = {
        "tasks": counts["total"],
        "tasks_done": counts["done"],
        "tasks_remaining": counts["total"] - counts["done"],
        "judgments": judgments,
        "judgments_needed": counts["total"] * project.overlap,
    }
    if rater is not None:
        progress["own_judgments"] = Judgment.objects.filter(project=project, rater=rater).count()
        progress["holding_lease"] = Lease.objects.filter(
            task__project=project, rater=rater, state=Lease.State.ACTIVE, expires_at__gt=timezone.now()
        ).exists()
    return progress


def webhooks_of(project: Project) -> QuerySet[Webhook]:
    return Webhook.objects.filter(project=project).select_related("created_by").order_by("id")
