"""Builders for the curation and agreement tests: judgments written straight into the database."""

from annotation.models import Judgment, Project
from annotation.questions import validate_questions_config
from tests.factories import make_tasks, output_ids, write_judgment

__all__ = ["judge", "likert_project", "output_ids"]


def judge(task, rater, answers: dict, **fields) -> Judgment:
    """A judgment of `task` by `rater` with `answers` ({question name: value}), kinds from the project."""
    kinds = {q["name"]: q["kind"] for q in validate_questions_config(task.project.questions)}
    return write_judgment(
        task, rater, {name: (kinds[name], value) for name, value in answers.items()}, **fields
    )


def likert_project(name: str, *, scale=(1, 5), criteria=("clarity",), overlap: int = 4) -> Project:
    return Project.objects.create(
        name=name,
        overlap=overlap,
        questions=[{"name": "score", "kind": "likert", "scale": list(scale), "criteria": list(criteria)}],
    )


def krippendorff_judgments(coders, matrix) -> tuple[Project, list]:
    """Krippendorff (2011)'s example as judgments: coder i scored task j (scale 1–5) where the
    `matrix` (coders × 12 units, NaN where a coder gave none) has a value."""
    project = likert_project("Krippendorff 2011")
    tasks = make_tasks(project, len(matrix[0]))
    for i, row in enumerate(matrix):
        for task, value in zip(tasks, row, strict=True):
            if value == value:  # not NaN
                judge(task, coders[i], {"score": {"clarity": int(value)}})
    return project, tasks
