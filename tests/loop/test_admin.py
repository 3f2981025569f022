"""The loop in the admin: curators see and act on their own projects' rounds only."""

from django.contrib.auth.models import Permission

from feedback_loop.models import LoopConfig, Round


def _staff_curator(user):
    user.is_staff = True
    user.save()
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="feedback_loop"))
    return user


def test_a_curator_sees_their_projects_rounds_and_not_anothers(client, project, other_project, alice):
    mine = Round.objects.create(project=project, number=1, state=Round.State.DONE)
    Round.objects.create(project=other_project, number=1, state=Round.State.DONE)
    client.force_login(_staff_curator(alice))
    response = client.get("/admin/feedback_loop/round/")
    assert response.status_code == 200
    assert list(response.context["cl"].queryset) == [mine]


def test_the_retry_action_resumes_a_failed_round(client, project, alice):
    round = Round.objects.create(project=project, number=1, state=Round.State.FAILED, failed_state="training")
    client.force_login(_staff_curator(alice))
    response = client.post(
        "/admin/feedback_loop/round/", {"action": "retry", "_selected_action": [round.pk]}, follow=True
    )
    assert response.status_code == 200
    round.refresh_from_db()
    assert round.state == "training"


def test_a_curator_edits_loop_settings_and_bad_training_settings_are_refused(client, project, alice):
    config = LoopConfig.objects.create(project=project)
    client.force_login(_staff_curator(alice))
    url = f"/admin/feedback_loop/loopconfig/{config.pk}/change/"
    form = client.get(url).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(project=project.pk, training='{"rnak": 4}', generation="{}")
    response = client.post(url, data)
    assert response.status_code == 200 and "unknown training setting" in response.content.decode()
    data["training"] = '{"rank": 4}'
    assert client.post(url, data).status_code == 302
    config.refresh_from_db()
    assert config.training == {"rank": 4}
