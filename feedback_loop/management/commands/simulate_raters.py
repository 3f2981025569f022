"""python manage.py simulate_raters PROJECT [--rounds 3] [--raters 2] [--error-rate 0.1] [--disagreement 0.2]

Plays raters through the real queue (lease_acquire, judgment_submit), then starts a round of the
loop and waits for it, `--rounds` times, so the loop can be watched unattended. The simulated
raters judge each output against its prompt's reference: the prompt's gold answer and, where the
prompt's data lists them, the things a good output must mention (`must_include`). A rater who
finds something missing says what in writing and, with probability `--fix-rate`, writes the
reference as a fix. With probability `--error-rate` a rater gets it wrong (calls a bad output good,
or a good one bad); with probability `--disagreement` a rater scores one point off the others.
"""

from __future__ import annotations

import random

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation.importing import project_by_reference
from annotation.models import Lease, Membership, Project
from annotation.questions import questions_for
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire
from feedback_loop import services, tasks
from feedback_loop.management.commands.start_round import follow_round
from feedback_loop.models import Round
from feedback_loop.selectors import loop_config_of


class Command(BaseCommand):
    help = "Simulated raters rate the project's queue, then a round runs; --rounds times."

    def add_arguments(self, parser):
        parser.add_argument("project", help="Project id or name.")
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--raters", type=int, default=2, help="Simulated raters (accounts sim-rater-N).")
        parser.add_argument("--error-rate", type=float, default=0.1, help="Chance a rater judges wrongly.")
        parser.add_argument(
            "--disagreement", type=float, default=0.2, help="Chance a score is one point off."
        )
        parser.add_argument("--fix-rate", type=float, default=0.8, help="Chance a rater writes a fix.")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--timeout", type=float, default=1800, help="Seconds a round may take.")

    def handle(
        self, *args, project, rounds, raters, error_rate, disagreement, fix_rate, seed, timeout, **options
    ):
        try:
            project = project_by_reference(project)
        except Project.DoesNotExist as error:
            raise CommandError(f"no project with id or name {project!r}") from error
        rng = random.Random(seed)
        people = [self._rater(project, f"sim-rater-{i + 1}") for i in range(raters)]
        judge = Judge(rng=rng, error_rate=error_rate, disagreement=disagreement, fix_rate=fix_rate)
        for turn in range(1, rounds + 1):
            rated = self._rate_queue(project, people, judge)
            if not rated:
                # An adapter that was not promoted wrote no new outputs: the active model writes some.
                tasks.first_outputs(project.pk, limit=loop_config_of(project).generation_batch)
                rated = self._rate_queue(project, people, judge)
            if not rated:
                raise CommandError("the queue is empty and the project has no prompt left to write for")
            try:
                round = services.round_start(
                    project=project, user=None, reason=f"simulated raters, turn {turn}"
                )
            except services.LoopError as error:
                raise CommandError(error.message) from error
            round = follow_round(round, timeout=timeout, stream=self.stderr)
            if round.state != Round.State.DONE:
                raise CommandError(f"round {round.number} ended {round.state}: {round.error}")
            self.stdout.write(self._summary(round, rated))

    def _rater(self, project: Project, username: str):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()  # nobody logs in as a simulated rater
            user.save()
        Membership.objects.get_or_create(user=user, project=project, defaults={"role": Membership.Role.RATER})
        return user

    def _rate_queue(self, project: Project, people: list, judge: Judge) -> int:
        """Each simulated rater takes tasks until the queue has none left for them; returns how many."""
        done = 0
        bar = tqdm(desc="rating", unit="judgment", file=self.stderr)
        for rater in people:
            while (lease := lease_acquire(project=project, rater=rater)) is not None:
                answers = judge.answers(lease, project)
                judgment_submit(lease_id=lease.pk, rater=rater, answers=answers, time_spent_ms=4000)
                done += 1
                bar.update()
        bar.close()
        return done

    def _summary(self, round: Round, rated: int) -> str:
        evaluation = round.adapter.evaluation if hasattr(round, "adapter") else {}
        parts = [f"Round {round.number}: {rated} judgments, {round.train_example_count} training examples"]
        if "accuracy" in evaluation:
            parts.append(
                f"held-out accuracy {evaluation['accuracy']:.0%} (was {evaluation['baseline_accuracy']:.0%})"
            )
        if "held_out_loss" in evaluation:
            parts.append(
                f"held-out loss {evaluation['held_out_loss']:.3f} (was {evaluation['baseline_held_out_loss']:.3f})"
            )
        parts.append("promoted" if round.promoted else f"not promoted: {round.promotion_reason}")
        return ", ".join(parts) + "."


class Judge:
    """How a simulated rater answers a task, from the prompt's reference."""

    def __init__(self, *, rng: random.Random, error_rate: float, disagreement: float, fix_rate: float):
        self.rng, self.error_rate, self.disagreement, self.fix_rate = rng, error_rate, disagreement, fix_rate

    def missing(self, text: str, prompt) -> list[str]:
        """What the output lacks, as the rater sees it (the eval metric checks the same thing)."""
        data = prompt.data if isinstance(prompt.data, dict) else {}
        wanted = data.get("must_include") or []
        if wanted:
            return [w for w in wanted if w.lower() not in text.lower()]
        reference = self.reference(prompt)
        return [] if text.strip() == reference.strip() else [reference]

    def reference(self, prompt) -> str:
        gold = prompt.gold
        if isinstance(gold, list) and gold:
            gold = gold[0]
        if isinstance(gold, dict):
            gold = gold.get("text") or gold.get("answer") or ""
        if not isinstance(gold, str) or not gold.strip():
            raise CommandError(f"prompt {prompt.external_id!r} has no gold answer to judge against")
        return gold.strip()

    def answers(self, lease: Lease, project: Project) -> dict:
        task = lease.task
        outputs = [to.output for to in task.task_outputs.select_related("output").order_by("position")]
        asked = questions_for(project.questions, task.kind)
        wrong = self.rng.random() < self.error_rate
        answers: dict = {}
        if len(outputs) == 1:
            missing = self.missing(outputs[0].text, task.prompt)
            good = (not missing) != wrong
            for question in asked:
                if question["kind"] == "likert":
                    low, high = question["scale"]
                    score = high if good else low + 1
                    if self.rng.random() < self.disagreement:
                        score += -1 if score > low else 1
                    answers[question["name"]] = {c: score for c in question["criteria"]}
                elif question["kind"] == "feedback" and not good:
                    if missing and not wrong:
                        answers[question["name"]] = f"It should mention {' and '.join(missing)}."
                    else:
                        answers[question["name"]] = "It does not say what the prompt asks for."
                elif (
                    question["kind"] == "fix" and not good and not wrong and self.rng.random() < self.fix_rate
                ):
                    answers[question["name"]] = self.reference(task.prompt)
        else:
            scores = [len(self.missing(o.text, task.prompt)) for o in outputs]
            for question in asked:
                if question["kind"] == "pairwise":
                    if scores[0] == scores[1] and not wrong:
                        answers[question["name"]] = {"preferred": None, "strength": "about_the_same"}
                    else:
                        best = min(range(2), key=lambda i: scores[i])
                        if wrong:
                            best = 1 - best
                        answers[question["name"]] = {"preferred": outputs[best].pk, "strength": "better"}
                elif question["kind"] == "likert":
                    low, high = question["scale"]
                    answers[question["name"]] = {c: (low + high) // 2 for c in question["criteria"]}
        return answers
