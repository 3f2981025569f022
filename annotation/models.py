"""The human side of Refinery: what is rated, by whom, and what they said."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from annotation.questions import (
    DEFAULT_MAX_FIX_CHARS,
    MAX_TEXT,
    QuestionsConfigError,
    normalised_questions,
    validate_questions_config,
)
from annotation.webhook_urls import validate_webhook_url


class Project(models.Model):
    """What is being improved: a model, the questions raters answer about its outputs, and how."""

    class Kind(models.TextChoices):
        TEXT = "text", "Text"
        CODE = "code", "Code"

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TEXT)
    guidelines = models.TextField(blank=True, help_text="Shown to raters beside every task (Markdown).")
    # The questions raters answer; validated by annotation.questions.validate_questions_config.
    questions = models.JSONField(default=list)
    overlap = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="How many different raters judge each task.",
    )
    lease_seconds = models.PositiveIntegerField(
        default=600,
        validators=[MinValueValidator(10)],
        help_text="How long a rater holds a task before it goes back to the pool.",
    )
    max_pending_per_rater = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="How many tasks one rater may hold at once; at the limit, asking for a task "
        "hands back one they already hold.",
    )
    gold_rate = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of handed-out tasks drawn from gold tasks (known answers).",
    )
    max_fix_chars = models.PositiveIntegerField(
        default=DEFAULT_MAX_FIX_CHARS,
        validators=[MinValueValidator(MAX_TEXT)],
        help_text="The longest fix a rater may submit. Below it, a fix may be twice as long as its output "
        f"(at least {MAX_TEXT:,} characters).",
    )
    base_model = models.CharField(
        max_length=500, blank=True, help_text="Hugging Face model id or local path of the model improved."
    )
    generation = models.JSONField(default=dict, blank=True, help_text="Default generation settings.")
    loop_settings = models.JSONField(default=dict, blank=True, help_text="Refiner, selector and training.")
    created_at = models.DateTimeField(auto_now_add=True)
    archived = models.BooleanField(default=False)
    # Bumped whenever tasks are added (services.tasks.task_create, Task.save): raters' places in
    # the queue (Membership.queue_*) recorded under an older version are worked out afresh.
    tasks_version = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # Validated on save, trusted on read: questions_for reads the stored config with its
        # defaults filled in. A config no form would accept is stored as given (and asks nothing).
        self.questions = normalised_questions(self.questions)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        # Forms (the admin's included) validate the questions as the API does: a bad config
        # saved here would break every rater's next task.
        try:
            self.questions = validate_questions_config(self.questions)
        except QuestionsConfigError as error:
            raise ValidationError({"questions": str(error)}) from error

    @property
    def lease_time(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)


class Membership(models.Model):
    class Role(models.TextChoices):
        RATER = "rater", "Rater"
        CURATOR = "curator", "Curator"
        ADMIN = "admin", "Admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.RATER)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The rater's place in the queue (services.leases): every open, non-gold task of the project
    # ordered before (queue_priority, queue_task_id) is one they have submitted or skipped, as
    # of the project's tasks_version `queue_version`. Tasks never go back to open and a
    # submitted or skipped lease stays so, so only new tasks can break it: they bump the version.
    queue_version = models.PositiveIntegerField(null=True, blank=True, editable=False)
    queue_priority = models.IntegerField(null=True, blank=True, editable=False)
    queue_task_id = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "project"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} · {self.project} · {self.role}"

    @property
    def can_curate(self) -> bool:
        return self.is_active and self.role in (self.Role.CURATOR, self.Role.ADMIN)


class Prompt(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        EVAL = "eval", "Eval"
        TEST = "test", "Test"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    external_id = models.CharField(max_length=200)
    text = models.TextField()
    context = models.TextField(blank=True, help_text="Shown above the prompt (a document, a conversation).")
    # Structured extras: a code task's unit tests, entry point, reference solution ...
    data = models.JSONField(default=dict, blank=True)
    split = models.CharField(max_length=5, choices=Split.choices, default=Split.TRAIN)
    gold = models.JSONField(null=True, blank=True, help_text="Known good answer(s), where there are any.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "external_id"], name="prompt_external_id_unique")
        ]

    def __str__(self) -> str:
        return f"{self.project_id}:{self.external_id}"


class Output(models.Model):
    """A text for a prompt, from a model, a person, or the loop's refiner, with its provenance."""

    class Source(models.TextChoices):
        MODEL = "model", "Model"
        HUMAN = "human", "Human"
        REFINEMENT = "refinement", "Refinement"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="outputs")
    text = models.TextField()
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.MODEL)
    model_name = models.CharField(max_length=500, blank=True)
    adapter = models.CharField(max_length=500, blank=True, help_text="Adapter name or path, if any.")
    round_number = models.PositiveIntegerField(null=True, blank=True)
    generation = models.JSONField(default=dict, blank=True, help_text="Settings it was generated with.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["round_number"])]

    def __str__(self) -> str:
        return f"output {self.pk} of prompt {self.prompt_id}"


class Task(models.Model):
    """What a rater is shown: one output (rate, feedback, fix) or several (compare, rank)."""

    class Kind(models.TextChoices):
        SINGLE = "single", "Single output"
        PAIRWISE = "pairwise", "Pairwise comparison"
        RANKING = "ranking", "Ranking"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"
        CLOSED = "closed", "Closed by a curator"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SINGLE)
    outputs = models.ManyToManyField(Output, through="TaskOutput", related_name="tasks")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    # Submitted judgments; only changed while the task row is locked (see services).
    judgment_count = models.PositiveIntegerField(default=0)
    is_gold = models.BooleanField(default=False)
    gold_answers = models.JSONField(null=True, blank=True, help_text="Expected answers, by question name.")
    priority = models.IntegerField(default=0, help_text="Lower is handed out first.")
    round_number = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "status", "is_gold", "priority", "id"], name="task_queue_idx"),
            # The queue's scan (services.leases): open, non-gold tasks only, in queue order.
            models.Index(
                fields=["project", "priority", "id"],
                name="task_open_idx",
                condition=models.Q(status="open", is_gold=False),
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.pk} ({self.kind})"

    def save(self, *args, **kwargs) -> None:
        adding = self._state.adding
        super().save(*args, **kwargs)
        if adding:  # a new task may come before raters' places in the queue
            Project.objects.filter(pk=self.project_id).update(tasks_version=models.F("tasks_version") + 1)


