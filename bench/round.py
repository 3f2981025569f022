"""Round benchmark: one round of the loop on the tiny model against the same work done by the engine.

    python bench/round.py [--database-url sqlite:///var/bench-round.sqlite3 | postgres://postgres@127.0.0.1:5432/refinery_bench_round]
                          [--feedback 200] [--n 1] [--steps 10] [--held-out 8] [--generate 8] [--max-new-tokens 12]
                          [--threads N]

It makes a fresh database (the SQLite file is replaced; the PostgreSQL database is dropped and
created), builds the tiny model (not timed), and seeds a project through the platform's own
services: prompts imported with a model output each, then a rater leases each task and submits a
judgment with written feedback (`--feedback` of them), plus `--held-out` eval prompts with a gold
answer.

Then, in this process:

1. the round: `services.round_start`, with Celery in eager mode, so every step runs as the
   workers run it (claim, heartbeats and progress, refinements and selections written, adapter
   registered, evaluation, outputs and tasks written through annotation's service), minus the
   broker hop. Per-stage seconds are the times between the round's state changes.
2. the engine alone, on the same feedback, prompts and settings: refine → select → train →
   evaluate → generate, each stage loading its model as the engine's command line does. Its
   selection runs over the round's own refinements: sampled in other batches, the engine's would
   be other texts, and the cost of selecting and training depends on them. So both select the
   same, and train on the same set.

It prints both per-stage times and their ratio (aim: the round at most 1.10× the engine), and the
latency from the end of the generating step's last model call to the first new task a rater can
lease (aim: under 2 s). The libraries both load lazily (peft, transformers' generation) are imported
before either is timed: a worker pays that once, not per round. `--repeats` rounds (default 3) run,
each on a fresh project and each followed by the engine on its feedback; the tables give the
median per stage, so the first repeat's warm-up (allocator, caches) weighs on neither side. Each
stage is timed
twice: wall-clock seconds, and CPU seconds of this process (every thread), which other programs on a
busy machine disturb much less. It also prints what each side produced (refinements, selections,
training examples and steps, prompts generated for), so that the two did the same work. `--threads`
fixes torch's threads: with several threads on a loaded machine, every operation waits for its
slowest thread to be scheduled, and both timings mostly measure the other programs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder would come first on sys.path, and bench/queue.py would
# shadow the standard library's `queue` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "sqlite:///var/bench-round.sqlite3"
STAGES = ["pending", "refining", "selecting", "training", "evaluating", "generating"]
QUESTIONS = [
    {"name": "quality", "kind": "likert", "scale": [1, 7], "criteria": ["helpful", "accurate"]},
    {"name": "feedback", "kind": "feedback", "min_length": 3},
    {"name": "fix", "kind": "fix"},
    {"name": "preference", "kind": "pairwise", "allow_ties": True},
]
POSTS = [
    "My landlord has not fixed the heating for a month and winter is coming.",
    "I want to learn to play the piano but I only have ten minutes a day.",
    "Our team keeps missing deadlines because meetings run too long.",
    "I moved to a new city for work and still do not know anyone outside the office.",
    "My sister borrowed money two years ago and never mentions it.",
]
FEEDBACK = [
    "The summary should mention the main problem.",
    "Say who is asking and what they want.",
    "Too vague: name the deadline or the time limit.",
    "Keep it to one sentence and drop the filler.",
]


def fresh_database(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme.startswith("sqlite"):
        path = Path(parsed.path.lstrip("/")) if not parsed.path.startswith("//") else Path(parsed.path[1:])
        path = path if path.is_absolute() else ROOT / path
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return
    import psycopg

    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def setup_django(args: argparse.Namespace, artifacts: Path) -> None:
    os.environ.update(
        DATABASE_URL=args.database_url,
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="0",
        CELERY_TASK_ALWAYS_EAGER="1",
        CELERY_BROKER_URL="memory://",
        REFINERY_ARTIFACTS_DIR=str(artifacts),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        LOG_LEVEL="ERROR",
        LOOP_TEST_STEP_DELAY="0",  # a test setting that sleeps at every heartbeat: never in a benchmark
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed(args: argparse.Namespace, repeat: int):
    """A project (one per repeat) with `--feedback` judgments written through the queue's services."""
    from django.contrib.auth import get_user_model

    from annotation.importing import OutputRow, PromptRow
    from annotation.models import Membership, Project
    from annotation.services.judgments import judgment_submit
    from annotation.services.leases import lease_acquire
    from annotation.services.prompts import prompts_import

    users = get_user_model().objects
    rater = users.create_user(f"rater-{repeat}", password=secrets.token_urlsafe(12))
    reader = users.create_user(f"reader-{repeat}", password=secrets.token_urlsafe(12))
    curator = users.create_user(f"curator-{repeat}", password=secrets.token_urlsafe(12))
    project = Project.objects.create(
        name=f"Bench round {repeat + 1}", questions=QUESTIONS, overlap=1, lease_seconds=600
    )
    for user, role in ((rater, "rater"), (reader, "rater"), (curator, "curator")):
        Membership.objects.create(user=user, project=project, role=role)
    rows = [
        PromptRow(
            line=i + 1,
            external_id=f"train-{i}",
            text="Summarise this post.",
            context=f"{POSTS[i % len(POSTS)]} (post {i})",
            outputs=[OutputRow(text=f"The post {i} is about a thing.", model_name="seed")],
        )
        for i in range(args.feedback)
    ]
    rows += [
        PromptRow(
            line=args.feedback + i + 1,
            external_id=f"eval-{i}",
            text="Summarise this post.",
            context=POSTS[i % len(POSTS)],
            split="eval",
            gold=f"Someone writes: {POSTS[i % len(POSTS)].lower()}",
        )
        for i in range(args.held_out)
    ]
    prompts_import(project=project, rows=rows, make_tasks="single")
    for i in range(args.feedback):
        lease = lease_acquire(project=project, rater=rater)
        answers = {"quality": {"helpful": 3, "accurate": 4}, "feedback": FEEDBACK[i % len(FEEDBACK)]}
        judgment_submit(lease_id=lease.pk, rater=rater, answers=answers)
    return project, curator, reader


