"""Everything the loop reads: the feedback a round refines, the examples it trains on, the
held-out examples it is evaluated on, the prompts it generates for.

Training data obeys the curators: only judgments whose status may train (pending or accepted;
accepted only, when the project requires acceptance) ever become training rows, and a judgment a
curator rejects or excludes after a round drops out of every later round's training set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet

from annotation.exporting import training_prompt, with_answers_and_outputs
from annotation.models import TRAINING_STATUSES, Answer, Judgment, Output, Project, Prompt, Task
from feedback_loop.models import Adapter, LoopConfig, Refinement, Round


@dataclass(frozen=True)
class FeedbackRow:
    """One feedback judgment as the refiner sees it."""

    judgment_id: int
    prompt_id: int
    prompt: str  # the model's input: the prompt's context (the post summarised) and its text
    output: str  # the output the feedback is about
    feedback: str  # what the rater wrote about it ("" when they only wrote a fix)
    fix: str  # the rater's own improved output, "" when none
    kind: str  # "text" or "code"
    tests: str = ""  # code prompts: the unit tests a refinement must pass
    entry_point: str | None = None


@dataclass(frozen=True)
class TrainingRow:
    refinement_id: int
    judgment_id: int
    prompt: str
    completion: str


@dataclass(frozen=True)
class HeldOutRow:
    prompt_id: int
    prompt: str
    completion: str  # a gold answer, or an accepted fix


def training_prompt_of(prompt: Prompt) -> str:
    """What the model is given for a prompt: its context (a post to summarise), then its text."""
    return training_prompt(prompt.text, prompt.context)


def loop_config_of(project: Project) -> LoopConfig:
    """The project's loop settings; the defaults are written the first time they are asked for."""
    config, _ = LoopConfig.objects.get_or_create(project=project)
    return config


def active_round(project: Project) -> Round | None:
    return Round.objects.filter(project=project).exclude(state__in=Round.TERMINAL).first()


def active_adapter(project: Project) -> Adapter | None:
    return Adapter.objects.filter(project=project, is_active=True).first()


def trainable_statuses(*, require_acceptance: bool) -> tuple[str, ...]:
    if require_acceptance:
        return (Judgment.Status.ACCEPTED,)
    return TRAINING_STATUSES


def _text_answers(judgment_ids, kind: str) -> dict[int, str]:
    """The first non-blank text answer of `kind` per judgment."""
    found: dict[int, str] = {}
    for judgment_id, value in (
        Answer.objects.filter(judgment_id__in=judgment_ids, kind=kind)
        .order_by("judgment_id", "id")
        .values_list("judgment_id", "value")
    ):
        if isinstance(value, str) and value.strip() and judgment_id not in found:
            found[judgment_id] = value
    return found


def _trainable_single_output_judgments(project: Project, *, require_acceptance: bool) -> QuerySet[Judgment]:
    """Judgments of the project that may train, on a single-output task that is not gold."""
    return Judgment.objects.filter(
        project=project,
        status__in=trainable_statuses(require_acceptance=require_acceptance),
        task__kind=Task.Kind.SINGLE,
        task__is_gold=False,
    )


def feedback_judgments(project: Project, *, require_acceptance: bool, exclude_round: Round | None = None):
    """Judgments of the project that may train, carry written feedback or a fix, on a single-output
    task, and were not taken up by another round (a cancelled round gives its judgments back)."""
    taken = Refinement.objects.filter(judgment=OuterRef("pk")).exclude(round__state=Round.State.CANCELLED)
    if exclude_round is not None:
        taken = taken.exclude(round=exclude_round)
    has_text = Answer.objects.filter(
        judgment=OuterRef("pk"), kind__in=[Answer.Kind.FEEDBACK, Answer.Kind.FIX]
    ).exclude(value="")
    return (
        _trainable_single_output_judgments(project, require_acceptance=require_acceptance)
        .filter(Exists(has_text))
        .exclude(Exists(taken))
        .order_by("id")
    )


def new_feedback_count(project: Project) -> int:
    """Feedback judgments no round has taken up yet: what the auto-start threshold is compared with."""
    require = loop_config_of(project).require_acceptance
    return feedback_judgments(project, require_acceptance=require).count()


def new_accepted_feedback_count(project: Project) -> int:
    """Accepted feedback judgments no round has taken up yet: what the auto-start threshold counts
    (a curator's acceptance, not a rater's submission, is what may set a round going)."""
    return feedback_judgments(project, require_acceptance=True).count()


