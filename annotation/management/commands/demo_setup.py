"""Create the demo project, its prompts, outputs and tasks, and a rater and a curator account."""

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand
from django.db import transaction

from annotation.models import Membership, Output, Project, Prompt, Task, TaskOutput

DEMO_PROJECT = "Demo: summaries"
QUESTIONS = [
    {"name": "quality", "kind": "likert", "scale": [1, 7], "criteria": ["accuracy", "coverage", "coherence"]},
    {"name": "feedback", "kind": "feedback", "label": "What should the summary do better?", "min_length": 5},
    {"name": "fix", "kind": "fix", "label": "Your improved summary (optional)"},
    {
        "name": "assumptions",
        "kind": "rubric",
        "flags": [
            {
                "name": "questionable_assumption",
                "label": "The post rests on a questionable assumption",
                "needs_text": True,
            },
            {"name": "harmful", "label": "The summary is harmful or offensive"},
        ],
    },
    {"name": "preference", "kind": "pairwise", "label": "Which summary is better?", "allow_ties": True},
]
GUIDELINES = """Read the post, then the summary.
Score each criterion from 1 (poor) to 7 (excellent). Write one or two sentences of feedback that
would make the summary better: what is missing, wrong or unclear. Be specific."""

POSTS = [
    (
        "My landlord wants to raise my rent by 30% with two weeks' notice. The lease says 60 days. "
        "I have paid on time for three years. Should I push back or start looking?",
        [
            "Landlord raises rent.",
            "A tenant's landlord wants a 30% rent rise on two weeks' notice, "
            "although the lease requires 60 days; the tenant asks whether to object or move.",
        ],
    ),
    (
        "I started running three months ago and my knees hurt after every run longer than 5 km. "
        "I bought new shoes last week. Is it the distance, the shoes, or my form?",
        [
            "Someone runs.",
            "A new runner gets knee pain after runs over 5 km and wonders whether "
            "distance, new shoes or form is to blame.",
        ],
    ),
    (
        "Our team lead schedules meetings at 6pm every Friday. Half of us have childcare duties. "
        "HR says it's up to the team. How do we raise it without sounding lazy?",
        [
            "Meetings are bad.",
            "Friday 6pm meetings clash with team members' childcare; HR defers "
            "to the team, and the poster wants a tactful way to object.",
        ],
    ),
    (
        "My cat stopped eating her usual food but eats treats fine. The vet found nothing wrong. "
        "She is 12. Should I switch brands or is this age?",
        [
            "Cat food.",
            "A 12-year-old cat refuses her usual food but eats treats; the vet found "
            "nothing, and the owner asks whether to change brands.",
        ],
    ),
    (
        "I got two job offers: one pays 15% more, the other has a shorter commute and a four-day "
        "week. I value time but have student loans. Which would you take?",
        [
            "Jobs.",
            "The poster weighs a 15% higher salary against a shorter commute and a four-day "
            "week while paying off student loans.",
        ],
    ),
    (
        "<script>alert('hi')</script> My neighbour's tree drops branches onto my car. "
        "They say it's an act of nature. Who pays for the dent?",
        [
            "<b>Tree</b> <img src=x onerror=alert(1)>",
            "A neighbour's tree damaged the poster's car; the "
            "neighbour calls it an act of nature, and the poster asks who is liable.",
        ],
    ),
]


class Command(BaseCommand):
    help = "Create the demo project with sample prompts and outputs, a rater and a curator."

    def add_arguments(self, parser):
        parser.add_argument(
            "--reset-passwords", action="store_true", help="Give both accounts new passwords."
        )

    @transaction.atomic
    def handle(self, *args, reset_passwords=False, **options):
        project, created = Project.objects.get_or_create(
            name=DEMO_PROJECT,
            defaults={
                "description": "Summaries of advice posts, rated and improved with written feedback.",
                "guidelines": GUIDELINES,
                "questions": QUESTIONS,
                "overlap": 2,
                "lease_seconds": 900,
                "base_model": "tiny-local",
            },
        )
        if created:
            for index, (post, summaries) in enumerate(POSTS):
                prompt = Prompt.objects.create(
                    project=project, external_id=f"post-{index}", text="Summarise this post.", context=post
                )
                outputs = [
                    Output.objects.create(prompt=prompt, text=text, model_name="demo", generation={"seed": i})
                    for i, text in enumerate(summaries)
                ]
                for output in outputs:
                    task = Task.objects.create(project=project, prompt=prompt, kind=Task.Kind.SINGLE)
                    TaskOutput.objects.create(task=task, output=output, position=0)
                pair = Task.objects.create(project=project, prompt=prompt, kind=Task.Kind.PAIRWISE)
                for position, output in enumerate(outputs):
                    TaskOutput.objects.create(task=pair, output=output, position=position)
            self.stdout.write(
                f"Created project {project.name!r} with {len(POSTS)} prompts and "
                f"{project.tasks.count()} tasks."
            )
        else:
            self.stdout.write(f"Project {project.name!r} already exists.")

        for username, role in [("rater", Membership.Role.RATER), ("curator", Membership.Role.CURATOR)]:
            self._account(project, username, role, reset_passwords)

    def _account(self, project, username, role, reset_password):
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=username)
        if created or reset_password:
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            if role == Membership.Role.CURATOR:
                # Curators work in the admin: staff, with the annotation app's permissions.
                user.is_staff = True
                user.save()
                user.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
            user.save()
            self.stdout.write(self.style.SUCCESS(f"  {role:8} login: {username}  password: {password}"))
            self.stdout.write(
                "           (shown once; `manage.py demo_setup --reset-passwords` makes new ones)"
            )
        else:
            self.stdout.write(f"  {role:8} login: {username}  (password set earlier)")
        Membership.objects.update_or_create(user=user, project=project, defaults={"role": role})
