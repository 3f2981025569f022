"""`manage.py demo_setup`: the sample project and the two accounts `make demo` prints."""

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation.models import Membership, Project, Task
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command("demo_setup", *args, stdout=out)
    return out.getvalue()


def test_demo_creates_a_project_with_tasks_and_accounts_whose_passwords_work():
    output = run()
    passwords = dict(re.findall(r"login: (\w+)\s+password: (\S+)", output))
    assert set(passwords) == {"rater", "curator"}
    users = get_user_model().objects
    assert users.get(username="rater").check_password(passwords["rater"])
    assert users.get(username="curator").check_password(passwords["curator"])
    assert users.get(username="curator").is_staff and not users.get(username="curator").is_superuser
    project = Project.objects.get()
    assert Task.objects.filter(project=project, kind="single").count() > 0
    assert Task.objects.filter(project=project, kind="pairwise").count() > 0
    roles = dict(Membership.objects.values_list("user__username", "role"))
    assert roles == {"rater": "rater", "curator": "curator"}


def test_running_it_again_changes_nothing_and_shows_no_password():
    run()
    again = run()
    assert "password:" not in again and Project.objects.count() == 1


def test_demo_tasks_can_be_rated():
    run()
    project = Project.objects.get()
    rater = get_user_model().objects.get(username="rater")
    lease = lease_acquire(project=project, rater=rater)
    answers = {"quality": {"accuracy": 5, "coverage": 4, "coherence": 6}, "feedback": "Name the deadline."}
    assert judgment_submit(lease_id=lease.pk, rater=rater, answers=answers).created