class TaskOutput(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="task_outputs")
    output = models.ForeignKey(Output, on_delete=models.CASCADE, related_name="task_outputs")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["task", "position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "position"], name="task_output_position_unique"),
            models.UniqueConstraint(fields=["task", "output"], name="task_output_unique"),
        ]

    def __str__(self) -> str:
        return f"output {self.output_id} at {self.position} in task {self.task_id}"


class Lease(models.Model):
    """A task handed to one rater until `expires_at`. One per (task, rater), ever."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="leases")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases")
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    # Output ids in the order this rater sees them (sides randomised per lease, and recorded).
    display_order = models.JSONField(default=list)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["task", "rater"], name="one_lease_per_task_rater")]
        indexes = [
            models.Index(fields=["task", "state", "expires_at"], name="lease_live_idx"),
            models.Index(fields=["rater", "state", "expires_at"], name="lease_rater_idx"),
        ]

    def __str__(self) -> str:
        return f"lease {self.pk} of task {self.task_id} to {self.rater_id}"

    def is_live(self, now=None) -> bool:
        return self.state == self.State.ACTIVE and self.expires_at > (now or timezone.now())


class Judgment(models.Model):
    """One rater's answers to one task. Curators accept, reject, or exclude it from training."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending review"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"
        EXCLUDED = "excluded", "Excluded from training"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judgments")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="judgments")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgments")
    lease = models.OneToOneField(
        Lease, on_delete=models.SET_NULL, null=True, blank=True, related_name="judgment"
    )
    display_order = models.JSONField(default=list, help_text="Output ids in the order the rater saw them.")
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    late = models.BooleanField(default=False, help_text="Submitted after the lease had expired.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    round_number = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # The last line of defence for "no rater judges a task twice", whatever the code above does.
            models.UniqueConstraint(fields=["task", "rater"], name="one_judgment_per_task_rater")
        ]
        indexes = [models.Index(fields=["project", "status", "id"], name="judgment_project_idx")]

    def __str__(self) -> str:
        # Curators know raters by name: the admin titles its pages with this.
        return f"judgment {self.pk} on task {self.task_id} by {self.rater.get_username()}"


# The judgments that train models and count in the dashboard's figures: rejected and excluded ones do not.
TRAINING_STATUSES = (Judgment.Status.PENDING, Judgment.Status.ACCEPTED)