def loop_settings(args: argparse.Namespace, project, model: Path):
    from feedback_loop.selectors import loop_config_of

    config = loop_config_of(project)
    config.base_model = str(model)
    config.n_refinements = args.n
    config.selector = "instruct_rm"
    config.training = {"rank": 8, "batch_size": 8, "max_steps": args.steps, "max_length": 256}
    config.generation = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": 1.0,  # the tiny model greedy writes a blank line first
        "refine": {"max_new_tokens": args.max_new_tokens},
    }
    config.generation_batch = args.generate
    config.pairwise_tasks = True
    config.promotion_tolerance = 1e6  # promote whatever the loss: the bench times generation too
    config.stage_retries = 0
    config.full_clean()
    config.save()
    return config


class Clock:
    """When the round entered each state (wall-clock and CPU seconds), and when a model last
    finished generating."""

    def __init__(self) -> None:
        self.entered: dict[str, tuple[float, float]] = {}
        self.last_generate_end = 0.0

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()


def spans(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, cpu) seconds between consecutive marks."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]


def run_round(project, curator, reader, clock: Clock):
    from annotation.services.leases import lease_acquire
    from feedback_loop import services, tasks
    from feedback_loop.models import Round

    state_changed = services._state_changed

    def record(round, old, new, error=""):
        clock.entered.setdefault(new, clock.now())
        state_changed(round, old, new, error)

    load = tasks._backend

    def timed_backend(*a, **kw):
        backend = load(*a, **kw)
        generate = backend.generate

        def timed_generate(*ga, **gkw):
            result = generate(*ga, **gkw)
            clock.last_generate_end = time.perf_counter()
            return result

        backend.generate = timed_generate
        return backend

    services._state_changed, tasks._backend = record, timed_backend
    try:
        start = clock.now()
        round = services.round_start(project=project, user=curator, reason="bench")
        round = Round.objects.get(pk=round.pk)
        done = clock.now()
        lease = lease_acquire(project=project, rater=reader)
        leased = time.perf_counter()
    finally:
        services._state_changed, tasks._backend = state_changed, load
    if round.state != "done" or not round.promoted:
        raise SystemExit(f"the round ended {round.state} (promoted={round.promoted}): {round.error}")
    if lease is None or lease.task.round_number != round.number:
        raise SystemExit(
            f"no task of the round could be leased ({round.new_task_count} new tasks; leased: "
            f"{lease and lease.task})"
        )
    marks = [clock.entered.get(s, start) for s in STAGES] + [clock.entered.get("done", done)]
    marks[0] = start
    return round, dict(zip(STAGES, spans(marks), strict=True)), leased - clock.last_generate_end