def auto_start_candidates() -> QuerySet[LoopConfig]:
    """Loop settings of projects with an auto-start threshold and no round running."""
    running = Round.objects.filter(project=OuterRef("project")).exclude(state__in=Round.TERMINAL)
    return (
        LoopConfig.objects.filter(auto_start_threshold__gt=0)
        .exclude(Exists(running))
        .select_related("project")
        .order_by("project_id")
    )


def stalled_rounds(*, now: datetime, stall_seconds: float, claim_stale_seconds: float) -> QuerySet[Round]:
    """Unfinished rounds untouched for `stall_seconds` whose step nobody holds: unclaimed, or
    claimed by a worker whose heartbeat is stale."""
    return (
        Round.objects.exclude(state__in=Round.TERMINAL)
        .filter(updated_at__lt=now - timedelta(seconds=stall_seconds))
        .filter(Q(claim_token="") | Q(heartbeat_at__lt=now - timedelta(seconds=claim_stale_seconds)))
        .order_by("pk")
    )


def feedback_rows(judgment_ids: list[int]) -> list[FeedbackRow]:
    """The refiner's input for these judgments, in the order given."""
    judgments = {
        judgment.pk: judgment
        for judgment in Judgment.objects.filter(pk__in=judgment_ids).select_related("task__prompt__project")
    }
    outputs = {
        task_id: text
        for task_id, text in Task.objects.filter(judgments__pk__in=judgment_ids)
        .order_by("task_outputs__position")
        .values_list("pk", "task_outputs__output__text")
    }
    feedback = _text_answers(judgment_ids, Answer.Kind.FEEDBACK)
    fixes = _text_answers(judgment_ids, Answer.Kind.FIX)
    rows = []
    for judgment_id in judgment_ids:
        judgment = judgments.get(judgment_id)
        if judgment is None:  # deleted since the round took it up
            continue
        prompt = judgment.task.prompt
        kind = prompt.project.kind
        data = prompt.data if isinstance(prompt.data, dict) else {}
        rows.append(
            FeedbackRow(
                judgment_id=judgment_id,
                prompt_id=prompt.pk,
                prompt=training_prompt(prompt.text, prompt.context),
                output=outputs.get(judgment.task_id, ""),
                feedback=feedback.get(judgment_id, ""),
                fix=fixes.get(judgment_id, ""),
                kind=kind,
                tests=str(data.get("tests") or "") if kind == Project.Kind.CODE else "",
                entry_point=data.get("entry_point") if kind == Project.Kind.CODE else None,
            )
        )
    return rows


def training_rows(round: Round) -> list[TrainingRow]:
    """What the round's adapter trains on: prompt → selected refinement.

    "continue-from-parent": this round's selections only (the parent adapter holds the rest);
    "cumulative-from-base": the selections of this round and of every earlier finished round, as the
    paper found retraining from the base on all data beat continued fine-tuning. Either way only
    judgments still allowed to train count.
    """
    config = round.config
    rounds = Q(round=round)
    if config.get("data_mode") == LoopConfig.DataMode.CUMULATIVE:
        rounds |= Q(
            round__project_id=round.project_id, round__number__lt=round.number, round__state=Round.State.DONE
        )
    refinements = (
        Refinement.objects.filter(rounds, selected=True)
        .filter(
            judgment__status__in=trainable_statuses(
                require_acceptance=config.get("require_acceptance", False)
            )
        )
        .select_related("judgment__task__prompt")
        .order_by("round__number", "judgment_id", "id")
    )
    rows = []
    for refinement in refinements:
        prompt = refinement.judgment.task.prompt
        rows.append(
            TrainingRow(
                refinement_id=refinement.pk,
                judgment_id=refinement.judgment_id,
                prompt=training_prompt(prompt.text, prompt.context),
                completion=refinement.text,
            )
        )
    return rows


def _gold_text(gold) -> str:
    if isinstance(gold, str):
        return gold
    if isinstance(gold, list) and gold and isinstance(gold[0], str):
        return gold[0]
    if isinstance(gold, dict):
        for key in ("text", "answer", "completion"):
            if isinstance(gold.get(key), str):
                return gold[key]
    return ""