class Answer(models.Model):
    """One question's answer inside a judgment, typed by kind so exports and the loop can query it."""

    class Kind(models.TextChoices):
        LIKERT = "likert", "Likert scores"
        PAIRWISE = "pairwise", "Pairwise preference"
        RANKING = "ranking", "Ranking"
        FEEDBACK = "feedback", "Written feedback"
        FIX = "fix", "Fix (improved output)"
        RUBRIC = "rubric", "Rubric flags"

    judgment = models.ForeignKey(Judgment, on_delete=models.CASCADE, related_name="answer_rows")
    question = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    value = models.JSONField()

    class Meta:
        ordering = ["judgment", "id"]
        constraints = [
            models.UniqueConstraint(fields=["judgment", "question"], name="one_answer_per_question")
        ]
        indexes = [models.Index(fields=["kind", "judgment"], name="answer_kind_idx")]

    def __str__(self) -> str:
        return f"{self.question} ({self.kind}) of judgment {self.judgment_id}"


class AuditEvent(models.Model):
    """One curation action: who did what to which row, when, why, and the status before and after."""

    class Action(models.TextChoices):
        ACCEPT = "accept", "Accepted a judgment"
        REJECT = "reject", "Rejected a judgment"
        EXCLUDE = "exclude", "Excluded a judgment from training"
        REOPEN = "reopen", "Put a judgment back to pending review"
        MEMBER_ADD = "member_add", "Added a member"
        MEMBER_CHANGE = "member_change", "Changed or reactivated a member"
        MEMBER_DEACTIVATE = "member_deactivate", "Deactivated a member"

    # PROTECT: an audit trail that loses its "who" is no audit trail; deactivate users instead.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="audit_events")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="audit_events")
    action = models.CharField(max_length=20, choices=Action.choices)
    object_type = models.CharField(max_length=20, help_text="judgment or membership")
    object_id = models.PositiveBigIntegerField()
    reason = models.TextField(blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "created_at"], name="audit_project_idx"),
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_id} {self.action} {self.object_type} {self.object_id}"


def _webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class Webhook(models.Model):
    """A URL that receives a project's events as signed JSON (see annotation.webhooks)."""

    class Event(models.TextChoices):
        JUDGMENT_SUBMITTED = "judgment.submitted", "A rater submitted a judgment"
        ROUND_STATE_CHANGED = "round.state_changed", "A round of the loop changed state"
        ADAPTER_PROMOTED = "adapter.promoted", "An adapter became the project's active model"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=2000, validators=[validate_webhook_url])
    # Kept in clear because every delivery is signed with it; shown to the curator only once,
    # when the webhook is created, and never by the API or the admin afterwards.
    secret = models.CharField(max_length=100, default=_webhook_secret, editable=False)
    events = models.JSONField(default=list, help_text="The events sent to this URL.")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        # Every submission asks whether its project has active webhooks (annotation.webhooks).
        indexes = [models.Index(fields=["project", "active"], name="webhook_project_idx")]

    def __str__(self) -> str:
        return f"{self.url} ({self.project})"

    def clean(self) -> None:
        known = set(self.Event.values)
        if (
            not isinstance(self.events, list)
            or not self.events
            or any(event not in known for event in self.events)
        ):
            raise ValidationError({"events": f"a non-empty list of: {', '.join(self.Event.values)}"})
        self.events = sorted(set(self.events))


