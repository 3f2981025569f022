"""annotation.services.tasks.outputs_enqueue: the one writer of outputs and tasks the loop calls."""

import pytest

from annotation.errors import EnqueueError
from annotation.models import Output, Prompt, Task, TaskOutput
from annotation.services.leases import lease_acquire
from annotation.services.tasks import NewOutput, NewTask, outputs_enqueue


@pytest.fixture
def prompts(project):
    return [
        Prompt.objects.create(project=project, external_id=f"q{i}", text=f"Summarise {i}.") for i in range(3)
    ]


def _single(prompt, key, text="An output."):
    return NewTask(
        prompt_id=prompt.pk,
        outputs=(NewOutput(text=text, key=key, model_name="tiny", adapter="a/1", round_number=1),),
        round_number=1,
    )


def test_enqueue_writes_outputs_with_provenance_and_tasks_a_rater_can_lease(project, prompts, bob):
    result = outputs_enqueue(
        project=project, items=[_single(p, f"r1:{p.pk}") for p in prompts], task_kind="single"
    )
    assert (result.outputs_created, result.tasks_created) == (3, 3)
    output = Output.objects.get(prompt=prompts[0])
    assert (output.model_name, output.adapter, output.round_number) == ("tiny", "a/1", 1)
    assert output.generation["key"] == f"r1:{prompts[0].pk}"
    assert set(Task.objects.values_list("round_number", flat=True)) == {1}
    lease = lease_acquire(project=project, rater=bob)
    assert lease is not None and lease.task.kind == "single"


def test_enqueue_called_twice_writes_nothing_twice(project, prompts):
    items = [_single(p, f"r1:{p.pk}") for p in prompts]
    outputs_enqueue(project=project, items=items, task_kind="single")
    again = outputs_enqueue(project=project, items=items, task_kind="single")
    assert (again.outputs_created, again.tasks_created) == (0, 0)
    assert len(again.tasks) == 3
    assert (Output.objects.count(), Task.objects.count(), TaskOutput.objects.count()) == (3, 3, 3)


def test_pairwise_tasks_reuse_the_outputs_and_shuffle_sides_reproducibly(project, prompts):
    outputs_enqueue(
        project=project, items=[_single(p, f"new:{p.pk}", text="new") for p in prompts], task_kind="single"
    )
    pairs = [
        NewTask(
            prompt_id=p.pk,
            outputs=(NewOutput(text="new", key=f"new:{p.pk}"), NewOutput(text="old", key=f"old:{p.pk}")),
        )
        for p in prompts
    ]
    result = outputs_enqueue(project=project, items=pairs, task_kind="pairwise", seed=7)
    assert (result.outputs_created, result.tasks_created) == (3, 3)  # only the "old" outputs are new
    first_order = [list(t.task_outputs.values_list("output__text", flat=True)) for t in result.tasks]
    assert all(sorted(order) == ["new", "old"] for order in first_order)
    Task.objects.filter(kind="pairwise").delete()
    result = outputs_enqueue(project=project, items=pairs, task_kind="pairwise", seed=7)
    assert [list(t.task_outputs.values_list("output__text", flat=True)) for t in result.tasks] == first_order


def test_enqueue_refuses_a_prompt_of_another_project_and_writes_nothing(project, other_project, prompts):
    stranger = Prompt.objects.create(project=other_project, external_id="x", text="Elsewhere.")
    with pytest.raises(EnqueueError):
        outputs_enqueue(
            project=project, items=[_single(prompts[0], "a"), _single(stranger, "b")], task_kind="single"
        )
    assert Output.objects.count() == 0 and Task.objects.count() == 0


def test_enqueue_refuses_a_task_with_the_wrong_number_of_outputs(project, prompts):
    with pytest.raises(EnqueueError):
        outputs_enqueue(project=project, items=[_single(prompts[0], "a")], task_kind="pairwise")