def held_out_rows(project: Project) -> list[HeldOutRow]:
    """Eval-split prompts with a known good answer: their gold, else an accepted fix of an output."""
    prompts = Prompt.objects.filter(project=project, split=Prompt.Split.EVAL).order_by("id")
    fixes = _text_answers(
        Judgment.objects.filter(
            project=project, status=Judgment.Status.ACCEPTED, task__prompt__split=Prompt.Split.EVAL
        ).values("pk"),
        Answer.Kind.FIX,
    )
    fix_of_prompt: dict[int, str] = {}
    for judgment_id, prompt_id in Judgment.objects.filter(pk__in=list(fixes)).values_list(
        "pk", "task__prompt_id"
    ):
        fix_of_prompt.setdefault(prompt_id, fixes[judgment_id])
    rows = []
    for prompt in prompts:
        answer = _gold_text(prompt.gold) or fix_of_prompt.get(prompt.pk, "")
        if answer.strip():
            rows.append(
                HeldOutRow(
                    prompt_id=prompt.pk,
                    prompt=training_prompt(prompt.text, prompt.context),
                    completion=answer,
                )
            )
    return rows


@dataclass(frozen=True)
class CodeTaskRow:
    prompt_id: int
    prompt: str  # the model continues it (a signature and docstring): the program is both together
    tests: str
    entry_point: str | None


def code_eval_rows(project: Project) -> list[CodeTaskRow]:
    """A code project's eval-split prompts that carry unit tests (for pass@k)."""
    if project.kind != Project.Kind.CODE:
        return []
    rows = []
    for prompt in Prompt.objects.filter(project=project, split=Prompt.Split.EVAL).order_by("id"):
        data = prompt.data if isinstance(prompt.data, dict) else {}
        if str(data.get("tests") or "").strip():
            rows.append(
                CodeTaskRow(
                    prompt_id=prompt.pk,
                    prompt=training_prompt_of(prompt),
                    tests=str(data["tests"]),
                    entry_point=data.get("entry_point"),
                )
            )
    return rows


@dataclass(frozen=True)
class MentionRow:
    prompt_id: int
    prompt: str
    must_include: tuple[str, ...]  # what a good output mentions (case-insensitive)


def mention_eval_rows(project: Project) -> list[MentionRow]:
    """Eval-split prompts whose `data` lists what a good output must mention (`must_include`): the
    loop's mechanical task metric, measured on prompts no adapter trains on."""
    rows = []
    for prompt in Prompt.objects.filter(project=project, split=Prompt.Split.EVAL).order_by("id"):
        data = prompt.data if isinstance(prompt.data, dict) else {}
        wanted = data.get("must_include")
        if isinstance(wanted, list) and wanted and all(isinstance(w, str) and w.strip() for w in wanted):
            rows.append(
                MentionRow(prompt_id=prompt.pk, prompt=training_prompt_of(prompt), must_include=tuple(wanted))
            )
    return rows


def prompts_without_outputs(project: Project, *, limit: int) -> QuerySet[Prompt]:
    """Train-split prompts nothing was written for yet: where a project's first outputs go."""
    return (
        Prompt.objects.filter(project=project, split=Prompt.Split.TRAIN)
        .filter(~Exists(Output.objects.filter(prompt=OuterRef("pk"))))
        .order_by("id")[:limit]
    )


def prompts_to_generate(round: Round, *, limit: int) -> QuerySet[Prompt]:
    """The next train-split prompts for the new model: those with the fewest outputs so far first
    (the loop walks through the whole split over the rounds)."""
    return (
        Prompt.objects.filter(project_id=round.project_id, split=Prompt.Split.TRAIN)
        .annotate(n_outputs=Count("outputs"))
        .order_by("n_outputs", "id")[:limit]
    )


# ---------------------------------------------------------------- win rate between adapters

# Who may count in a win rate: a curator's rejection or exclusion takes a judgment out, as in training.
COMPARISON_STATUSES = TRAINING_STATUSES


def _comparison_judgments(project_id: int, round_number: int) -> QuerySet[Judgment]:
    """The judgments of the round's comparison tasks (its new model's output against the previous
    model's, made by the generating step) that answer a pairwise question."""
    return Judgment.objects.filter(
        project_id=project_id,
        status__in=COMPARISON_STATUSES,
        task__kind=Task.Kind.PAIRWISE,
        task__round_number=round_number,
        task__in=Task.objects.filter(
            task_outputs__output__round_number=round_number, task_outputs__output__generation__role="new"
        ),
        answer_rows__kind=Answer.Kind.PAIRWISE,
    ).distinct()


