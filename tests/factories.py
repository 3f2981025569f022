"""Test data builders."""

QUESTIONS = [
    {"name": "quality", "kind": "likert", "scale": [1, 7], "criteria": ["helpful", "accurate"]},
    {"name": "feedback", "kind": "feedback", "min_length": 3},
    {"name": "fix", "kind": "fix"},
    {
        "name": "assumptions",
        "kind": "rubric",
        "flags": [{"name": "questionable_assumption", "needs_text": True}, {"name": "off_topic"}],
    },
    {"name": "preference", "kind": "pairwise", "allow_ties": True},
    {"name": "order", "kind": "ranking", "allow_ties": False},
]


def make_tasks(project, n, *, kind="single", outputs_per_task=None, gold=False, prefix="p"):
    """n prompts, each with its outputs and one task over them."""
    from annotation.models import Output, Prompt, Task, TaskOutput

    per_task = outputs_per_task or {"single": 1, "pairwise": 2, "ranking": 3}[kind]
    tasks = []
    for i in range(n):
        prompt = Prompt.objects.create(
            project=project, external_id=f"{prefix}{i}", text=f"Summarise post {i}."
        )
        task = Task.objects.create(project=project, prompt=prompt, kind=kind, is_gold=gold)
        for position in range(per_task):
            output = Output.objects.create(prompt=prompt, text=f"Output {position} for post {i}.")
            TaskOutput.objects.create(task=task, output=output, position=position)
        tasks.append(task)
    return tasks


def single_answers(**overrides):
    answers = {"quality": {"helpful": 5, "accurate": 6}, "feedback": "Mention the deadline."}
    answers.update(overrides)
    return answers


def output_ids(task) -> list[int]:
    """A task's output ids in position order (the order a lease shows them before shuffling)."""
    return list(task.task_outputs.order_by("position").values_list("output_id", flat=True))


def write_judgment(task, rater, answers: dict, *, display_order=None, **fields):
    """A judgment written straight into the database: answers are {question: (kind, value)}."""
    from annotation.models import Answer, Judgment

    judgment = Judgment.objects.create(
        project=task.project,
        task=task,
        rater=rater,
        display_order=display_order if display_order is not None else output_ids(task),
        **fields,
    )
    Answer.objects.bulk_create(
        Answer(judgment=judgment, question=question, kind=kind, value=value)
        for question, (kind, value) in answers.items()
    )
    return judgment
