"""The task queue: who gets which task, for how long, and what a submission may do."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation.errors import LeaseExpired, LeaseNotFound, LeaseSkipped, NotAMember, QueueError
from annotation.models import Answer, Judgment, Lease, Membership, Task
from annotation.questions import AnswerError
from annotation.services import leases
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire, lease_skip
from tests.factories import make_tasks, output_ids, single_answers

pytestmark = pytest.mark.django_db


@pytest.fixture
def raters(project, django_user_model):
    people = []
    for name in ["r1", "r2", "r3"]:
        user = django_user_model.objects.create_user(name)
        Membership.objects.create(user=user, project=project)
        people.append(user)
    return people


def test_rater_gets_a_lease_on_an_open_task(project, bob):
    (task,) = make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    assert lease.task == task and lease.state == Lease.State.ACTIVE
    assert lease.expires_at > timezone.now() + timedelta(seconds=590)


def test_asking_again_while_holding_a_live_lease_returns_the_same_lease(project, bob):
    make_tasks(project, 3)
    first = lease_acquire(project=project, rater=bob)
    assert lease_acquire(project=project, rater=bob).pk == first.pk


def test_non_member_cannot_take_tasks(project, charlie):
    make_tasks(project, 1)
    with pytest.raises(NotAMember):
        lease_acquire(project=project, rater=charlie)


def test_third_rater_gets_no_task_when_overlap_is_two(project, raters):
    make_tasks(project, 1)
    assert lease_acquire(project=project, rater=raters[0]) is not None
    assert lease_acquire(project=project, rater=raters[1]) is not None
    assert lease_acquire(project=project, rater=raters[2]) is None


def test_task_found_full_under_the_lock_is_passed_over_for_the_next(project, bob, monkeypatch):
    # Another rater's lease committed between the candidate query and our lock: only the fresh
    # recount under the lock sees it. Simulated here by a recount that finds the first task full.
    # (On PostgreSQL the recount is part of the statement that writes the lease: _lease_if_room.)
    first, second = make_tasks(project, 2)
    recount, lease_if_room = leases.room_left, leases._lease_if_room
    monkeypatch.setattr(
        leases, "room_left", lambda task, **kw: 0 if task.pk == first.pk else recount(task, **kw)
    )
    monkeypatch.setattr(
        leases,
        "_lease_if_room",
        lambda task, **kw: None if task.pk == first.pk else lease_if_room(task, **kw),
    )
    assert lease_acquire(project=project, rater=bob).task == second


def test_rater_gets_nothing_when_every_task_is_found_full_under_the_lock(project, bob, monkeypatch):
    make_tasks(project, 3)
    monkeypatch.setattr(leases, "room_left", lambda task, **kw: 0)
    monkeypatch.setattr(leases, "_lease_if_room", lambda task, **kw: None)
    assert lease_acquire(project=project, rater=bob) is None
    assert not Lease.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's lease-writing statement")
def test_the_statement_that_writes_a_lease_counts_the_live_leases_afresh(project, bob, alice, monkeypatch):
    """A candidate read on a stale snapshot (another rater's lease committed before our lock was
    granted): the statement that writes the lease counts the task's live leases itself, finds it
    full, writes nothing, and the rater is handed the next task."""
    project.overlap = 1
    project.save()
    first, second = make_tasks(project, 2)
    lease_acquire(project=project, rater=alice)  # alice holds the first task: it is full
    real = leases._held_place_and_candidate

    def stale(project, rater, now, held_limit):
        held, holding, place, _ = real(project, rater, now, held_limit)
        task = Task.objects.select_for_update().get(pk=first.pk)
        task.own_lease_id, task.output_ids = None, output_ids(first)
        return held, holding, place, task

    monkeypatch.setattr(leases, "_held_place_and_candidate", stale)
    assert lease_acquire(project=project, rater=bob).task == second
    assert not Lease.objects.filter(task=first, rater=bob).exists()


def test_rater_never_gets_a_task_they_already_judged(project, bob):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    assert lease_acquire(project=project, rater=bob) is None


def test_task_completes_after_overlap_judgments(project, raters):
    (task,) = make_tasks(project, 1)
    for rater in raters[:2]:
        lease = lease_acquire(project=project, rater=rater)
        judgment_submit(lease_id=lease.pk, rater=rater, answers=single_answers())
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETE and task.judgment_count == 2


def test_expired_lease_returns_the_task_to_the_pool(project, raters):
    make_tasks(project, 1)
    past = timezone.now() - timedelta(hours=1)
    lease_acquire(project=project, rater=raters[0], now=past)
    lease_acquire(project=project, rater=raters[1], now=past)
    # Both leases ran out an hour ago: a third rater can have the task now.
    assert lease_acquire(project=project, rater=raters[2]) is not None


def test_skipping_releases_the_lease_and_the_task_is_not_offered_again(project, raters):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=raters[0])
    lease_skip(lease_id=lease.pk, rater=raters[0])
    assert lease_acquire(project=project, rater=raters[0]) is None
    assert lease_acquire(project=project, rater=raters[1]) is not None
    assert lease_acquire(project=project, rater=raters[2]) is not None


def test_submitting_a_skipped_lease_is_refused(project, bob):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    lease_skip(lease_id=lease.pk, rater=bob)
    with pytest.raises(LeaseSkipped):
        judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())


def test_late_submission_is_accepted_while_the_task_has_room(project, bob):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob, now=timezone.now() - timedelta(hours=1))
    submission = judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    assert submission.created and submission.judgment.late


def test_late_submission_is_refused_once_others_filled_the_task(project, raters):
    make_tasks(project, 1)
    late = lease_acquire(project=project, rater=raters[0], now=timezone.now() - timedelta(hours=1))
    for rater in raters[1:]:
        lease = lease_acquire(project=project, rater=rater)
        judgment_submit(lease_id=lease.pk, rater=rater, answers=single_answers())
    with pytest.raises(LeaseExpired):
        judgment_submit(lease_id=late.pk, rater=raters[0], answers=single_answers())
    assert Judgment.objects.count() == 2


def test_late_submission_is_refused_while_others_hold_all_places(project, raters):
    make_tasks(project, 1)
    late = lease_acquire(project=project, rater=raters[0], now=timezone.now() - timedelta(hours=1))
    lease_acquire(project=project, rater=raters[1])
    lease_acquire(project=project, rater=raters[2])
    with pytest.raises(LeaseExpired):
        judgment_submit(lease_id=late.pk, rater=raters[0], answers=single_answers())


def test_retried_submission_returns_the_first_judgment_without_a_duplicate(project, bob):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    first = judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    again = judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    assert not again.created and again.judgment.pk == first.judgment.pk
    assert Judgment.objects.count() == 1


def test_database_constraint_refuses_a_second_judgment_and_writes_nothing(project, bob):
    # The (task, rater) constraint is the last line of defence: here a judgment got in by a
    # path the queue does not know about.
    (task,) = make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    Judgment.objects.create(project=project, task=task, rater=bob)
    with pytest.raises(QueueError, match="already judged"):
        judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    assert Judgment.objects.count() == 1 and not Answer.objects.exists()
    lease.refresh_from_db()
    task.refresh_from_db()
    assert lease.state == Lease.State.ACTIVE and task.judgment_count == 0


def test_invalid_answers_write_nothing(project, bob):
    (task,) = make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    with pytest.raises(AnswerError) as error:
        judgment_submit(
            lease_id=lease.pk, rater=bob, answers=single_answers(quality={"helpful": 9, "accurate": 1})
        )
    assert error.value.field == "answers.quality.helpful"
    task.refresh_from_db()
    assert task.judgment_count == 0 and not Judgment.objects.exists() and not Answer.objects.exists()
    lease.refresh_from_db()
    assert lease.state == Lease.State.ACTIVE


def test_someone_elses_lease_is_not_found(project, bob, alice):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    with pytest.raises(LeaseNotFound):
        judgment_submit(lease_id=lease.pk, rater=alice, answers=single_answers())
    with pytest.raises(LeaseNotFound):
        lease_skip(lease_id=lease.pk, rater=alice)


def test_answers_are_stored_one_row_per_question_with_their_kind(project, bob):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    answers = single_answers(
        fix="A better summary.",
        assumptions={
            "flags": ["questionable_assumption"],
            "notes": {"questionable_assumption": "X is false"},
        },
    )
    judgment = judgment_submit(lease_id=lease.pk, rater=bob, answers=answers, time_spent_ms=4200).judgment
    rows = {a.question: (a.kind, a.value) for a in judgment.answer_rows.all()}
    assert rows["quality"] == ("likert", {"helpful": 5, "accurate": 6})
    assert rows["feedback"] == ("feedback", "Mention the deadline.")
    assert rows["fix"] == ("fix", "A better summary.")
    assert rows["assumptions"][1]["notes"] == {"questionable_assumption": "X is false"}
    assert judgment.time_spent_ms == 4200


def test_pairwise_sides_are_randomised_per_lease_and_recorded(project, django_user_model):
    make_tasks(project, 40, kind="pairwise")
    project.overlap = 1
    project.save()
    orders = set()
    for i in range(40):
        rater = django_user_model.objects.create_user(f"p{i}")
        Membership.objects.create(user=rater, project=project)
        lease = lease_acquire(project=project, rater=rater)
        ids = sorted(lease.display_order)
        orders.add(tuple(lease.display_order) == tuple(ids))
        preferred = lease.display_order[0]
        judgment = judgment_submit(
            lease_id=lease.pk,
            rater=rater,
            answers={"preference": {"preferred": preferred, "strength": "better"}},
        ).judgment
        assert judgment.display_order == lease.display_order
    assert orders == {True, False}  # both orders occur (probability of failure 2 × 2^-40)


def test_gold_tasks_are_mixed_in_and_do_not_use_up_overlap(project, raters):
    project.gold_rate = 1.0
    project.save()
    (gold,) = make_tasks(project, 1, gold=True, prefix="g")
    make_tasks(project, 1)
    for rater in raters:
        lease = lease_acquire(project=project, rater=rater)
        assert lease.task == gold
        judgment_submit(lease_id=lease.pk, rater=rater, answers=single_answers())
    gold.refresh_from_db()
    assert gold.status == Task.Status.OPEN and gold.judgment_count == 3


def test_closed_task_refuses_submissions(project, bob):
    (task,) = make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    Task.objects.filter(pk=task.pk).update(status=Task.Status.CLOSED)
    with pytest.raises(QueueError):
        judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())


def test_lowering_overlap_stops_handing_out_filled_tasks(project, raters):
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=raters[0])
    judgment_submit(lease_id=lease.pk, rater=raters[0], answers=single_answers())
    project.overlap = 1
    project.save()
    assert lease_acquire(project=project, rater=raters[1]) is None


# The rater's place in the queue (Membership.queue_*): the scan starts past the tasks they finished.


def _place(project, rater):
    membership = Membership.objects.get(project=project, user=rater)
    return membership.queue_priority, membership.queue_task_id


def test_the_place_moves_past_finished_tasks_and_the_scan_starts_there(project, raters):
    tasks = make_tasks(project, 4)
    project.overlap = 3
    project.save()
    bob = raters[0]
    for task in tasks[:2]:
        lease = lease_acquire(project=project, rater=bob)
        assert lease.task == task
        judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    # Still open (overlap 3), judged by bob: his place is past them.
    assert lease_acquire(project=project, rater=bob).task == tasks[2]
    assert _place(project, bob) == (0, tasks[2].pk)
    assert _place(project, raters[1]) == (None, None)  # nobody else's place moved
    assert lease_acquire(project=project, rater=raters[1]).task == tasks[0]


def test_a_task_added_before_the_place_is_handed_out(project, bob):
    from annotation.models import TaskOutput
    from annotation.services.tasks import TaskDraft, task_create

    (first,) = make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    assert lease_acquire(project=project, rater=bob) is None
    assert _place(project, bob) == (0, first.pk + 1)  # past the last open task
    # A task written by the ORM, then one by task_create, each coming before bob's place.
    output = first.task_outputs.get().output
    orm_task = Task.objects.create(project=project, prompt=first.prompt, priority=-1)
    TaskOutput.objects.create(task=orm_task, output=output, position=0)
    lease = lease_acquire(project=project, rater=bob)
    assert lease.task == orm_task
    judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    draft = TaskDraft(prompt_id=first.prompt_id, output_ids=[output.pk], priority=-2)
    (urgent,) = task_create(project=project, drafts=[draft])
    assert lease_acquire(project=project, rater=bob).task == urgent


def test_a_task_passed_over_while_full_is_not_stepped_over_for_good(project, raters):
    first, second = make_tasks(project, 2)
    project.overlap = 1
    project.save()
    bob, carol = raters[0], raters[1]
    held = lease_acquire(project=project, rater=carol)
    assert held.task == first
    lease = lease_acquire(project=project, rater=bob)
    assert lease.task == second  # the first is full
    judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    lease_skip(lease_id=held.pk, rater=carol)
    assert lease_acquire(project=project, rater=bob).task == first


def test_the_place_stops_at_an_expired_lease_of_the_rater(project, bob):
    first, _second = make_tasks(project, 2)
    lease = lease_acquire(project=project, rater=bob)
    assert lease.task == first
    later = timezone.now() + timedelta(hours=1)
    again = lease_acquire(project=project, rater=bob, now=later)
    assert again.pk == lease.pk and again.expires_at > later
