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
