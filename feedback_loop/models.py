"""The loop's nouns: a project's loop settings, rounds (a state machine), refinements, adapters.

A round walks pending → refining → selecting → training → evaluating → generating → done; any
step may end it `failed` (resumable from that step) or a curator may cancel it. Each step is one
Celery task (feedback_loop.tasks) that claims the round with a conditional update.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from annotation.models import Judgment, Project

TINY_MODEL_DIR = "tiny-model"  # under REFINERY_ARTIFACTS_DIR: the locally built model of tests and the demo


def default_model_path() -> str:
    return str(Path(settings.REFINERY_ARTIFACTS_DIR) / TINY_MODEL_DIR)


class LoopConfig(models.Model):
    """A project's loop settings. Lives in the loop app: the human side never imports the loop."""

    class Selector(models.TextChoices):
        INSTRUCT_RM = "instruct_rm", "InstructRM (does the refinement incorporate the feedback?)"
        UNIT_TESTS = "unit_tests", "Unit tests in the sandbox (code)"
        FIRST = "first", "First refinement (ablation)"
        RANDOM = "random", "Random refinement (ablation)"

    class Objective(models.TextChoices):
        ILF = "ilf", "ILF: train on the selected refinements of written feedback"
        CONDITIONAL = "conditional", "Conditional training on rater scores (<|good|> / <|bad|> tokens)"
        FILTERING = "filtering", "Filtering: train on the well-scored outputs only"
        RWR = "rwr", "Reward-weighted regression on rater scores"

    class DataMode(models.TextChoices):
        CUMULATIVE = "cumulative-from-base", "Train from the base model on all data so far"
        CONTINUE = "continue-from-parent", "Continue the parent adapter on the new data only"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="loop_config")
    base_model = models.CharField(
        max_length=500, blank=True, help_text="Hugging Face id or local path; blank: the tiny local model."
    )
    refiner_model = models.CharField(
        max_length=500,
        blank=True,
        help_text="Writes refinements and answers InstructRM; blank: the base model.",
    )
    n_refinements = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(64)], help_text="Samples per feedback."
    )
    selector = models.CharField(max_length=20, choices=Selector.choices, default=Selector.INSTRUCT_RM)
    # Fields of the engine's LoRATrainingConfig; unknown names are refused (see clean()).
    training = models.JSONField(default=dict, blank=True, help_text="LoRA training settings.")
    # Settings of the refiner and of generation (max_new_tokens, temperature ...), over the defaults.
    generation = models.JSONField(default=dict, blank=True, help_text="Generation settings of the loop.")
    data_mode = models.CharField(max_length=24, choices=DataMode.choices, default=DataMode.CUMULATIVE)
    objective = models.CharField(max_length=12, choices=Objective.choices, default=Objective.ILF)
    # The score objectives learn from the raters' Likert scores of the project's outputs: an output
    # is good from `score_threshold` (absolute) or, when that is blank, from the `score_percentile`.
    score_threshold = models.FloatField(
        null=True, blank=True, help_text="Score from which an output is good."
    )
    score_percentile = models.FloatField(
        default=75.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(100.0)],
        help_text="Percentile of the scores from which an output is good (when no threshold is set).",
    )
    rwr_beta = models.FloatField(
        default=1.0, validators=[MinValueValidator(1e-6)], help_text="β of reward-weighted regression."
    )
    require_acceptance = models.BooleanField(
        default=False, help_text="Train only on judgments a curator accepted (else pending ones too)."
    )
    promotion_tolerance = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0)],
        help_text="How much worse (nats) the held-out loss may be than the active model's and still promote.",
    )
    generation_batch = models.PositiveIntegerField(
        default=32, validators=[MinValueValidator(1)], help_text="Prompts the new model writes outputs for."
    )
    pairwise_tasks = models.BooleanField(
        default=True, help_text="Also ask raters to compare the new model's output with the previous one's."
    )
    stage_retries = models.PositiveSmallIntegerField(
        default=2,
        validators=[MaxValueValidator(20)],
        help_text="Retries of a failing step before the round fails.",
    )
    auto_start_threshold = models.PositiveIntegerField(
        default=0, help_text="Start a round after this many new feedback judgments (0: never on its own)."
    )
    # {family: [probe files]} (an empty list: the small example files shipped with the engine), or
    # {family: {"files": [...], option: value}} for a family with options.
    probes = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            'Probe families each adapter is run on, with their files: {"family": ["file.jsonl"]} '
            '(an empty list runs the shipped examples) or {"family": {"files": [...], "option": value}}, '
            'e.g. {"biased_context": {"files": [], "cue_detector": "judge"}}.'
        ),
    )
    probe_tolerance = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(0.0)],
        help_text="How far a probe result may fall below the model it replaces before it is flagged.",
    )
    probes_block_promotion = models.BooleanField(
        default=False, help_text="A flagged probe keeps the new adapter from becoming the active model."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"loop settings of {self.project}"

    def clean(self) -> None:
        # The engine's trainer is the authority on its own settings; feedback_loop.tasks is the one
        # module that talks to the engine.
        from feedback_loop.tasks import (
            generation_config_from,
            probe_files_from,
            refine_config_from,
            training_config_from,
        )

        errors = {}
        for field, check in (
            ("training", training_config_from),
            ("generation", generation_config_from),
            ("generation", refine_config_from),
            ("probes", probe_files_from),
        ):
            try:
                check(getattr(self, field))
            except (TypeError, ValueError) as error:
                errors.setdefault(field, str(error))
        if errors:
            raise ValidationError(errors)

    def snapshot(self) -> dict:
        """The settings a round runs with, frozen when it starts (later edits do not change it)."""
        base = self.base_model or default_model_path()
        return {
            "base_model": base,
            "refiner_model": self.refiner_model or base,
            "n_refinements": self.n_refinements,
            "selector": self.selector,
            "training": dict(self.training),
            "generation": dict(self.generation),
            "data_mode": self.data_mode,
            "objective": self.objective,
            "score_threshold": self.score_threshold,
            "score_percentile": self.score_percentile,
            "rwr_beta": self.rwr_beta,
            "require_acceptance": self.require_acceptance,
            "promotion_tolerance": self.promotion_tolerance,
            "generation_batch": self.generation_batch,
            "pairwise_tasks": self.pairwise_tasks,
            "stage_retries": self.stage_retries,
            "probes": dict(self.probes),
            "probe_tolerance": self.probe_tolerance,
            "probes_block_promotion": self.probes_block_promotion,
            "project_kind": self.project.kind,
        }


class Round(models.Model):
    """One turn of the loop for a project."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        REFINING = "refining", "Refining"
        SELECTING = "selecting", "Selecting"
        TRAINING = "training", "Training"
        EVALUATING = "evaluating", "Evaluating"
        GENERATING = "generating", "Generating"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # The steps in order; each leads to the next.
    STEPS = (
        State.PENDING,
        State.REFINING,
        State.SELECTING,
        State.TRAINING,
        State.EVALUATING,
        State.GENERATING,
        State.DONE,
    )
    TERMINAL = (State.DONE, State.FAILED, State.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    config = models.JSONField(default=dict, help_text="The loop settings, frozen when the round started.")
    # The feedback judgments the round took up, fixed at its first step so a re-run refines the same ones.
    judgment_ids = models.JSONField(default=list, blank=True)
    # The train-split prompts its new model writes outputs for, fixed when generation starts.
    generation_prompt_ids = models.JSONField(default=list, blank=True)
    dataset_sha256 = models.CharField(
        max_length=64, blank=True, help_text="Content hash of the training set."
    )
    feedback_count = models.PositiveIntegerField(default=0)
    refinement_count = models.PositiveIntegerField(default=0)
    selected_count = models.PositiveIntegerField(default=0)
    train_example_count = models.PositiveIntegerField(default=0)
    new_task_count = models.PositiveIntegerField(default=0)
    # {"stage", "done", "total", "step", "total_steps", "loss"}: what the current step is at.
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    failed_state = models.CharField(
        max_length=12, choices=State.choices, blank=True, help_text="The step a retry resumes from."
    )
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Tries of the current step.")
    # Who runs the current step: a token set by the worker's conditional update and its heartbeat.
    # A claim whose heartbeat went stale belongs to a worker that died; the step may be claimed again.
    claim_token = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    promoted = models.BooleanField(null=True, blank=True)
    promotion_reason = models.TextField(blank=True)
    # [{"probe", "value", "baseline", "drop"}]: probe results that fell beyond the tolerance.
    probe_flags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project", "number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="round_number_unique"),
            # One round at a time per project, whatever the concurrency of starts and retries.
            models.UniqueConstraint(
                fields=["project"],
                condition=~Q(state__in=["done", "failed", "cancelled"]),
                name="one_active_round_per_project",
            ),
        ]

    def __str__(self) -> str:
        return f"round {self.number} of {self.project} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL

    def next_state(self) -> str:
        return self.STEPS[self.STEPS.index(self.state) + 1]

    def adapter_dir(self) -> Path:
        return (
            Path(settings.REFINERY_ARTIFACTS_DIR) / "adapters" / str(self.project_id) / f"round-{self.number}"
        )


class Refinement(models.Model):
    """A candidate improved output for one feedback judgment, with its selection scores."""

    class Source(models.TextChoices):
        MODEL = "model", "Refiner model"
        HUMAN = "human", "A rater's fix"

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="refinements")
    judgment = models.ForeignKey(Judgment, on_delete=models.CASCADE, related_name="refinements")
    text = models.TextField()
    source = models.CharField(max_length=6, choices=Source.choices, default=Source.MODEL)
    sample_index = models.PositiveSmallIntegerField(default=0)
    scores = models.JSONField(default=dict, blank=True, help_text="Score per selection method.")
    selected = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["round", "judgment", "source", "sample_index"]
        constraints = [
            # A re-run refinement step writes nothing twice.
            models.UniqueConstraint(
                fields=["round", "judgment", "source", "sample_index"], name="refinement_unique"
            )
        ]
        indexes = [models.Index(fields=["round", "selected"], name="refinement_selected_idx")]

    def __str__(self) -> str:
        return f"refinement {self.pk} of judgment {self.judgment_id} ({self.source})"


class Adapter(models.Model):
    """A trained LoRA adapter, traceable to the exact judgments and refinements it learned from."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="adapters")
    round = models.OneToOneField(Round, on_delete=models.CASCADE, related_name="adapter")
    parent = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children"
    )
    base_model = models.CharField(max_length=500)
    path = models.CharField(max_length=1000)
    checksum = models.CharField(max_length=64, help_text="sha256 over the adapter files.")
    training_metrics = models.JSONField(default=dict, blank=True)
    evaluation = models.JSONField(default=dict, blank=True)
    # What the probes saw, per family (the examples asked and answered): evaluation["probes"] has the numbers.
    probe_details = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=False, help_text="The project's model is the base plus this.")
    training_judgments = models.ManyToManyField(Judgment, related_name="trained_adapters", blank=True)
    # The selected refinements the training examples were made of, in training-set order.
    training_refinement_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project"], condition=Q(is_active=True), name="one_active_adapter_per_project"
            )
        ]

    def __str__(self) -> str:
        return f"adapter of round {self.round_id} ({self.path})"
