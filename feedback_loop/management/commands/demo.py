"""python manage.py demo [--no-serve] [--host H] [--port P]: the loop on a laptop.

Creates the demo project (a templated sentence task the tiny local model gets partly wrong, with a
held-out mention check), a rater and a curator, the first outputs of the tiny model (built under
REFINERY_ARTIFACTS_DIR on first use, then reused), and then runs the web server and one Celery
worker (every queue) side by side until Ctrl+C, which stops both.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation.models import Membership, Project, Prompt
from feedback_loop import tasks
from feedback_loop.models import LoopConfig

DEMO_PROJECT = "Demo: sentences"
N_TRAIN, N_EVAL = 96, 24  # prompts: the loop walks the train split; the eval split measures it
FIRST_OUTPUTS = 24  # outputs of the base model raters see before the first round
QUESTIONS = [
    {
        "name": "on_topic",
        "kind": "likert",
        "scale": [1, 5],
        "criteria": ["on_topic"],
        "label": "Is it about both?",
    },
    {
        "name": "feedback",
        "kind": "feedback",
        "label": "What is missing or wrong?",
        "required": False,
        "min_length": 5,
    },
    {"name": "fix", "kind": "fix", "label": "Your corrected sentence (optional)"},
    {"name": "preference", "kind": "pairwise", "label": "Which sentence does the job?", "allow_ties": True},
]
GUIDELINES = """Each prompt names two things. A good answer is one sentence that mentions both.
Score it, and when something is missing say what ("It should mention a red ball."), or write the
sentence yourself as a fix. The loop learns from your fixes and feedback."""
# Settings that let the tiny model learn the task in seconds on a CPU (see feedback_loop.engine.tiny).
TRAINING = {"learning_rate": 0.01, "epochs": 30, "max_steps": 400, "batch_size": 8}
GENERATION = {"max_new_tokens": 24, "stop": ["\n"], "refine": {"max_new_tokens": 24}}
STOP_SECONDS = 20  # how long the server and the worker get to finish after Ctrl+C


class Command(BaseCommand):
    help = "Set up the loop demo (project, accounts, first outputs) and run the web server and a worker."

    def add_arguments(self, parser):
        parser.add_argument("--no-serve", action="store_true", help="Set up only; start nothing.")
        parser.add_argument("--skip-setup", action="store_true", help="Only start the server and the worker.")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--reset-passwords", action="store_true", help="Give both accounts new passwords."
        )

    def handle(self, *args, no_serve, skip_setup, host, port, reset_passwords, **options):
        if not skip_setup:
            project = self.setup(reset_passwords=reset_passwords)
        else:
            project = Project.objects.filter(name=DEMO_PROJECT).first()
            if project is None:
                raise CommandError("no demo project yet: run `manage.py demo` without --skip-setup")
        if no_serve:
            return
        url = f"http://{host}:{port}/"
        self.stdout.write(
            self.style.SUCCESS(f"\nRefinery is starting at {url}\n")
            + f"""
  1. Log in as `rater` and rate a few sentences of {project.name!r}: score them, say what is
     missing, or write the sentence yourself.
  2. Log in as `curator`, open the project's Rounds tab ({url}projects/{project.pk}/rounds/) and
     start a round: the worker refines your feedback, trains an adapter on a CPU (under a minute),
     measures it on held-out prompts ("accuracy") and puts the new model's sentences in the queue.
  3. Or let simulated raters do it, in another terminal:
       python manage.py simulate_raters {project.pk} --rounds 3

