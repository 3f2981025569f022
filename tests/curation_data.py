"""Builders for the curation and agreement tests: judgments written straight into the database."""

from annotation.models import Answer, Judgment, Project, TaskOutput
from annotation.questions import validate_questions_config


def output_ids(task) -> list[int]:
    return list(TaskOutput.objects.filter(task=task).order_by("position").values_list("output_id", flat=True))


def judge(
    task, rater, answers: dict, *, status="pending", display_order=None, time_spent_ms=None
) -> Judgment:
    """A judgment of `task` by `rater` with `answers` ({question name: value}), kinds from the project."""
    kinds = {q["name"]: q["kind"] for q in validate_questions_config(task.project.questions)}
    judgment = Judgment.objects.create(
        project=task.project,
        task=task,
        rater=rater,
        display_order=display_order if display_order is not None else output_ids(task),
        status=status,
        time_spent_ms=time_spent_ms,
    )
    Answer.objects.bulk_create(
        Answer(judgment=judgment, question=name, kind=kinds[name], value=value)
        for name, value in answers.items()
    )
    return judgment


def likert_project(name: str, *, scale=(1, 5), criteria=("clarity",), overlap: int = 4) -> Project:
    return Project.objects.create(
        name=name,
        overlap=overlap,
        questions=[{"name": "score", "kind": "likert", "scale": list(scale), "criteria": list(criteria)}],
    )
