"""Curation: curator pages and their access rules, the admin cut down to curated projects, judgment
review with its audit trail, rater management and per-rater statistics."""

import io
import json
import re

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from annotation import agreement, curation, quality
from annotation.exporting import iter_preference_rows, iter_sft_rows
from annotation.models import AuditEvent, Judgment, Lease, Membership, Output, Prompt, Task
from tests.curation_data import judge, output_ids
from tests.factories import make_tasks

PAGES = ["dashboard/", "raters/", "import/", "exports/judgments.jsonl", "exports/sft.parquet"]


def client_for(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def make_staff_curator(user):
    """Curators are staff with the annotation app's permissions, never superusers."""
    user.is_staff = True
    user.save()
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
    return user


@pytest.fixture
def curator(alice):
    return make_staff_curator(alice)


@pytest.fixture
def singles(project):
    return make_tasks(project, 3, prefix="s")


@pytest.fixture
def judged(project, singles, bob):
    """Bob's judgments of the three single tasks, each with feedback and a fix (and their leases)."""
    for task in singles:
        Lease.objects.create(
            task=task, rater=bob, state=Lease.State.SUBMITTED, expires_at="2030-01-01T00:00:00Z"
        )
    return [
        judge(
            task,
            bob,
            {
                "quality": {"helpful": 5, "accurate": 6},
                "feedback": f"Feedback {i} from bob.",
                "fix": f"Fixed output {i} by bob.",
            },
            time_spent_ms=1000 * (i + 1),
        )
        for i, task in enumerate(singles)
    ]


@pytest.fixture
def other_rows(other_project, dave):
    """Project B has rows of every kind, so the admin has something to leak."""
    [task] = make_tasks(other_project, 1, prefix="secret-")
    Prompt.objects.filter(project=other_project).update(text="Secret prompt of project B.")
    Output.objects.filter(prompt__project=other_project).update(text="Secret output of project B.")
    lease = Lease.objects.create(task=task, rater=dave, expires_at="2030-01-01T00:00:00Z")
    judgment = judge(task, dave, {"quality": {"helpful": 1, "accurate": 1}, "feedback": "Secret feedback B."})
    AuditEvent.objects.create(
        actor=dave, project=other_project, action="accept", object_type="judgment", object_id=judgment.pk
    )
    return {"task": task, "lease": lease, "judgment": judgment}


# ---------------------------------------------------------------- who may see the curator pages


@pytest.mark.parametrize("page", PAGES)
def test_curator_reaches_curator_pages(project, alice, page):
    assert client_for(alice).get(f"/projects/{project.pk}/{page}").status_code == 200


@pytest.mark.parametrize("page", PAGES)
def test_rater_cannot_reach_curator_pages(project, bob, page):
    assert client_for(bob).get(f"/projects/{project.pk}/{page}").status_code == 403


@pytest.mark.parametrize("page", PAGES)
def test_user_without_access_does_not_learn_the_project_exists(project, charlie, page):
    assert client_for(charlie).get(f"/projects/{project.pk}/{page}").status_code == 404


def test_rater_of_another_project_cannot_see_the_dashboard(project, other_project, dave):
    assert client_for(dave).get(f"/projects/{project.pk}/dashboard/").status_code == 404


def test_staff_status_alone_opens_no_project(project, charlie):
    make_staff_curator(charlie)
    assert client_for(charlie).get(f"/projects/{project.pk}/dashboard/").status_code == 404


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_users_are_sent_to_login(project, page):
    response = Client().get(f"/projects/{project.pk}/{page}")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_rater_cannot_post_to_curator_pages(project, bob, charlie):
    client = client_for(bob)
    response = client.post(f"/projects/{project.pk}/raters/add/", {"username": "charlie", "role": "curator"})
    assert response.status_code == 403
    response = client.post(f"/projects/{project.pk}/raters/{bob.pk}/deactivate/", {"reason": "x"})
    assert response.status_code == 403
    assert not Membership.objects.filter(user=charlie).exists()
    assert Membership.objects.get(user=bob).is_active


def test_home_links_curators_to_their_pages(project, alice, bob):
    dashboard = f"/projects/{project.pk}/dashboard/"
    assert dashboard in client_for(alice).get("/").content.decode()
    assert dashboard not in client_for(bob).get("/").content.decode()


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("raters/add/", {"username": "charlie", "role": "rater"}),
        ("raters/{bob}/deactivate/", {"reason": "Spam"}),
        ("import/", {"file": ("p.jsonl", b'{"external_id": "1", "text": "T"}\n')}),
    ],
)
def test_curator_posts_need_the_csrf_token(project, alice, bob, charlie, path, data):
    client = client_for(alice, enforce_csrf_checks=True)
    url = f"/projects/{project.pk}/" + path.format(bob=bob.pk)
    if "file" in data:
        name, content = data["file"]
        data = {"file": _upload(name, content)}
    assert client.post(url, data).status_code == 403
    assert not Membership.objects.filter(user=charlie).exists()
    assert Membership.objects.get(user=bob).is_active
    assert not Prompt.objects.exists()
    # With the token from the page, the same request goes through.
    client.get(f"/projects/{project.pk}/raters/")
    if "file" in data:
        data["file"].seek(0)
    response = client.post(url, {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert response.status_code == 302


def _upload(name: str, content: bytes):
    upload = io.BytesIO(content)
    upload.name = name
    return upload


# ---------------------------------------------------------------- the admin, cut down to curated projects

CHANGELISTS = ["project", "membership", "prompt", "output", "task", "lease", "judgment", "auditevent"]


@pytest.mark.parametrize("model", CHANGELISTS)
def test_curator_sees_none_of_another_projects_rows_in_the_admin(project, judged, other_rows, curator, model):
    response = client_for(curator).get(reverse(f"admin:annotation_{model}_changelist"))
    assert response.status_code == 200
    rows = list(response.context["cl"].queryset)
    html = response.content.decode()
    assert "Secret" not in html
    assert ">Other<" not in html  # not even as a choice in the project filter
    assert "dave" not in html
    if model != "auditevent":  # alice has done nothing yet
        assert rows
    for row in rows:
        assert _project_of(row) == project


def _project_of(row):
    if hasattr(row, "project"):
        return row.project
    if hasattr(row, "prompt"):
        return row.prompt.project
    if hasattr(row, "task"):
        return row.task.project
    return row


@pytest.mark.parametrize(
    ("model", "key"), [("judgment", "judgment"), ("task", "task"), ("lease", "lease"), ("project", None)]
)
def test_curator_cannot_open_another_projects_rows_in_the_admin(
    project, other_project, other_rows, curator, model, key
):
    pk = other_project.pk if key is None else other_rows[key].pk
    response = client_for(curator).get(reverse(f"admin:annotation_{model}_change", args=[pk]))
    assert response.status_code == 302  # the admin's "doesn't exist" redirect
    assert response["Location"] == reverse("admin:index")


def test_admin_autocomplete_offers_only_curated_projects_rows(project, singles, other_rows, curator):
    response = client_for(curator).get(
        reverse("admin:autocomplete"),
        {"app_label": "annotation", "model_name": "task", "field_name": "prompt", "term": ""},
    )
    assert response.status_code == 200
    found = {int(result["id"]) for result in response.json()["results"]}
    assert found == set(Prompt.objects.filter(project=project).values_list("pk", flat=True))


def test_curator_cannot_point_a_task_at_another_projects_prompt(project, singles, other_rows, curator):
    task = singles[0]
    response = client_for(curator).post(
        reverse("admin:annotation_task_change", args=[task.pk]),
        {
            "project": project.pk,
            "prompt": other_rows["task"].prompt_id,
            "kind": "single",
            "status": "open",
            "priority": 0,
            "task_outputs-TOTAL_FORMS": 0,
            "task_outputs-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 200  # the form comes back with an error
    assert "prompt" in response.context["adminform"].form.errors
    task.refresh_from_db()
    assert task.prompt.project == project


def test_judgments_cannot_be_edited_or_added_in_the_admin_only_reviewed(project, judged, curator):
    client = client_for(curator)
    judgment = judged[0]
    response = client.get(reverse("admin:annotation_judgment_change", args=[judgment.pk]))
    assert response.status_code == 200
    assert not response.context["has_change_permission"]
    assert "Reject" in response.content.decode()  # the review buttons are there
    response = client.post(
        reverse("admin:annotation_judgment_change", args=[judgment.pk]), {"status": "accepted"}
    )
    assert response.status_code == 403
    assert client.get(reverse("admin:annotation_judgment_add")).status_code == 403
    judgment.refresh_from_db()
    assert judgment.status == "pending"


def test_judgment_change_page_escapes_model_outputs(project, curator, bob):
    [task] = make_tasks(project, 1, prefix="xss")
    Output.objects.filter(tasks=task).update(text='<script>alert("pwned")</script>')
    judgment = judge(task, bob, {"feedback": "<img src=x onerror=alert(1)>"})
    html = (
        client_for(curator)
        .get(reverse("admin:annotation_judgment_change", args=[judgment.pk]))
        .content.decode()
    )
    assert '<script>alert("pwned")</script>' not in html
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in html
    assert "<img src=x" not in html


def test_judgment_list_shows_rater_feedback_excerpt_and_scores(project, judged, curator):
    html = client_for(curator).get(reverse("admin:annotation_judgment_changelist")).content.decode()
    assert "Feedback 0 from bob." in html
    assert "helpful 5 accurate 6" in html


# ---------------------------------------------------------------- judgment review and the audit log


def _bulk_action(client, action, judgments, **extra):
    return client.post(
        reverse("admin:annotation_judgment_changelist"),
        {"action": action, "_selected_action": [j.pk for j in judgments], **extra},
    )


def test_bulk_reject_asks_for_a_reason_then_audits_each_judgment(project, judged, curator):
    client = client_for(curator)
    response = _bulk_action(client, "review_reject", judged[:2], index=0)
    assert response.status_code == 200
    assert "Reason" in response.content.decode()  # the confirmation page
    assert not AuditEvent.objects.exists()

    response = _bulk_action(client, "review_reject", judged[:2], apply="yes", reason="")
    assert response.status_code == 200
    assert "Say why" in response.content.decode()
    assert Judgment.objects.filter(status="rejected").count() == 0

    response = _bulk_action(client, "review_reject", judged[:2], apply="yes", reason="Copied the output.")
    assert response.status_code == 302
    assert set(Judgment.objects.filter(status="rejected")) == set(judged[:2])
    events = list(AuditEvent.objects.order_by("object_id"))
    assert [(e.object_type, e.object_id) for e in events] == [("judgment", j.pk) for j in judged[:2]]
    for event in events:
        assert event.actor == curator
        assert event.project == project
        assert event.action == AuditEvent.Action.REJECT
        assert event.reason == "Copied the output."
        assert event.before == {"status": "pending"}
        assert event.after == {"status": "rejected"}


def test_bulk_accept_needs_no_reason(project, judged, curator):
    response = _bulk_action(client_for(curator), "review_accept", judged, apply="yes", reason="")
    assert response.status_code == 302
    assert Judgment.objects.filter(status="accepted").count() == 3
    assert AuditEvent.objects.filter(action="accept").count() == 3


def test_single_review_from_the_judgment_page(project, judged, curator):
    client = client_for(curator)
    url = reverse("admin:annotation_judgment_review", args=[judged[0].pk])
    response = client.post(url, {"status": "excluded", "reason": "Off-topic prompt."})
    assert response.status_code == 302
    judged[0].refresh_from_db()
    assert judged[0].status == "excluded"
    [event] = AuditEvent.objects.all()
    assert (event.action, event.reason, event.actor) == ("exclude", "Off-topic prompt.", curator)
    # Without a reason nothing changes.
    client.post(url, {"status": "rejected", "reason": " "})
    judged[0].refresh_from_db()
    assert judged[0].status == "excluded"
    assert client.get(url).status_code == 405


def test_a_rejected_judgment_disappears_from_the_training_export(project, judged, curator, bob):
    [pair] = make_tasks(project, 1, kind="pairwise", prefix="pw")
    _first, second = output_ids(pair)
    compared = judge(pair, bob, {"preference": {"preferred": second, "strength": "better"}})
    assert {row["completion"] for row in iter_sft_rows(project)} == {
        "Fixed output 0 by bob.",
        "Fixed output 1 by bob.",
        "Fixed output 2 by bob.",
    }
    assert len(list(iter_preference_rows(project))) == 1

    changed = curation.judgments_review(
        actor=curator,
        judgments=Judgment.objects.filter(pk__in=[judged[0].pk, compared.pk]),
        status="rejected",
        reason="Low effort.",
    )
    assert changed == 2
    assert {row["completion"] for row in iter_sft_rows(project)} == {
        "Fixed output 1 by bob.",
        "Fixed output 2 by bob.",
    }
    assert list(iter_preference_rows(project)) == []
    # And the page's download says the same.
    body = b"".join(client_for(curator).get(f"/projects/{project.pk}/exports/sft.jsonl").streaming_content)
    completions = {json.loads(line)["completion"] for line in body.decode().splitlines()}
    assert completions == {"Fixed output 1 by bob.", "Fixed output 2 by bob."}


def test_review_skips_judgments_already_in_that_status(project, judged, alice):
    curation.judgments_review(actor=alice, judgments=[judged[0].pk], status="rejected", reason="r")
    changed = curation.judgments_review(
        actor=alice, judgments=[j.pk for j in judged], status="rejected", reason="all"
    )
    assert changed == 2
    assert AuditEvent.objects.filter(object_id=judged[0].pk).count() == 1


def test_review_of_another_projects_judgment_is_refused_and_changes_nothing(
    project, judged, other_rows, alice
):
    with pytest.raises(PermissionDenied):
        curation.judgments_review(
            actor=alice,
            judgments=[judged[0].pk, other_rows["judgment"].pk],
            status="rejected",
            reason="Not mine to judge.",
        )
    assert not Judgment.objects.filter(status="rejected").exists()
    assert not AuditEvent.objects.filter(actor=alice).exists()


def test_review_needs_a_reason_to_reject_or_exclude(project, judged, alice):
    for status in ("rejected", "excluded"):
        with pytest.raises(curation.CurationError):
            curation.judgments_review(actor=alice, judgments=[judged[0].pk], status=status, reason="  ")
    with pytest.raises(curation.CurationError):
        curation.judgments_review(actor=alice, judgments=[judged[0].pk], status="deleted", reason="x")


# ---------------------------------------------------------------- raters


def test_deactivating_a_rater_with_exclude_excludes_their_judgments_and_audits_it(
    project, judged, alice, bob
):
    curation.judgments_review(actor=alice, judgments=[judged[2].pk], status="rejected", reason="Spam.")
    [open_task] = make_tasks(project, 1, prefix="open")
    lease = Lease.objects.create(task=open_task, rater=bob, expires_at="2030-01-01T00:00:00Z")

    response = client_for(alice).post(
        f"/projects/{project.pk}/raters/{bob.pk}/deactivate/",
        {"exclude_judgments": "on", "reason": "Bot-like answers."},
    )
    assert response.status_code == 302
    assert not Membership.objects.get(user=bob, project=project).is_active
    statuses = dict(Judgment.objects.filter(rater=bob).values_list("pk", "status"))
    assert statuses == {judged[0].pk: "excluded", judged[1].pk: "excluded", judged[2].pk: "rejected"}
    lease.refresh_from_db()
    assert lease.state == Lease.State.SKIPPED  # the held task goes back to the pool

    events = AuditEvent.objects.exclude(action="reject")
    assert sorted(events.values_list("action", "object_type")) == [
        ("exclude", "judgment"),
        ("exclude", "judgment"),
        ("member_deactivate", "membership"),
    ]
    assert set(events.values_list("actor", "reason")) == {(alice.pk, "Bot-like answers.")}
    deactivation = events.get(action="member_deactivate")
    assert deactivation.before == {"role": "rater", "is_active": True}
    assert deactivation.after == {"role": "rater", "is_active": False}
    assert list(iter_sft_rows(project)) == []


def test_deactivating_without_exclude_keeps_their_judgments(project, judged, alice, bob):
    client_for(alice).post(
        f"/projects/{project.pk}/raters/{bob.pk}/deactivate/", {"reason": "Left the team."}
    )
    assert not Membership.objects.get(user=bob).is_active
    assert set(Judgment.objects.values_list("status", flat=True)) == {"pending"}
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["member_deactivate"]


def test_deactivating_needs_a_reason(project, alice, bob):
    response = client_for(alice).post(f"/projects/{project.pk}/raters/{bob.pk}/deactivate/", {"reason": ""})
    assert response.status_code == 302
    assert Membership.objects.get(user=bob).is_active
    assert not AuditEvent.objects.exists()


def test_adding_an_existing_user_as_rater(project, alice, charlie):
    response = client_for(alice).post(
        f"/projects/{project.pk}/raters/add/", {"username": "charlie", "role": "rater"}
    )
    assert response.status_code == 302
    membership = Membership.objects.get(user=charlie, project=project)
    assert (membership.role, membership.is_active) == ("rater", True)
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.object_id) == ("member_add", alice, membership.pk)


def test_adding_an_unknown_username_says_so(project, alice):
    response = client_for(alice).post(
        f"/projects/{project.pk}/raters/add/", {"username": "zed", "role": "rater"}
    )
    assert response.status_code == 400
    assert "there is no account" in response.content.decode()
    assert not AuditEvent.objects.exists()


def test_creating_an_account_shows_its_password_once(project, alice):
    client = client_for(alice)
    response = client.post(
        f"/projects/{project.pk}/raters/add/", {"username": "erin", "role": "rater", "create_account": "on"}
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    password = re.search(r'id="one-time-password">([^<]+)<', response.content.decode()).group(1)
    assert Client().login(username="erin", password=password)
    assert Membership.objects.get(user__username="erin").role == "rater"
    assert password not in client.get(f"/projects/{project.pk}/raters/").content.decode()
    # The name is now taken.
    again = client.post(
        f"/projects/{project.pk}/raters/add/", {"username": "erin", "role": "rater", "create_account": "on"}
    )
    assert again.status_code == 400


def test_reactivating_a_member_is_audited_as_a_change(project, alice, bob):
    curation.rater_deactivate(actor=alice, project=project, user=bob, reason="Paused.")
    client_for(alice).post(f"/projects/{project.pk}/raters/add/", {"username": "bob", "role": "rater"})
    assert Membership.objects.get(user=bob).is_active
    event = AuditEvent.objects.get(action="member_change")
    assert (event.before, event.after) == (
        {"role": "rater", "is_active": False},
        {"role": "rater", "is_active": True},
    )


def test_only_project_admins_make_project_admins(project, alice, charlie):
    response = client_for(alice).post(
        f"/projects/{project.pk}/raters/add/", {"username": "charlie", "role": "admin"}
    )
    assert response.status_code == 403
    assert not Membership.objects.filter(user=charlie).exists()


def test_curator_cannot_deactivate_themselves(project, alice):
    with pytest.raises(curation.CurationError):
        curation.rater_deactivate(actor=alice, project=project, user=alice, reason="Oops.")


@pytest.fixture
def rated_by_two(project, bob, django_user_model):
    """Bob and Erin on three plain tasks and two gold tasks: the hand-worked example below."""
    erin = django_user_model.objects.create_user("erin")
    Membership.objects.create(user=erin, project=project, role="rater")
    t0, t1, t2 = make_tasks(project, 3, prefix="t")
    g0 = make_tasks(project, 1, gold=True, prefix="g")[0]
    g1 = make_tasks(project, 1, kind="pairwise", gold=True, prefix="gp")[0]
    better = output_ids(g1)[1]
    Task.objects.filter(pk=g0.pk).update(
        gold_answers={"quality": {"helpful": 6, "accurate": 2}, "assumptions": {"flags": []}}
    )
    Task.objects.filter(pk=g1.pk).update(gold_answers={"preference": {"preferred": better}})

    def q(helpful, accurate):
        return {"quality": {"helpful": helpful, "accurate": accurate}, "feedback": "ok"}

    judge(t0, bob, q(5, 6), time_spent_ms=10_000)
    judge(t1, bob, q(3, 3), time_spent_ms=20_000)
    judge(t2, bob, q(7, 7), time_spent_ms=60_000)
    judge(g0, bob, q(5, 4), time_spent_ms=30_000)
    judge(g1, bob, {"preference": {"preferred": better, "strength": "slightly_better"}})
    judge(t0, erin, q(5, 4), time_spent_ms=5_000)
    judge(t1, erin, q(3, 3), time_spent_ms=7_000)
    judge(g0, erin, {**q(1, 2), "assumptions": {"flags": ["off_topic"], "notes": {}}})
    return erin


def test_rater_statistics_of_a_hand_worked_example(project, rated_by_two, alice, bob):
    """Worked by hand.

    Bob: 5 judgments; median of 10, 20, 60, 30 s = 25 s. Gold: g0 helpful 5 vs 6 (within ±1, pass),
    accurate 4 vs 2 (fail), no rubric flags vs none expected (pass); g1 preferred the expected output
    (pass) → 3/4. Agreement with Erin on t0, t1 (gold tasks aside), 2 criteria each: helpful 5=5, 3=3;
    accurate 6≠4, 3=3 → 3/4. Cohen's kappa, linear weights on 1–7: helpful [5, 3] vs [5, 3] = 1;
    accurate [6, 3] vs [4, 3]: observed disagreement (2 + 0)/2 = 1, expected ¼(2 + 3 + 1 + 0) = 1.5,
    kappa = 1 − 1/1.5 = 1/3; mean (1 + 1/3)/2 = 2/3.
    Erin: 3 judgments, median of 5 and 7 s = 6 s; gold g0: helpful 1 vs 6 fail, accurate 2 pass,
    flags [off_topic] vs none fail → 1/3; same agreement as Bob's.
    """
    stats = {row.username: row for row in quality.rater_stats(project)}
    bob_row, erin_row = stats["bob"], stats["erin"]
    assert bob_row.judgments == 5
    assert bob_row.median_seconds == 25
    assert (bob_row.gold_passed, bob_row.gold_checks) == (3, 4)
    assert (bob_row.matching_items, bob_row.shared_items) == (3, 4)
    assert bob_row.mean_kappa == pytest.approx(2 / 3)
    assert erin_row.judgments == 3
    assert erin_row.median_seconds == 6
    assert (erin_row.gold_passed, erin_row.gold_checks) == (1, 3)
    assert erin_row.agreement == 0.75
    assert erin_row.mean_kappa == pytest.approx(2 / 3)
    assert stats["alice"].judgments == 0 and stats["alice"].gold_accuracy is None

    html = client_for(alice).get(f"/projects/{project.pk}/raters/").content.decode()
    bob_html = re.search(r'<tr data-rater="bob"[^>]*>(.*?)</tr>', html, re.S).group(1)
    shown = {stat: text.strip() for stat, text in re.findall(r'data-stat="(\w+)">([^<]*)', bob_html)}
    assert shown == {
        "judgments": "5",
        "median_seconds": "25.0 s",
        "gold_accuracy": "75%",
        "agreement": "75%",
        "mean_kappa": "0.67",
    }


def test_gold_checks_by_question_kind():
    assert agreement.gold_checks("likert", {"a": 4, "b": 1}, {"a": 5, "b": 3}) == [True, False]
    assert agreement.gold_checks("likert", {"a": 4}, 4, scale_criteria=["a"]) == [True]
    assert agreement.gold_checks(
        "pairwise", {"preferred": None, "strength": "about_the_same"}, {"preferred": None}
    ) == [True]
    assert agreement.gold_checks("pairwise", None, {"preferred": 3}) == [False]
    assert agreement.gold_checks("rubric", {"flags": ["x", "y"]}, ["y", "x"]) == [True]
    assert agreement.gold_checks("ranking", {"ranking": [[2], [1, 3]]}, {"ranking": [2, [3, 1]]}) == [True]
    assert agreement.gold_checks("feedback", "text", "other") == []


# ---------------------------------------------------------------- import and dashboard


def test_import_page_imports_a_file(project, alice):
    content = b'{"external_id": "n1", "text": "New prompt", "outputs": ["A", "B"]}\n'
    response = client_for(alice).post(
        f"/projects/{project.pk}/import/", {"file": _upload("new.jsonl", content), "tasks": "pairwise"}
    )
    assert response.status_code == 302
    assert Task.objects.get(prompt__external_id="n1").kind == "pairwise"


def test_import_page_shows_the_bad_line_and_imports_nothing(project, alice):
    content = b'{"external_id": "n1", "text": "Fine"}\n{"external_id": "n2"}\n'
    response = client_for(alice).post(
        f"/projects/{project.pk}/import/", {"file": _upload("bad.jsonl", content)}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "line 2" in html and "text" in html and "nothing was imported" in html
    assert not Prompt.objects.exists()


def test_import_page_rejects_a_bad_mapping(project, alice):
    response = client_for(alice).post(
        f"/projects/{project.pk}/import/",
        {"file": _upload("a.jsonl", b'{"external_id": "1", "text": "T"}\n'), "mapping": "{not json"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.content.decode()
    assert not Prompt.objects.exists()


def test_dashboard_shows_progress_review_counts_and_plot(project, judged, alice):
    curation.judgments_review(actor=alice, judgments=[judged[0].pk], status="excluded", reason="Duplicate.")
    response = client_for(alice).get(f"/projects/{project.pk}/dashboard/")
    html = response.content.decode()
    assert response.context["review_counts"] == {"pending": 2, "accepted": 0, "rejected": 0, "excluded": 1}
    assert 'src="data:image/png;base64,' in html
    assert "Duplicate." in html  # the recent curation list
    for kind in ("judgments", "sft", "preference"):
        assert f"/projects/{project.pk}/exports/{kind}.jsonl" in html


def test_dashboard_of_a_project_without_judgments(project, alice):
    response = client_for(alice).get(f"/projects/{project.pk}/dashboard/")
    assert response.status_code == 200
    assert "No scores yet." in response.content.decode()


def test_export_download_of_an_unknown_kind_is_404(project, alice):
    assert client_for(alice).get(f"/projects/{project.pk}/exports/secrets.jsonl").status_code == 404


def test_review_is_refused_even_when_the_other_projects_judgment_needs_no_change(
    project, judged, other_rows, alice
):
    Judgment.objects.filter(pk=other_rows["judgment"].pk).update(status="accepted")
    with pytest.raises(PermissionDenied):
        curation.judgments_review(
            actor=alice, judgments=[judged[0].pk, other_rows["judgment"].pk], status="accepted"
        )
    assert Judgment.objects.get(pk=judged[0].pk).status == "pending"


def test_curators_cannot_demote_or_deactivate_a_project_admin(project, alice, charlie):
    Membership.objects.create(user=charlie, project=project, role=Membership.Role.ADMIN)
    client = client_for(alice)
    response = client.post(f"/projects/{project.pk}/raters/add/", {"username": "charlie", "role": "rater"})
    assert response.status_code == 403
    response = client.post(f"/projects/{project.pk}/raters/{charlie.pk}/deactivate/", {"reason": "Coup."})
    assert response.status_code == 403
    membership = Membership.objects.get(user=charlie)
    assert (membership.role, membership.is_active) == ("admin", True)
    assert not AuditEvent.objects.exists()
    # A project admin may.
    curation.rater_deactivate(actor=charlie, project=project, user=alice, reason="Handover.")
    assert not Membership.objects.get(user=alice).is_active


def test_admin_judgment_search_finds_feedback_text(project, judged, curator):
    response = client_for(curator).get(
        reverse("admin:annotation_judgment_changelist"), {"q": '"feedback 1 FROM"'}
    )
    assert list(response.context["cl"].queryset) == [judged[1]]


def test_admin_project_list_counts_tasks_and_judgments(project, judged, curator):
    response = client_for(curator).get(reverse("admin:annotation_project_changelist"))
    [row] = response.context["cl"].result_list
    assert (row.n_tasks, row.n_judgments) == (3, 3)
    assert f"/projects/{project.pk}/dashboard/" in response.content.decode()


def test_a_rater_who_judged_and_is_a_member_no_longer_keeps_a_row(project, rated_by_two, alice):
    Membership.objects.filter(project=project, user__username="erin").delete()
    rows = {row.username: row for row in quality.rater_stats(project)}
    assert rows["erin"].judgments == 3 and (rows["erin"].role, rows["erin"].is_active) == ("", False)
    assert rows["bob"].role == "rater" and rows["bob"].is_active
    html = client_for(alice).get(f"/projects/{project.pk}/raters/").content.decode()
    assert '<tr data-rater="erin"' in html


def test_the_raters_page_shows_its_members_a_page_at_a_time(project, curator, django_user_model, monkeypatch):
    from annotation import curator_views

    monkeypatch.setattr(curator_views, "RATERS_PER_PAGE", 2)
    for name in ["member1", "Member2", "member0"]:
        user = django_user_model.objects.create_user(name)
        Membership.objects.create(user=user, project=project, role=Membership.Role.RATER)
    client = client_for(curator)
    members = Membership.objects.filter(project=project).count()  # the curator too
    shown = []
    page, pages = 1, (members + 1) // 2
    for page in range(1, pages + 1):
        html = client.get(f"/projects/{project.pk}/raters/?page={page}").content.decode()
        rows = re.findall(r'<tr data-rater="([^"]+)"', html)
        assert len(rows) == (2 if page < pages else members - 2 * (pages - 1))
        assert f"page {page} of {pages}" in html
        assert ('rel="next"' in html) == (page < pages) and ('rel="prev"' in html) == (page > 1)
        shown += rows
    assert shown == sorted(
        Membership.objects.filter(project=project).values_list("user__username", flat=True), key=str.lower
    )  # every member once, in username order whatever the case, across the pages
    # A page out of range or not a number shows the last or the first page, never an error.
    assert client.get(f"/projects/{project.pk}/raters/?page=99").status_code == 200
    assert "page 1 of" in client.get(f"/projects/{project.pk}/raters/?page=x").content.decode()


def test_the_raters_pages_own_forms_deactivate_and_reactivate_a_member(
    project, alice, bob, django_user_model
):
    """The rows' forms, as the page renders them (one CSRF token for all of them), do what they say;
    a member's name is escaped wherever it appears."""
    odd = django_user_model.objects.create_user('<b>"odd"</b>')
    Membership.objects.create(user=odd, project=project, role=Membership.Role.RATER)
    client = client_for(alice, enforce_csrf_checks=True)
    html = client.get(f"/projects/{project.pk}/raters/").content.decode()
    assert '<b>"odd"</b>' not in html
    assert html.count("&lt;b&gt;&quot;odd&quot;&lt;/b&gt;") == 3  # its row, its name, its button
    own = re.search(r'<tr data-rater="alice".*?</tr>', html, re.S).group()
    assert "<form" not in own  # a curator does not deactivate themselves

    row = re.search(r'<tr data-rater="bob">.*?</tr>', html, re.S).group()
    action, token = re.search(
        r'<form method="post" action="([^"]+)" class="deactivate">'
        r'<input type="hidden" name="csrfmiddlewaretoken" value="([^"]+)">',
        row,
    ).groups()
    assert action == f"/projects/{project.pk}/raters/{bob.pk}/deactivate/"
    response = client.post(action, {"csrfmiddlewaretoken": token, "reason": "Paused."})
    assert response.status_code == 302
    assert not Membership.objects.get(project=project, user=bob).is_active

    html = client.get(f"/projects/{project.pk}/raters/").content.decode()
    row = re.search(r'<tr data-rater="bob" class="inactive">.*?</tr>', html, re.S).group()
    assert "(inactive)" in row and "Deactivate" not in row
    form = re.search(r'<form method="post" action="([^"]+)">(.*?)</form>', row, re.S)
    assert form.group(1) == f"/projects/{project.pk}/raters/add/"
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(2)))
    assert fields.keys() == {"csrfmiddlewaretoken", "username", "role"}
    assert client.post(form.group(1), fields).status_code == 302
    membership = Membership.objects.get(project=project, user=bob)
    assert membership.is_active and membership.role == Membership.Role.RATER
