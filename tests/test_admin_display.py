"""What curators see in the admin and raters in the guidelines: names not ids, lateness only when
late, large texts as previews, invisible characters as marks, Markdown rendered safely."""

import pytest
from django.urls import reverse

from annotation.models import Judgment, Output, Prompt
from tests.curation_data import judge
from tests.factories import make_tasks
from tests.test_curation import client_for, make_staff_curator

pytestmark = pytest.mark.django_db

RLO = "\u202e"
MARK = "⟪U+202E⟫"


@pytest.fixture
def curator(alice):
    return make_staff_curator(alice)


def test_judgment_page_title_names_the_rater(project, curator, bob):
    bob.username = "bob"
    [task] = make_tasks(project, 1)
    judgment = judge(task, bob, {"feedback": "Fine."})
    html = (
        client_for(curator)
        .get(reverse("admin:annotation_judgment_change", args=[judgment.pk]))
        .content.decode()
    )
    assert f"judgment {judgment.pk} on task {task.pk} by bob" in html
    assert f"by {bob.pk}<" not in html and f"by {bob.pk} " not in html


def test_late_column_flags_late_judgments_only(project, curator, bob, dave):
    on_time, late = make_tasks(project, 2)
    judge(on_time, bob, {"feedback": "On time."})
    judge(late, dave, {"feedback": "Late one."})
    Judgment.objects.filter(task=late).update(late=True)
    html = client_for(curator).get(reverse("admin:annotation_judgment_changelist")).content.decode()
    # Django's boolean column drew a red ✗ (icon-no) for every on-time judgment.
    assert "icon-no.svg" not in html
    assert html.count('<span class="late-mark">late</span>') == 1


def test_a_5_mb_prompt_change_page_shows_a_preview_not_a_5_mb_textarea(project, curator):
    """Measured: the page was 5,015,716 bytes (the whole text in a textarea) and took 14 s to
    show in a browser; now it holds a 20,000-character preview and a size note."""
    [task] = make_tasks(project, 1)
    prompt = Prompt.objects.get(tasks=task)
    Prompt.objects.filter(pk=prompt.pk).update(text="word " * 1_000_000)
    response = client_for(curator).get(reverse("admin:annotation_prompt_change", args=[prompt.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert len(response.content) < 200_000
    assert '<textarea name="text"' not in html
    assert "5,000,000 characters; the first 20,000 are shown" in html


def test_a_small_prompt_stays_editable(project, curator):
    [task] = make_tasks(project, 1)
    prompt = Prompt.objects.get(tasks=task)
    html = (
        client_for(curator).get(reverse("admin:annotation_prompt_change", args=[prompt.pk])).content.decode()
    )
    assert '<textarea name="text"' in html
    assert "text-preview" not in html


def test_saving_a_large_prompt_in_the_admin_keeps_its_text(project, alice):
    alice.is_superuser = alice.is_staff = True
    alice.save()
    [task] = make_tasks(project, 1)
    prompt = Prompt.objects.get(tasks=task)
    big = "word " * 40_000
    Prompt.objects.filter(pk=prompt.pk).update(text=big)
    client = client_for(alice)
    response = client.post(
        reverse("admin:annotation_prompt_change", args=[prompt.pk]),
        {
            "project": project.pk,
            "external_id": "renamed",
            "context": "",
            "data": "{}",
            "split": "eval",
            "gold": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    prompt.refresh_from_db()
    assert (prompt.external_id, prompt.split, prompt.text) == ("renamed", "eval", big)


def test_admin_shows_bidi_controls_in_outputs_as_marks(project, curator, bob):
    [task] = make_tasks(project, 1)
    output = Output.objects.get(tasks=task)
    Output.objects.filter(pk=output.pk).update(text=f"Open <b>{RLO}gpj.exe</b> now")
    judgment = judge(task, bob, {"feedback": "Fine."})
    client = client_for(curator)
    pages = [
        reverse("admin:annotation_output_changelist"),
        reverse("admin:annotation_output_change", args=[output.pk]),
        reverse("admin:annotation_judgment_change", args=[judgment.pk]),
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert f'<span class="invisible-char" title="right-to-left override">{MARK}</span>gpj.exe' in html, (
            url
        )
        assert "<b>" not in html.split(MARK)[0][-40:], url  # escaped before marking
        assert "admin-text.css" in html, url


def test_guidelines_markdown_is_rendered_to_safe_html(project, bob):
    project.guidelines = (
        "**Be kind.** Read [the policy](https://example.org/policy).\n\n"
        "- one\n- two\n\n<script>alert(1)</script> [bad](javascript:alert(2))"
    )
    project.save()
    html = client_for(bob).get(reverse("annotate", args=[project.pk])).content.decode()
    guidelines = html.split('class="guidelines-text">')[1].split("</aside>")[0]
    assert "<strong>Be kind.</strong>" in guidelines
    assert '<a href="https://example.org/policy">the policy</a>' in guidelines
    assert "<li>one</li>" in guidelines
    assert "<script>" not in guidelines and "&lt;script&gt;" in guidelines
    assert "javascript:" not in guidelines.split("[bad]")[0] and 'href="javascript' not in guidelines


def test_a_long_fix_shows_as_a_marked_preview_on_the_judgment_page(project, curator, bob):
    [task] = make_tasks(project, 1)
    judgment = judge(task, bob, {"feedback": f"Rename it: {RLO}gpj.exe", "fix": "fixed " * 100_000})
    response = client_for(curator).get(reverse("admin:annotation_judgment_change", args=[judgment.pk]))
    html = response.content.decode()
    assert len(response.content) < 200_000
    assert "600,000 characters; the first 20,000 are shown" in html
    assert f"{MARK}</span>gpj.exe" in html


def test_deleting_a_project_counts_what_goes_with_it_and_deletes_it(project, alice, bob):
    from annotation.models import Project

    alice.is_superuser = alice.is_staff = True
    alice.save()
    tasks = make_tasks(project, 3)
    for task in tasks:
        judge(task, bob, {"quality": {"helpful": 5, "accurate": 6}})
    client = client_for(alice)
    url = reverse("admin:annotation_project_delete", args=[project.pk])
    html = client.get(url).content.decode()
    assert "Judgments: 3" in html and "Tasks: 3" in html  # Django's summary, counted
    assert "by bob" not in html  # the cascade is counted, not listed row by row
    assert f'<a href="{reverse("admin:annotation_project_change", args=[project.pk])}">Summaries</a>' in html
    response = client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not Project.objects.filter(pk=project.pk).exists()
    assert not Judgment.objects.filter(task__in=tasks).exists()


def test_a_projects_members_are_listed_read_only_on_its_page(project, alice, bob):
    alice.is_superuser = alice.is_staff = True
    alice.save()
    html = (
        client_for(alice).get(reverse("admin:annotation_project_change", args=[project.pk])).content.decode()
    )
    assert "bob" in html and 'name="memberships-0-role"' not in html  # shown, not a form field
    assert 'name="memberships-TOTAL_FORMS"' in html  # superusers still add members here
