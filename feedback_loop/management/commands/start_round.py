"""python manage.py start_round PROJECT [--reason TEXT] [--wait]"""

import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation.importing import project_by_reference
from annotation.models import Project
from feedback_loop import services
from feedback_loop.models import Round

POLL_SECONDS = 1.0


class Command(BaseCommand):
    help = "Start a project's next round of the loop; --wait follows it to the end."

    def add_arguments(self, parser):
        parser.add_argument("project", help="Project id or name.")
        parser.add_argument("--reason", default="", help="Why this round (kept with it).")
        parser.add_argument("--wait", action="store_true", help="Follow the round until it ends.")
        parser.add_argument("--timeout", type=float, default=None, help="With --wait: give up after SECONDS.")

    def handle(self, *args, project, reason, wait, timeout, **options):
        try:
            project = project_by_reference(project)
        except Project.DoesNotExist as error:
            raise CommandError(f"no project with id or name {project!r}") from error
        try:
            round = services.round_start(project=project, user=None, reason=reason)
        except services.LoopError as error:
            raise CommandError(error.message) from error
        self.stdout.write(f"Started round {round.number} of {project.name!r} (id {round.pk}).")
        if not wait:
            return
        round = follow_round(round, timeout=timeout, stream=self.stderr)
        self.stdout.write(f"Round {round.number}: {round.state}.")
        if round.promotion_reason:
            self.stdout.write(f"Promoted: {round.promoted} ({round.promotion_reason})")
        if round.state != Round.State.DONE:
            raise CommandError(
                f"round {round.number} ended {round.state}: {round.error or 'no error recorded'}"
            )


def follow_round(round: Round, *, timeout: float | None, stream) -> Round:
    """Follow a round to its end with progress bars on `stream`; CommandError after `timeout` s."""
    # A bar over the round's steps, and one over the training steps while it trains.
    steps = [state for state in Round.STEPS if state != Round.State.PENDING]
    deadline = None if timeout is None else time.monotonic() + timeout
    overall = tqdm(total=len(steps), desc=f"round {round.number}", unit="step", file=stream)
    training = None
    while True:
        round.refresh_from_db()
        if round.state in steps:
            overall.n = steps.index(round.state) + (1 if round.state == Round.State.DONE else 0)
        overall.set_postfix(state=round.state)
        overall.refresh()
        progress = round.progress or {}
        if round.state == Round.State.TRAINING and progress.get("total_steps"):
            if training is None:
                training = tqdm(total=progress["total_steps"], desc="training", unit="step", file=stream)
            training.n = progress.get("step") or 0
            if progress.get("loss") is not None:
                training.set_postfix(loss=f"{progress['loss']:.4f}")
            training.refresh()
        if round.is_terminal:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise CommandError(f"round {round.number} still {round.state} after {timeout} s")
        time.sleep(POLL_SECONDS)
    if training is not None:
        training.close()
    overall.close()
    return round
