"""Code projects: pass@1 of the model's programs on the eval split's unit tests, in the sandbox."""

from annotation.models import Prompt
from feedback_loop import selectors, tasks
from feedback_loop.engine.types import GenerationConfig


class ScriptedBackend:
    """Writes the body it was given for each prompt, whatever the prompt."""

    name = "scripted"

    def __init__(self, bodies):
        self.bodies = bodies

    def generate(self, prompts, config):
        return [[self.bodies[i]] for i in range(len(prompts))]


def test_pass_at_1_counts_the_eval_tasks_whose_program_passes_its_tests(project):
    project.kind = "code"
    project.save()
    for i, name in enumerate(["add", "double"]):
        Prompt.objects.create(
            project=project,
            external_id=f"code-{i}",
            text=f"def {name}(a, b=0):\n",
            split="eval",
            data={"tests": f"assert {name}(2, 3) == 5", "entry_point": name},
        )
    Prompt.objects.create(project=project, external_id="no-tests", text="def f():\n", split="eval")
    rows = selectors.code_eval_rows(project)
    assert [row.entry_point for row in rows] == ["add", "double"]
    right_then_wrong = ScriptedBackend(["    return a + b\n", "    return 2 * a\n"])
    assert tasks.pass_at_1(right_then_wrong, rows, GenerationConfig()) == 0.5


def test_text_projects_have_no_code_tasks(project):
    Prompt.objects.create(
        project=project, external_id="e", text="x", split="eval", data={"tests": "assert 1"}
    )
    assert selectors.code_eval_rows(project) == []