def warm_up(model: Path) -> None:
    """Import what the engine imports on first use, so that neither side is timed paying for it."""
    import peft  # noqa: F401  (training and adapters)

    from feedback_loop.engine.backends import load_backend
    from feedback_loop.engine.types import GenerationConfig

    backend = load_backend({"kind": "hf", "model": str(model)})
    backend.generate(["Warm up."], GenerationConfig(max_new_tokens=2, temperature=1.0, stop=("\n\n",)))
    backend.next_token_logprobs(["Warm up?"], [" Yes", " No"])


def run_engine(round, model: Path, out: Path) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """The round's work by the engine alone: the same functions tasks.py calls, on the same data.
    Returns (wall, cpu) seconds per stage, and what it produced (see `work_done`)."""
    from annotation.models import Prompt
    from feedback_loop import selectors, tasks
    from feedback_loop.engine.backends import load_backend
    from feedback_loop.engine.evaluate import held_out_loss
    from feedback_loop.engine.refine import refine
    from feedback_loop.engine.select import select
    from feedback_loop.engine.train import dataset_sha256, train_lora
    from feedback_loop.engine.types import FeedbackItem, SFTExample
    from feedback_loop.models import Refinement

    config = round.config
    # In the round's order (by judgment), so that selection sees what the round's selection saw.
    rows = sorted(selectors.feedback_rows(round.judgment_ids), key=lambda r: r.judgment_id)
    items = [FeedbackItem(prompt=r.prompt, output=r.output, feedback=r.feedback, kind=r.kind) for r in rows]
    # Sampling in batches draws other refinements than one call does, and selection's and training's
    # cost depends on the texts: the engine selects among the round's own refinements, so that the two
    # select the same and train on the same set (the table below checks it).
    round_refinements: dict[int, list[str]] = {}
    for judgment_id, text in (
        Refinement.objects.filter(round=round)
        .order_by("judgment_id", "source", "sample_index")
        .values_list("judgment_id", "text")
    ):
        round_refinements.setdefault(judgment_id, []).append(text)
    held_out = [
        SFTExample(prompt=r.prompt, completion=r.completion) for r in selectors.held_out_rows(round.project)
    ]
    prompts = [
        selectors.training_prompt_of(p)
        for p in Prompt.objects.filter(pk__in=round.generation_prompt_ids).order_by("id")
    ]
    refine_config = tasks.refine_config_from(config["generation"])
    generation = tasks.generation_config_from(config["generation"])
    training = tasks.training_config_from(config["training"])
    hf = {"kind": "hf", "model": str(model)}
    marks = [Clock.now()]

    refinements = refine(load_backend(hf), items, n=config["n_refinements"], config=refine_config)
    marks.append(Clock.now())

    kept = [
        (item, found)
        for item, row in zip(items, rows, strict=True)
        if (found := round_refinements.get(row.judgment_id))
    ]
    selections = select(
        "instruct_rm",
        [item for item, _ in kept],
        [found for _, found in kept],
        backend=load_backend(hf),
        seed=round.number,
    )
    examples = [
        SFTExample(prompt=item.prompt, completion=found[s.index])
        for (item, found), s in zip(kept, selections, strict=True)
        if s.index is not None
    ]
    marks.append(Clock.now())

    result = train_lora(str(model), examples, out / "adapter", training, progress=False)
    marks.append(Clock.now())

    backend = load_backend(hf)
    backend.load_adapter(str(result.adapter_dir), "new")
    backend.set_adapter("new")
    held_out_loss(backend, held_out)
    backend.set_adapter(None)
    held_out_loss(backend, held_out)
    marks.append(Clock.now())

    backend = load_backend(hf)
    backend.load_adapter(str(result.adapter_dir), "new")
    for name in ("new", None):  # the new model's outputs, and the previous (base) model's for pairs
        backend.set_adapter(name)
        backend.generate(prompts, generation)
    marks.append(Clock.now())
    work = {
        "feedback": len(items),
        "refinements": sum(len(found) for found in refinements),
        "selected": len(examples),
        "training examples": result.metrics["examples"],
        "training set = the round's": int(dataset_sha256(examples) == round.dataset_sha256),
        "training steps": result.metrics["steps"],
        "held-out prompts": len(held_out),
        "prompts generated for": len(prompts),
    }
    return dict(zip(STAGES[1:], spans(marks), strict=True)), work


