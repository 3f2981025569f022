"""The loop in the admin: staff curators see only their projects' rounds, adapters and refinements;
"Start round" goes through the loop's service; an adapter leads to the judgments it trained on."""

import pytest
from django.urls import reverse

from feedback_loop.models import Refinement, Round
from tests.loop_ui.conftest import (
    client_for,
    feedback_judgments,
    make_adapter,
    make_round,
    make_staff_curator,
)


@pytest.fixture
def curator(alice):
    return make_staff_curator(alice)


@pytest.fixture
def two_projects(project, other_project, bob, dave):
    """A finished round with an adapter in each project, trained on two and one judgments."""
    mine = make_round(project, 1, reason="mine")
    theirs = make_round(other_project, 1, reason="theirs")
    my_judgments = feedback_judgments(project, bob, 2, prefix="mine")
    their_judgments = feedback_judgments(other_project, dave, 1, prefix="theirs")
    Refinement.objects.create(round=mine, judgment=my_judgments[0], text="my refinement", selected=True)
    Refinement.objects.create(round=theirs, judgment=their_judgments[0], text="their refinement")
    return make_adapter(mine, judgments=my_judgments), make_adapter(theirs, judgments=their_judgments)


def test_staff_curator_sees_only_the_loop_rows_of_projects_they_curate(curator, two_projects):
    mine, theirs = two_projects
    client = client_for(curator)
    rounds = client.get(reverse("admin:feedback_loop_round_changelist")).content.decode()
    assert "Summaries" in rounds and "Other" not in rounds
    adapters = client.get(reverse("admin:feedback_loop_adapter_changelist")).content.decode()
    assert mine.checksum[:12] in adapters and theirs.checksum[:12] not in adapters
    refinements = client.get(reverse("admin:feedback_loop_refinement_changelist")).content.decode()
    assert "my refinement" in refinements and "their refinement" not in refinements
    assert client.get(reverse("admin:feedback_loop_adapter_change", args=[theirs.pk])).status_code == 302
    own = client.get(reverse("admin:feedback_loop_round_change", args=[mine.round.pk])).content.decode()
    assert f'href="{reverse("loop-round", args=[mine.project_id, 1])}"' in own  # read-only, with its page
    assert client.get(reverse("admin:feedback_loop_round_change", args=[theirs.round.pk])).status_code == 302


def test_adapter_admin_counts_and_links_the_judgments_it_trained_on(curator, two_projects):
    mine, _ = two_projects
    client = client_for(curator)
    page = client.get(reverse("admin:feedback_loop_adapter_change", args=[mine.pk])).content.decode()
    link = reverse("admin:annotation_judgment_changelist") + f"?trained_adapters__id__exact={mine.pk}"
    assert f'<a href="{link}">2 judgments</a>' in page
    judgments = client.get(link)
    assert judgments.status_code == 200
    assert {j.pk for j in judgments.context["cl"].result_list} == set(
        mine.training_judgments.values_list("pk", flat=True)
    )


def test_admin_start_round_starts_the_next_round_of_a_curated_project(curator, project, other_project):
    client = client_for(curator)
    form = client.get(reverse("admin:feedback_loop_round_add"))
    assert form.status_code == 200
    choices = {p.name for p in form.context["form"].fields["project"].queryset}
    assert choices == {"Summaries"}
    response = client.post(
        reverse("admin:feedback_loop_round_add"), {"project": project.pk, "reason": "why not"}
    )
    round = Round.objects.get(project=project)
    assert response.status_code == 302
    assert response.url == reverse("admin:feedback_loop_round_change", args=[round.pk])
    assert (round.state, round.started_by, round.reason) == (Round.State.PENDING, curator, "why not")
    # Another curator's project is not a valid choice.
    refused = client.post(reverse("admin:feedback_loop_round_add"), {"project": other_project.pk})
    assert refused.status_code == 200 and not Round.objects.filter(project=other_project).exists()


def test_admin_start_round_while_one_runs_shows_the_error(curator, project):
    make_round(project, 1, state=Round.State.SELECTING)
    response = client_for(curator).post(
        reverse("admin:feedback_loop_round_add"), {"project": project.pk}, follow=True
    )
    assert "a round of this project is already running" in response.content.decode()
    assert Round.objects.filter(project=project).count() == 1


def test_admin_actions_retry_and_cancel_rounds(curator, project):
    failed = make_round(project, 1, state=Round.State.FAILED, failed_state=Round.State.SELECTING, error="x")
    client = client_for(curator)
    url = reverse("admin:feedback_loop_round_changelist")
    client.post(url, {"action": "retry", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.state == Round.State.SELECTING
    response = client.post(url, {"action": "cancel", "_selected_action": [failed.pk]}, follow=True)
    failed.refresh_from_db()
    assert failed.state == Round.State.CANCELLED
    assert "Round 1 of Summaries is cancelled." in response.content.decode()


def test_rater_with_staff_status_but_no_curation_sees_no_rounds(bob, project):
    make_round(project, 1)
    make_staff_curator(bob)  # staff with the permissions, but only a rater of the project
    client = client_for(bob)
    page = client.get(reverse("admin:feedback_loop_round_changelist"))
    assert page.status_code == 200 and page.context["cl"].result_count == 0
    form = client.get(reverse("admin:feedback_loop_round_add"))
    assert list(form.context["form"].fields["project"].queryset) == []