class WebhookDelivery(models.Model):
    """One event on its way to one webhook: its payload, and how sending it has gone so far."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40, choices=Webhook.Event.choices)
    # Sent as X-Refinery-Delivery and in the body: the same on every attempt and redelivery, so
    # a receiver can drop an event it has already handled.
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    # While pending: when the next attempt may start (an attempt in flight pushes it past its
    # timeout, so that a second worker holding the same message waits instead of sending twice).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["webhook", "event_id"], name="one_delivery_per_webhook_event")
        ]
        indexes = [models.Index(fields=["webhook", "status"], name="delivery_webhook_idx")]

    def __str__(self) -> str:
        return f"{self.event} {self.event_id} to webhook {self.webhook_id}"


class StatsVersion(models.Model):
    """What the dashboard's and raters page's cached figures are checked against (annotation.quality):
    two versions per project, read together by `stats_version`.

    - *judged*, the number of the project's judgments, is not stored: it is counted when a page is
      viewed (on a big project, only those added since the last full count:
      annotation.quality._page_versions), so a rater's submission writes nothing here. Figures younger
      than STATS_MAX_AGE_SECONDS are still shown after it moved on, saying how many judgments came
      since (raters submit every second).
    - `curated` counts every other change (a curator's review or exclusion, a gold answer, new
      tasks, the questions, a judgment saved or deleted outside the queue): the next page view
      recomputes, whatever the figures' age, so a curator sees their own action at once.

    `curated` is written only by `stats_changed`, after its transaction commits, in a statement
    of its own (an increment, never a save of a stale copy): a version is never seen before the
    change that moved it on. A page reads the versions before it computes, so figures cached
    under a version count at least what it counts. The row keeps the project id without a
    foreign key: bumping it while a project's judgments are deleted in cascade must not stop the
    project from being deleted.
    """

    project_id = models.BigIntegerField(primary_key=True)
    curated = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"statistics of project {self.project_id}: {self.curated} curated"


_BUMP = """
    INSERT INTO annotation_statsversion (project_id, curated) VALUES (%s, 1)
    ON CONFLICT (project_id) DO UPDATE SET curated = annotation_statsversion.curated + 1"""


def _bump(project_id: int) -> None:
    """One autocommit statement (PostgreSQL and SQLite both upsert): the row is locked only
    while it runs."""
    with connection.cursor() as cursor:
        cursor.execute(_BUMP, [project_id])


def stats_changed(project_id: int) -> None:
    """A change other than a rater's submission: the next page view recomputes the figures.

    Once the change is committed: a view that reads the new version reads figures that count it.
    A view that read the old version may store figures counting it under the old one, which is
    harmless. robust: the change is committed whatever happens to the counter (a lost increment
    is made good by the project's next one).
    """
    transaction.on_commit(lambda: _bump(project_id), robust=True)


# The highest judgment id of all projects: one step down the primary key, where the project's own
# would make PostgreSQL read the whole table. One statement, one snapshot: every judgment of the
# project committed with an id up to it is in the count.
_VERSIONS = """
    SELECT (SELECT COUNT(*) FROM annotation_judgment WHERE project_id = %s),
        (SELECT MAX(id) FROM annotation_judgment),
        (SELECT curated FROM annotation_statsversion WHERE project_id = %s)"""


def stats_version_counted(project_id: int) -> tuple[int, int, int]:
    """The project's judged version, the highest judgment id when it was counted (0: none) and its
    curated version, in one statement (`stats_judged_since` counts on from that id)."""
    with connection.cursor() as cursor:
        cursor.execute(_VERSIONS, [project_id, project_id])
        judged, last, curated = cursor.fetchone()
    return judged, last or 0, curated or 0


def stats_version(project_id: int) -> tuple[int, int]:
    """The project's (judged, curated) statistics versions, in one statement."""
    judged, _, curated = stats_version_counted(project_id)
    return judged, curated


_SINCE = """
    SELECT (SELECT COUNT(*) FROM annotation_judgment WHERE project_id = %s AND id > %s),
        (SELECT curated FROM annotation_statsversion WHERE project_id = %s)"""


def stats_judged_since(project_id: int, last: int) -> tuple[int, int]:
    """The project's judgments with an id above `last` (those added since a count that ended there:
    a range of the primary key, not the project's million) and its curated version, in one
    statement."""
    with connection.cursor() as cursor:
        cursor.execute(_SINCE, [project_id, last, project_id])
        added, curated = cursor.fetchone()
    return added, curated or 0


# Rows saved or deleted one at a time (the admin, the API, a submission's new judgment) move the
# statistics on here; bulk updates (a curator's review) call stats_changed themselves. Answers
# change only with their judgment.
@receiver(post_save, sender=Judgment, dispatch_uid="stats_judgment_saved")
@receiver(post_save, sender=Task, dispatch_uid="stats_task_saved")
def _judgment_or_task_saved(sender, instance, **kwargs) -> None:
    stats_changed(instance.project_id)


@receiver(post_delete, sender=Judgment, dispatch_uid="stats_judgment_deleted")
@receiver(post_delete, sender=Task, dispatch_uid="stats_task_deleted")
def _judgment_or_task_deleted(sender, instance, origin=None, **kwargs) -> None:
    # A delete sends this once per row, cascades included: one update per project and delete call.
    done = origin.__dict__.setdefault("_stats_changed", set()) if origin is not None else set()
    if instance.project_id not in done:
        done.add(instance.project_id)
        stats_changed(instance.project_id)


@receiver(post_save, sender=Project, dispatch_uid="stats_project_saved")
def _project_saved(sender, instance, **kwargs) -> None:
    stats_changed(instance.pk)  # its questions say what is measured