def work_done(round) -> dict[str, int]:
    """What the round produced, in the terms of `run_engine`'s."""
    from feedback_loop.models import Adapter

    adapter = Adapter.objects.get(round=round)
    return {
        "feedback": round.feedback_count,
        "refinements": round.refinement_count,
        "selected": round.selected_count,
        "training examples": adapter.training_metrics["examples"],
        "training set = the round's": 1,
        "training steps": adapter.training_metrics["steps"],
        "held-out prompts": adapter.evaluation["n_held_out"],
        "prompts generated for": len(round.generation_prompt_ids),
    }


def median_times(runs: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Per stage, the median over repeats of its wall-clock and of its CPU seconds."""
    return {
        stage: (
            statistics.median(run.get(stage, (0.0, 0.0))[0] for run in runs),
            statistics.median(run.get(stage, (0.0, 0.0))[1] for run in runs),
        )
        for stage in STAGES
    }


def print_table(title: str, round_times: dict, engine_times: dict, column: int) -> float:
    """One table of per-stage seconds (column 0: wall-clock, 1: CPU); returns the total ratio."""
    print(f"\n{title}\n{'stage':<12}{'round s':>10}{'engine s':>10}{'ratio':>8}")
    for stage in STAGES:
        ours, engine = round_times[stage][column], engine_times.get(stage, (0.0, 0.0))[column]
        ratio = f"{ours / engine:.2f}" if engine else "-"
        print(f"{stage:<12}{ours:>10.2f}{engine:>10.2f}{ratio:>8}")
    ours = sum(t[column] for t in round_times.values())
    engine = sum(t[column] for t in engine_times.values())
    print(f"{'total':<12}{ours:>10.2f}{engine:>10.2f}{ours / engine:>8.2f}   (aim: at most 1.10)")
    return ours / engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--feedback", type=int, default=200, help="feedback judgments the round takes up")
    parser.add_argument("--n", type=int, default=1, help="refinements per feedback")
    parser.add_argument("--steps", type=int, default=10, help="training steps (batch of 8)")
    parser.add_argument("--held-out", type=int, default=8, help="eval prompts with a gold answer")
    parser.add_argument("--generate", type=int, default=8, help="prompts the new model writes for")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds timed, each on a fresh project, then the engine"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-round-"))
    try:
        artifacts = work / "artifacts"
        fresh_database(args.database_url)
        setup_django(args, artifacts)
        from django.db import connection

        from feedback_loop.engine.tiny import build_tiny_model

        model = build_tiny_model(artifacts / "tiny-model", seed=0, pretrain_steps=150)
        warm_up(model)
        round_runs, engine_runs, latencies = [], [], []
        for repeat in range(args.repeats):
            project, curator, reader = seed(args, repeat)
            loop_settings(args, project, model)
            round, round_times, lease_latency = run_round(project, curator, reader, Clock())
            engine_times, engine_work = run_engine(round, model, work / f"engine-{repeat}")
            round_runs.append(round_times)
            engine_runs.append(engine_times)
            latencies.append(lease_latency)
            wall = sum(t[0] for t in round_times.values()) / sum(t[0] for t in engine_times.values())
            cpu = sum(t[1] for t in round_times.values()) / sum(t[1] for t in engine_times.values())
            print(f"repeat {repeat + 1}/{args.repeats}: round/engine {wall:.2f}× wall, {cpu:.2f}× CPU")

        import torch

        print(
            f"\nRound benchmark on {connection.vendor}: {os.cpu_count()} cores "
            f"(torch threads {torch.get_num_threads()}), tiny model; {round.feedback_count} feedback "
            f"judgments, N={args.n} refinements each, {args.steps} training steps of 8, "
            f"{args.held_out} held-out prompts, {args.generate} prompts generated for (new and previous model), "
            f"{args.max_new_tokens} new tokens at most"
        )
        round_work = work_done(round)
        print(f"\n{'work':<28}{'round':>8}{'engine':>8}")
        for name, count in round_work.items():
            print(f"{name:<28}{count:>8}{engine_work[name]:>8}")
        print(f"{'new tasks':<28}{round.new_task_count:>8}{'-':>8}")
        round_median, engine_median = median_times(round_runs), median_times(engine_runs)
        print_table(f"wall-clock seconds (median of {args.repeats})", round_median, engine_median, 0)
        print_table(
            f"CPU seconds, this process, every thread (median of {args.repeats})",
            round_median,
            engine_median,
            1,
        )
        print(
            "\nend of generation → first new task leased by a rater: "
            + ", ".join(f"{x:.3f}" for x in latencies)
            + f" s (max {max(latencies):.3f} s; aim: under 2 s)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