Ctrl+C stops the server and the worker.
"""
        )
        # The filesystem broker's folders: the worker stops at once when they are missing.
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(key)
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
        code = supervise(
            {
                "web": [sys.executable, "manage.py", "runserver", "--noreload", f"{host}:{port}"],
                "worker": worker_command(),
            },
            cwd=Path(settings.BASE_DIR),
            write=self.stdout.write,
        )
        if code:
            raise CommandError(f"a process stopped with exit code {code}")

    @transaction.atomic
    def setup(self, *, reset_passwords: bool = False) -> Project:
        project, created = Project.objects.get_or_create(
            name=DEMO_PROJECT,
            defaults={
                "description": "One sentence about two given things: the loop teaches the tiny model to "
                "mention both.",
                "guidelines": GUIDELINES,
                "questions": QUESTIONS,
                "overlap": 2,
                "lease_seconds": 600,
            },
        )
        if created:
            Prompt.objects.bulk_create(
                Prompt(project=project, **row) for row in tasks.demo_prompts(n_train=N_TRAIN, n_eval=N_EVAL)
            )
            LoopConfig.objects.update_or_create(
                project=project,
                defaults={
                    "n_refinements": 2,
                    "training": TRAINING,
                    "generation": GENERATION,
                    "generation_batch": FIRST_OUTPUTS,
                },
            )
            self.stdout.write(
                f"Created project {project.name!r} (id {project.pk}): {N_TRAIN} train and {N_EVAL} held-out prompts."
            )
        else:
            self.stdout.write(f"Project {project.name!r} (id {project.pk}) already exists.")
        for username, role in [("rater", Membership.Role.RATER), ("curator", Membership.Role.CURATOR)]:
            self._account(project, username, role, reset_passwords)
        transaction.on_commit(lambda: self._first_outputs(project))
        return project

    def _first_outputs(self, project: Project) -> None:
        if project.tasks.exists():
            return
        self.stdout.write("Writing the first outputs with the tiny local model (built once, about 15 s)...")
        made = tasks.first_outputs(project.pk, limit=FIRST_OUTPUTS)
        self.stdout.write(f"  {made} rating tasks are waiting.")

    def _account(self, project: Project, username: str, role: str, reset_password: bool) -> None:
        user, created = get_user_model().objects.get_or_create(username=username)
        if created or reset_password:
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            if role == Membership.Role.CURATOR:
                # Curators work in the admin too: staff, with the permissions of both apps.
                user.is_staff = True
            user.save()
            if role == Membership.Role.CURATOR:
                user.user_permissions.set(
                    Permission.objects.filter(content_type__app_label__in=["annotation", "feedback_loop"])
                )
            self.stdout.write(self.style.SUCCESS(f"  {role:8} login: {username}  password: {password}"))
            self.stdout.write("           (shown once; `manage.py demo --reset-passwords` makes new ones)")
        else:
            self.stdout.write(f"  {role:8} login: {username}  (password set earlier)")
        Membership.objects.update_or_create(user=user, project=project, defaults={"role": role})


def worker_command() -> list[str]:
    """One worker for every queue, one task at a time: the demo's CPU does the GPU queue's work too.

    It takes the background queue as well (the curator pages' statistics of a big project), at its
    own priority: only a worker consuming that queue alone lowers it (config/celery.py). With the
    demo's per-process statistics cache the pages compute their figures themselves anyway.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-Q",
        "default,gpu,background",
        "--pool",
        "solo",
        "--loglevel",
        "INFO",
    ]


def supervise(
    commands: dict[str, list[str]], *, cwd: Path, write=print, stop_seconds: float = STOP_SECONDS
) -> int:
    """Run the commands side by side until one ends or this process gets SIGINT or SIGTERM; then stop
    the others with SIGTERM (SIGKILL after `stop_seconds`). Returns the first non-zero exit code.

    The children run in their own sessions, so Ctrl+C reaches only this process, which passes one
    SIGTERM on: a Celery worker that got the terminal's SIGINT as well would stop cold, mid-task.
    """
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = {}
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, cwd=cwd, start_new_session=True)
        while not stopping and all(p.poll() is None for p in processes.values()):
            time.sleep(0.2)
        ended = [name for name, p in processes.items() if p.poll() is not None]
        if ended and not stopping:
            write(f"{ended[0]} stopped (exit code {processes[ended[0]].returncode}): stopping the rest.")
        else:
            write("Stopping the web server and the worker...")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + stop_seconds
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A child our SIGTERM stopped ended as asked; any other ending is the one to report.
    bad = [p.returncode for p in processes.values() if p.returncode not in (0, -signal.SIGTERM)]
    return bad[0] if bad else 0