def comparison_outcomes(round: Round) -> list[tuple[int, float]]:
    """(task id, outcome for the round's new model) for each rater's comparison of the new model's
    output with the previous model's: 1 when the rater preferred the new one, 0.5 for a tie, 0 when
    they preferred the previous one. Oldest judgment first.

    The sides are shuffled when a task is made and again per lease, so position says nothing about
    which model wrote an output: the new model's output is known by its provenance (generation
    role "new"), and a pairwise answer names the output it prefers by id. A judgment counts only if
    its recorded display order shows the new output beside exactly one other; a judgment without a
    recorded order saw the task's own outputs. The first pairwise answer of a judgment is its outcome.
    """
    judgments = with_answers_and_outputs(
        _comparison_judgments(round.project_id, round.number).order_by("id"),
        answer_kinds=[Answer.Kind.PAIRWISE],
    )
    outcomes = []
    for judgment in judgments:
        outputs = {row.output_id: row.output for row in judgment.task.shown}
        seen = [pk for pk in judgment.display_order or list(outputs) if pk in outputs]
        new = [
            pk
            for pk in seen
            if outputs[pk].round_number == round.number
            and (outputs[pk].generation or {}).get("role") == "new"
        ]
        if len(seen) != 2 or len(set(seen)) != 2 or len(new) != 1 or not judgment.answer_list:
            continue
        value = judgment.answer_list[0].value
        preferred = value.get("preferred") if isinstance(value, dict) else None
        if preferred is None:
            outcomes.append((judgment.task_id, 0.5))
        elif preferred in seen:
            outcomes.append((judgment.task_id, 1.0 if preferred == new[0] else 0.0))
    return outcomes


def comparison_judgment_count(round: Round) -> int:
    """How many comparison judgments the round has now (what its stored win rate was computed on)."""
    return _comparison_judgments(round.project_id, round.number).count()


def rounds_with_new_comparisons() -> list[Round]:
    """Rounds with an adapter whose win rate does not cover the comparison judgments they have now
    (new ones arrived, or a curator took some out)."""
    counts = {
        (row["project_id"], row["task__round_number"]): row["n"]
        for row in Judgment.objects.filter(pk__in=_comparison_judgments_all())
        .values("project_id", "task__round_number")
        .annotate(n=Count("pk"))
    }
    if not counts:
        return []
    numbers = Q()
    for project_id, number in counts:
        numbers |= Q(project_id=project_id, number=number)
    rounds = Round.objects.filter(numbers, adapter__isnull=False).select_related("adapter", "project")
    return [
        round
        for round in rounds
        if (round.adapter.evaluation or {}).get("win_rate_judgments")
        != counts[(round.project_id, round.number)]
    ]


def _comparison_judgments_all() -> QuerySet[Judgment]:
    """Every round's comparison judgments (see _comparison_judgments), as ids."""
    return (
        Judgment.objects.filter(
            status__in=COMPARISON_STATUSES,
            task__kind=Task.Kind.PAIRWISE,
            task__round_number__isnull=False,
            task__in=Task.objects.filter(
                task_outputs__output__round_number=F("round_number"),
                task_outputs__output__generation__role="new",
            ),
            answer_rows__kind=Answer.Kind.PAIRWISE,
        )
        .values("pk")
        .distinct()
    )


# ---------------------------------------------------------------- score objectives


@dataclass(frozen=True)
class ScoredRow:
    judgment_id: int
    prompt: str
    completion: str  # the output the rater scored
    score: float  # the mean of the judgment's Likert scores


def scored_judgments(project: Project, *, require_acceptance: bool) -> QuerySet[Judgment]:
    """Judgments of the project that may train and score a single model output on a Likert scale."""
    return (
        _trainable_single_output_judgments(project, require_acceptance=require_acceptance)
        .filter(Exists(Answer.objects.filter(judgment=OuterRef("pk"), kind=Answer.Kind.LIKERT)))
        .order_by("id")
    )


def scored_rows(round: Round) -> list[ScoredRow]:
    """The score objectives' training rows: prompt → the scored output, with the rater's score (the
    mean over the Likert criteria and questions of the judgment). Judgments a curator rejected or
    excluded since the round took them up drop out, as in ILF training."""
    judgments = with_answers_and_outputs(
        scored_judgments(round.project, require_acceptance=round.config.get("require_acceptance", False))
        .filter(pk__in=round.judgment_ids)
        .select_related("task__prompt"),
        answer_kinds=[Answer.Kind.LIKERT],
    )
    rows = []
    for judgment in judgments:
        values = [
            v
            for answer in judgment.answer_list
            for v in (answer.value.values() if isinstance(answer.value, dict) else [answer.value])
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if not values or not judgment.task.shown:
            continue
        rows.append(
            ScoredRow(
                judgment_id=judgment.pk,
                prompt=training_prompt_of(judgment.task.prompt),
                completion=judgment.task.shown[0].output.text,
                score=sum(values) / len(values),
            )
        )
    return rows
