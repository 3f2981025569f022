"""The loop's Celery tasks: one per step of a round, and the only module that imports the engine.

Each task takes a round id, claims the round's step with a conditional update (services.round_claim),
reads what it needs through the selectors, calls the engine on plain data, and hands the result
to one service, which moves the round on and enqueues the next step once its transaction commits.
Every step that loads a model (refine, select, train, evaluate, generate) runs on the queue
REFINERY_MODEL_QUEUE (`gpu`), taking up the feedback on `default`.

While a step runs, a thread keeps its claim's heartbeat fresh (`_beating`): a model call can take
longer than the claim's stale time, and the worker is alive all the while. A worker that dies
takes the thread with it, and its claim goes stale.

A step that raises is run again (`stage_retries` times, with a short back-off), then the round is
`failed` with the error, and `round_retry` resumes it from that step. A task delivered again after
its worker died finds the dead worker's claim; once the claim's heartbeat is stale it claims the
step afresh. Every step's writes are idempotent, and training resumes from its last checkpoint.
Periodic tasks (settings.CELERY_BEAT_SCHEDULE) re-send the steps of stalled rounds, start rounds
automatically, and update each round's win rate from the raters' comparisons.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, connections

from annotation.models import Output, Project, Prompt
from annotation.questions import questions_for
from annotation.services.tasks import NewOutput, NewTask, outputs_enqueue
from feedback_loop import selectors, services, storage
from feedback_loop.engine.backends import load_backend
from feedback_loop.engine.conditional import (
    conditional_generation_config,
    conditional_prompt,
    is_conditional_adapter,
    prepare_training,
)
from feedback_loop.engine.demo_task import sentence_task
from feedback_loop.engine.evaluate import held_out_loss, mean_pass_at_k, mention_accuracy, win_rate_by_task
from feedback_loop.engine.probes import CUE_DETECTORS as PROBE_CUE_DETECTORS
from feedback_loop.engine.probes import FAMILIES as PROBE_FAMILIES
from feedback_loop.engine.probes import run_probes
from feedback_loop.engine.refine import RefineConfig, refine
from feedback_loop.engine.sandbox import run_unit_tests_many
from feedback_loop.engine.select import select
from feedback_loop.engine.tiny import build_tiny_model
from feedback_loop.engine.train import LoRATrainingConfig, dataset_sha256, train_lora
from feedback_loop.engine.types import FeedbackItem, GenerationConfig, SFTExample
from feedback_loop.models import Adapter, LoopConfig, Refinement, Round, default_model_path

logger = logging.getLogger(__name__)

# Settings the loop trains with unless the project says otherwise: checkpoints so that a worker
# that dies mid-training resumes rather than starts over.
TRAINING_DEFAULTS = {"save_every_steps": 25}
REFINE_BATCH = 16  # feedback items per refiner call: the round's progress moves on after each
TINY_PRETRAIN_STEPS = 150  # the default model writes words rather than noise
DATASET_MARKER = "dataset.sha256"  # in the adapter folder: which training set its checkpoints belong to


class StepStopped(Exception):
    """The round was cancelled (or taken over) while the step ran: stop without touching it."""


class NothingToTrain(Exception):
    """No training example: retrying the step would not change that."""


# ---------------------------------------------------------------- settings → engine configs


def _typed_fields(settings, cls, *, what: str, skip: tuple[str, ...] = ()) -> dict:
    """`settings` checked against the fields of the engine's config dataclass `cls`: unknown names
    and values of the wrong type raise ValueError; lists become the tuples the engine expects."""
    if not isinstance(settings, dict):
        raise ValueError(f"{what} settings must be an object")
    defaults = cls()
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} setting {unknown[0]!r} (settings: {', '.join(names)})")
    values = dict(settings)
    for name, value in settings.items():
        default = getattr(defaults, name)
        if value is None and (default is None or name in ("max_steps", "seed")):
            continue
        if isinstance(default, tuple) or name == "target_modules":
            if not (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name} must be a list of strings")
            values[name] = tuple(value)
        elif isinstance(default, bool) or isinstance(value, bool):
            if not (isinstance(value, bool) and isinstance(default, bool)):
                raise ValueError(f"{name} must be {type(default).__name__}")
        elif isinstance(default, float):
            if not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            values[name] = float(value)
        elif isinstance(default, int) or name in ("max_steps", "seed"):
            if not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
        elif not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
    return values


def training_config_from(settings: dict) -> LoRATrainingConfig:
    """The trainer's config from a project's `training` settings; unknown or ill-typed ones raise."""
    config = LoRATrainingConfig(
        **{**TRAINING_DEFAULTS, **_typed_fields(settings, LoRATrainingConfig, what="training")}
    )
    if config.packing not in ("group_by_length", "pack"):
        raise ValueError("packing must be group_by_length or pack")
    return config


def generation_config_from(settings: dict) -> GenerationConfig:
    """How the loop generates outputs (`settings` less its "refine" part); unknown or ill-typed ones raise."""
    if not isinstance(settings, dict):
        raise ValueError("generation settings must be an object")
    outputs = {k: v for k, v in settings.items() if k != "refine"}
    # One output per prompt; the stop strings come from the generation settings.
    return GenerationConfig(**_typed_fields(outputs, GenerationConfig, what="generation", skip=("n",)))


def refine_config_from(settings: dict) -> RefineConfig:
    """How the refiner samples (the "refine" part of the generation settings)."""
    if not isinstance(settings, dict):
        raise ValueError("generation settings must be an object")
    return RefineConfig(**_typed_fields(settings.get("refine") or {}, RefineConfig, what="refine"))


PROBE_SUFFIXES = (".csv", ".jsonl")


# Options a family takes beside its files ({"files": [...], option: value}), with their choices.
PROBE_OPTIONS = {"biased_context": {"cue_detector": PROBE_CUE_DETECTORS}}


def _probe_setting(family: str, setting) -> tuple[list, dict]:
    """A family's files and options: a list of files, or an object with `files` and its options."""
    if not isinstance(setting, dict):
        return setting, {}
    allowed = PROBE_OPTIONS.get(family, {})
    unknown = [key for key in setting if key != "files" and key not in allowed]
    if unknown:
        raise ValueError(f"{family}: unknown option {unknown[0]!r} (options: files, {', '.join(allowed)})")
    options = {key: value for key, value in setting.items() if key != "files"}
    for key, value in options.items():
        if value not in allowed[key]:
            raise ValueError(f"{family}: {key} must be one of {', '.join(allowed[key])} (got {value!r})")
    return setting.get("files", []), options


def probe_files_from(settings: dict) -> dict[str, list[str]]:
    """The probe families a project enables, each with its files ({family: [path, ...]}; an empty
    list runs the family's small example files; a family with options is an object, {"files": [...],
    option: value}). Unknown families and options and ill-formed paths raise."""
    if not isinstance(settings, dict):
        raise ValueError("probes must be an object of family: [files]")
    files = {}
    for family, setting in settings.items():
        if family not in PROBE_FAMILIES:
            raise ValueError(f"unknown probe family {family!r} (families: {', '.join(PROBE_FAMILIES)})")
        paths, _ = _probe_setting(family, setting)
        if not isinstance(paths, list) or not all(isinstance(p, str) and p.strip() for p in paths):
            raise ValueError(f"{family}: files must be a list of paths")
        wrong = [p for p in paths if not p.lower().endswith(PROBE_SUFFIXES)]
        if wrong:
            raise ValueError(f"{family}: {wrong[0]!r} is not a .csv or .jsonl file")
        files[family] = list(paths)
    return files


def probe_options_from(settings: dict) -> dict[str, dict]:
    """The options each enabled family was given ({family: {option: value}}; checked as above)."""
    probe_files_from(settings)
    return {family: _probe_setting(family, setting)[1] for family, setting in settings.items()}


def probe_direction(name: str) -> int:
    """+1 when a higher value of the probe metric `name` is better, -1 when lower is, 0 when it is no
    score of the model (a chance rate)."""
    last = name.rsplit("/", 1)[-1]
    if "chance" in last:
        return 0
    if last in ("loss", "flip_to_cue_rate"):  # a model swayed by the cue flips more
        return -1
    return 1


def probe_regressions(new: dict, baseline: dict, *, tolerance: float) -> list[dict]:
    """The probe results of the new model that are worse than the baseline's by more than `tolerance`
    (in the metric's own units), worst first."""
    flags = []
    for name, value in new.items():
        old = baseline.get(name)
        direction = probe_direction(name)
        if not direction or not all(isinstance(v, int | float) and math.isfinite(v) for v in (value, old)):
            continue
        drop = (old - value) * direction
        if drop > tolerance:
            flags.append({"probe": name, "value": value, "baseline": old, "drop": drop})
    return sorted(flags, key=lambda flag: -flag["drop"])


def storable(text: str) -> str:
    """A model's text as the database can keep it: PostgreSQL stores no NUL character, and a byte-level
    tokenizer can decode one. It becomes U+FFFD, the usual mark of an undecodable byte."""
    return text.replace("\x00", "\ufffd")


def model_path(model: str) -> str:
    """The model to load. The default, the tiny local model, is built on first use: a fresh install
    (the demo) runs a round with no download and no setup step."""
    default = Path(default_model_path())
    if model == str(default) and not (default / "config.json").exists():
        default.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=default.parent))
        build_tiny_model(building, seed=0, pretrain_steps=TINY_PRETRAIN_STEPS)
        try:
            os.replace(building, default)  # whole or not at all
        except OSError:  # another worker built it first
            shutil.rmtree(building, ignore_errors=True)
    return model


def _backend(model: str, *, adapters: dict[str, str] | None = None):
    backend = load_backend({"kind": "hf", "model": model_path(model)})
    for name, path in (adapters or {}).items():
        backend.load_adapter(str(storage.artifact_fetch(path)), name)
    return backend


# ---------------------------------------------------------------- running a step


def _run_step(round_id: int, state: str, work: Callable[[Round, str], None]) -> None:
    token = services.round_claim(round_id=round_id, state=state)
    if token is None:
        round = Round.objects.filter(pk=round_id).first()
        if round is not None and round.state == state and round.claim_token:
            # Another worker holds the step, or held it and died: look again once its claim could be stale.
            enqueue_step(round_id, state, countdown=services.claim_stale_seconds())
        return
    round = Round.objects.select_related("project").get(pk=round_id)
    try:
        with _beating(round_id, token):
            work(round, token)
    except StepStopped:
        return
    except NothingToTrain as error:
        services.round_fail(round_id=round_id, token=token, error=str(error), retry=False)
    except Exception as error:
        logger.exception("round %s: step %s failed", round_id, state)
        services.round_fail(round_id=round_id, token=token, error=step_error(state, error))


def step_error(state: str, error: Exception) -> str:
    """What a round's error says of a failed step; a full disk in so many words."""
    said = f"{type(error).__name__}: {error}"
    # Libraries that write with their own code say it in words (safetensors: "I/O error: No space
    # left on device (os error 28)") rather than with an OSError.
    if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "No space left on device" in str(error)
    ):
        where = f" writing {error.filename}" if getattr(error, "filename", None) else ""
        return (
            f"no space left on device{where} during {state}: nothing of the step was kept "
            f"(no half-written file is used); free disk space, then retry the round ({said})"
        )
    return said


def heartbeat_interval() -> float:
    """Seconds between two beats of a running step: LOOP_HEARTBEAT_SECONDS, and at most a third of
    the stale time, so that two beats can be late before the claim looks abandoned."""
    return min(float(settings.LOOP_HEARTBEAT_SECONDS), services.claim_stale_seconds() / 3)


@contextlib.contextmanager
def _beating(round_id: int, token: str) -> Iterator[None]:
    """Keep the claim `token` alive while the block runs, from a thread of its own: the block's model
    calls hold the worker's thread for as long as they take. The thread stops when the block ends or
    the claim is lost (the step learns of that at its next `_heartbeat` or hand-over)."""
    stop = threading.Event()
    beat = threading.Thread(
        target=_beat, args=(round_id, token, stop), name=f"round-{round_id}-heartbeat", daemon=True
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def _beat(round_id: int, token: str, stop: threading.Event) -> None:
    try:
        while not stop.wait(heartbeat_interval()):
            try:
                if not services.round_heartbeat(round_id=round_id, token=token):
                    return
            except DatabaseError:  # a database busy or away for a moment: the next beat tries again
                logger.warning("round %s: heartbeat failed", round_id, exc_info=True)
    finally:
        connections.close_all()  # this thread's own connections, which nothing else would close


def _heartbeat(round: Round, token: str, progress: dict) -> None:
    if not services.round_heartbeat(round_id=round.pk, token=token, progress=progress):
        raise StepStopped()
    if settings.LOOP_TEST_STEP_DELAY:
        time.sleep(settings.LOOP_TEST_STEP_DELAY)


def _scores_objective(round: Round) -> bool:
    """Whether the round learns from rater scores (conditional, filtering, rwr) rather than ILF."""
    return round.config.get("objective", LoopConfig.Objective.ILF) != LoopConfig.Objective.ILF


def _take_feedback(round: Round, token: str) -> None:
    if _scores_objective(round):
        # Every scored output so far: the objective is fitted to the project's score distribution.
        ids = round.judgment_ids or list(
            selectors.scored_judgments(
                round.project, require_acceptance=round.config.get("require_acceptance", False)
            ).values_list("pk", flat=True)
        )
        services.round_take_feedback(round_id=round.pk, token=token, judgment_ids=ids)
        return
    ids = round.judgment_ids or list(
        selectors.feedback_judgments(
            round.project,
            require_acceptance=round.config.get("require_acceptance", False),
            exclude_round=round,
        ).values_list("pk", flat=True)
    )
    services.round_take_feedback(round_id=round.pk, token=token, judgment_ids=ids)


def _refine(round: Round, token: str) -> None:
    if _scores_objective(round):  # nothing to refine: the scores are the signal
        services.round_advance(round_id=round.pk, token=token, refinement_count=0)
        return
    config = round.config
    rows = selectors.feedback_rows(round.judgment_ids)
    services.refinements_record(
        round=round,
        refinements=[
            services.RefinementIn(judgment_id=row.judgment_id, text=row.fix, source=Refinement.Source.HUMAN)
            for row in rows
            if row.fix.strip()
        ],
    )
    done = set(
        Refinement.objects.filter(round=round, source=Refinement.Source.MODEL).values_list(
            "judgment_id", flat=True
        )
    )
    todo = [
        row for row in rows if row.feedback.strip() and not row.fix.strip() and row.judgment_id not in done
    ]
    if todo:
        backend = _backend(config["refiner_model"])
        refine_config = refine_config_from(config.get("generation", {}))
        for start in range(0, len(todo), REFINE_BATCH):
            batch = todo[start : start + REFINE_BATCH]
            _heartbeat(round, token, {"stage": Round.State.REFINING, "done": start, "total": len(todo)})
            results = refine(
                backend,
                [_feedback_item(row) for row in batch],
                n=config["n_refinements"],
                config=refine_config,
            )
            services.refinements_record(
                round=round,
                refinements=[
                    services.RefinementIn(
                        judgment_id=row.judgment_id, text=storable(r.text), sample_index=r.sample_index
                    )
                    for row, refined in zip(batch, results, strict=True)
                    for r in refined
                ],
            )
    count = Refinement.objects.filter(round=round).count()
    services.round_advance(round_id=round.pk, token=token, refinement_count=count)


def _feedback_item(row: selectors.FeedbackRow) -> FeedbackItem:
    return FeedbackItem(
        prompt=row.prompt,
        output=row.output,
        feedback=row.feedback,
        kind=row.kind,
        tests=row.tests,
        entry_point=row.entry_point,
    )


def _select(round: Round, token: str) -> None:
    if _scores_objective(round):
        services.round_advance(round_id=round.pk, token=token, selected_count=0)
        return
    config = round.config
    method = config["selector"]
    refinements = list(
        Refinement.objects.filter(round=round).order_by("judgment_id", "source", "sample_index")
    )
    by_judgment: dict[int, list[Refinement]] = {}
    for refinement in refinements:
        by_judgment.setdefault(refinement.judgment_id, []).append(refinement)
    rows = {row.judgment_id: row for row in selectors.feedback_rows(list(by_judgment))}
    scores: dict[int, dict] = {}
    selected: list[int] = []
    items, candidates = [], []
    for judgment_id, found in by_judgment.items():
        human = [r for r in found if r.source == Refinement.Source.HUMAN]
        if human:  # a rater's own fix is the refinement a person vouched for
            selected.append(human[0].pk)
            scores[human[0].pk] = {"human": 1.0}
        elif judgment_id in rows and (
            method != LoopConfig.Selector.UNIT_TESTS or rows[judgment_id].tests.strip()
        ):
            items.append(_feedback_item(rows[judgment_id]))
            candidates.append(found)
    if items:
        _heartbeat(round, token, {"stage": Round.State.SELECTING, "done": 0, "total": len(items)})
        backend = _backend(config["refiner_model"]) if method == LoopConfig.Selector.INSTRUCT_RM else None
        selections = select(
            method, items, [[r.text for r in c] for c in candidates], backend=backend, seed=round.number
        )
        for found, selection in zip(candidates, selections, strict=True):
            for refinement, score in zip(found, selection.scores, strict=True):
                scores[refinement.pk] = {method: score}
            if selection.index is not None:
                selected.append(found[selection.index].pk)
    count = services.refinements_select(round=round, scores=scores, selected_ids=selected)
    services.round_advance(round_id=round.pk, token=token, selected_count=count)


def _train(round: Round, token: str) -> None:
    config = round.config
    training = training_config_from(config.get("training", {}))
    weights, counts = None, {}
    if _scores_objective(round):
        scored = selectors.scored_rows(round)
        if not scored:
            raise NothingToTrain("nothing to train on: no Likert-scored output of a judgment that may train")
        threshold = config.get("score_threshold")
        prepared = prepare_training(
            config["objective"],
            [SFTExample(prompt=row.prompt, completion=row.completion) for row in scored],
            [row.score for row in scored],
            threshold=threshold,
            percentile=None if threshold is not None else config.get("score_percentile", 75.0),
            beta=config.get("rwr_beta", 1.0),
            seed=round.number,
        )
        if not prepared.examples:
            raise NothingToTrain("nothing to train on: no output scored above the threshold")
        examples, weights, counts = prepared.examples, prepared.weights, prepared.counts
        training = dataclasses.replace(training, added_tokens=prepared.added_tokens)
        refinement_ids, judgment_ids = [], [row.judgment_id for row in scored]
    else:
        rows = selectors.training_rows(round)
        if not rows:
            raise NothingToTrain("nothing to train on: no selected refinement of a judgment that may train")
        examples = [SFTExample(prompt=row.prompt, completion=row.completion) for row in rows]
        refinement_ids, judgment_ids = [row.refinement_id for row in rows], [row.judgment_id for row in rows]
    sha = dataset_sha256(examples)
    parent = selectors.active_adapter(round.project)
    init = (
        str(storage.artifact_fetch(parent.path))
        if parent is not None and config.get("data_mode") == LoopConfig.DataMode.CONTINUE
        else None
    )
    output_dir = round.adapter_dir()
    _forget_other_training_set(output_dir, sha)

    def on_step(step: int, total: int, loss: float) -> None:
        progress = {"stage": Round.State.TRAINING, "step": step, "total_steps": total, "loss": loss}
        _heartbeat(round, token, progress)

    _heartbeat(round, token, {"stage": Round.State.TRAINING, "step": 0, "total_steps": None, "loss": None})
    result = train_lora(
        model_path(config["base_model"]),
        examples,
        output_dir,
        training,
        progress=False,
        on_step=on_step,
        init_adapter=init,
        example_weights=weights,
    )
    metrics = dict(result.metrics)
    if _scores_objective(round):
        metrics["objective"] = {"name": config["objective"], **counts}
    # Workers on other machines (evaluation, generation, the next round) fetch it from there.
    storage.artifact_publish(result.adapter_dir)
    services.adapter_register(
        round=round,
        path=str(result.adapter_dir),
        checksum=result.checksum,
        training_metrics=metrics,
        dataset_sha256=sha,
        refinement_ids=refinement_ids,
        judgment_ids=judgment_ids,
        parent=parent,
    )
    services.round_advance(round_id=round.pk, token=token)


def _forget_other_training_set(output_dir: Path, sha: str) -> None:
    """A retried round whose training set changed meanwhile (a curator rejected a judgment) must not
    resume checkpoints of the old set: the engine would refuse them. Start that folder afresh."""
    marker = output_dir / DATASET_MARKER
    if output_dir.exists() and (not marker.exists() or marker.read_text().strip() != sha):
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(sha + "\n")


def _evaluate(round: Round, token: str) -> None:
    config = round.config
    adapter = Adapter.objects.select_related("parent").get(round=round)
    rows = selectors.held_out_rows(round.project)
    evaluation: dict = {
        "n_held_out": len(rows),
        "baseline": adapter.parent.path if adapter.parent else "base model",
    }
    if rows:
        _heartbeat(round, token, {"stage": Round.State.EVALUATING, "done": 0, "total": len(rows)})
        backend = _backend(config["base_model"], adapters=adapters_of(adapter))
        backend.set_adapter("new")
        evaluation["held_out_loss"] = held_out_loss(backend, _held_out(rows, adapter.path))
        backend.set_adapter("previous" if adapter.parent is not None else None)
        evaluation["baseline_held_out_loss"] = held_out_loss(
            backend, _held_out(rows, adapter.parent.path if adapter.parent else None)
        )
    code_rows = selectors.code_eval_rows(round.project)
    if code_rows:
        # pass@1 of greedy programs, for the record: the promotion rule reads the held-out loss.
        backend = _backend(config["base_model"], adapters=adapters_of(adapter))
        generation = dataclasses.replace(
            generation_config_from(config.get("generation", {})), temperature=0.0
        )
        evaluation["n_code_tasks"] = len(code_rows)
        backend.set_adapter("new")
        evaluation["pass@1"] = pass_at_1(backend, code_rows, generation)
        backend.set_adapter("previous" if adapter.parent is not None else None)
        evaluation["baseline_pass@1"] = pass_at_1(backend, code_rows, generation)
    mention_rows = selectors.mention_eval_rows(round.project)
    if mention_rows:
        # The share of held-out prompts whose greedy output mentions what it must: the task metric
        # of templated tasks (the demo's), checked mechanically. For the record, like pass@1.
        backend = _backend(config["base_model"], adapters=adapters_of(adapter))
        generation = dataclasses.replace(
            generation_config_from(config.get("generation", {})), temperature=0.0
        )
        prompts = [row.prompt for row in mention_rows]
        wanted = [row.must_include for row in mention_rows]
        evaluation["n_mention_checks"] = len(mention_rows)
        backend.set_adapter("new")
        evaluation["accuracy"] = mention_accuracy(backend, prompts, wanted, generation)
        backend.set_adapter("previous" if adapter.parent is not None else None)
        evaluation["baseline_accuracy"] = mention_accuracy(backend, prompts, wanted, generation)
    probe_flags, probe_details = [], {}
    probes = probe_files_from(config.get("probes") or {})
    if probes:
        # Each adapter against the model it would replace, on the same items with the same seed.
        _heartbeat(round, token, {"stage": Round.State.EVALUATING, "probes": list(probes)})
        backend = _backend(config["base_model"], adapters=adapters_of(adapter))
        options = probe_options_from(config.get("probes") or {})
        # Whether a biased chain of thought mentions its cue: asked of the project's instruction-
        # following model (the refiner's, as InstructRM selection asks it), or a keyword match.
        judged = options.get("biased_context", {}).get("cue_detector") == "judge"
        cue_judge = _backend(config["refiner_model"]) if judged else None
        backend.set_adapter("new")
        new = run_probes(backend, files=probes, families=list(probes), seed=round.number, cue_judge=cue_judge)
        backend.set_adapter("previous" if adapter.parent is not None else None)
        baseline = run_probes(
            backend, files=probes, families=list(probes), seed=round.number, cue_judge=cue_judge
        )
        evaluation["probes"] = new.metrics
        evaluation["baseline_probes"] = baseline.metrics
        probe_flags = probe_regressions(
            new.metrics, baseline.metrics, tolerance=float(config.get("probe_tolerance", 0.05))
        )
        probe_details = new.details
    services.adapter_promote(
        round_id=round.pk,
        token=token,
        evaluation=evaluation,
        probe_flags=probe_flags,
        probe_details=probe_details,
    )


def _conditional(adapter_path: str | None) -> bool:
    """Whether the model is a conditionally trained adapter: it is asked for `<|good|>` outputs."""
    return bool(adapter_path) and is_conditional_adapter(adapter_path)


def _held_out(rows: list[selectors.HeldOutRow], adapter_path: str | None) -> list[SFTExample]:
    """The held-out examples as the model generates: after `<|good|>` for a conditional adapter."""
    ask = conditional_prompt if _conditional(adapter_path) else str
    return [SFTExample(prompt=ask(row.prompt), completion=row.completion) for row in rows]


def adapters_of(adapter: Adapter) -> dict[str, str]:
    """The round's adapter as "new" and the model it is compared with as "previous" (None: the base).

    A conditionally trained adapter grows the vocabulary, which the backend can do only before any
    other adapter is loaded: such adapters come first."""
    adapters = {"new": adapter.path}
    if adapter.parent is not None:
        adapters["previous"] = adapter.parent.path
    return dict(sorted(adapters.items(), key=lambda item: not _conditional(item[1])))


def pass_at_1(backend, rows: list[selectors.CodeTaskRow], generation: GenerationConfig) -> float:
    """Share of code tasks whose one generated program passes its unit tests in the sandbox."""
    samples = backend.generate([row.prompt for row in rows], dataclasses.replace(generation, n=1))
    passed = []
    for row, texts in zip(rows, samples, strict=True):
        results = run_unit_tests_many(
            [row.prompt + text for text in texts], row.tests, entry_point=row.entry_point
        )
        passed.append([result.status == "pass" for result in results])
    return mean_pass_at_k(passed, 1)


def _generate(round: Round, token: str) -> None:
    config = round.config
    project = round.project
    if not round.generation_prompt_ids:
        ids = list(
            selectors.prompts_to_generate(round, limit=config["generation_batch"]).values_list(
                "pk", flat=True
            )
        )
        services.round_generation_prompts(round=round, prompt_ids=ids)
        round.refresh_from_db()
    prompts = list(Prompt.objects.filter(pk__in=round.generation_prompt_ids).order_by("id"))
    adapter = Adapter.objects.select_related("parent").get(round=round)
    pairwise = bool(config.get("pairwise_tasks")) and bool(questions_for(project.questions, "pairwise"))
    single = bool(questions_for(project.questions, "single"))
    generation = generation_config_from(config.get("generation", {}))
    provenance = {**dataclasses.asdict(generation), "adapter_id": adapter.pk, "round": round.number}

    def key(role: str, prompt: Prompt) -> str:
        return f"round-{round.number}:{role}:prompt-{prompt.pk}"

    # Outputs written by an earlier try of this step are not generated again.
    have = set(
        Output.objects.filter(prompt__in=prompts, round_number=round.number).values_list(
            "generation__key", flat=True
        )
    )
    roles = [("new", "new", adapter.path)]
    if pairwise:
        roles.append(
            (
                "previous",
                "previous" if adapter.parent else None,
                adapter.parent.path if adapter.parent else "",
            )
        )
    adapters = adapters_of(adapter)
    texts: dict[tuple[str, int], str] = {}
    backend = None
    for role, name, path in roles:
        missing = [p for p in prompts if key(role, p) not in have]
        if not missing:
            continue
        backend = backend or _backend(config["base_model"], adapters=adapters)
        backend.set_adapter(name)
        _heartbeat(round, token, {"stage": Round.State.GENERATING, "role": role, "total": len(missing)})
        ask, config_of_role = str, generation
        if _conditional(path):  # the good distribution, and never a control token in the output
            ask, config_of_role = conditional_prompt, conditional_generation_config(generation)
        outputs = backend.generate([ask(selectors.training_prompt_of(p)) for p in missing], config_of_role)
        for prompt, samples in zip(missing, outputs, strict=True):
            texts[(role, prompt.pk)] = storable(samples[0]).strip() if samples else ""
    existing = dict(
        Output.objects.filter(prompt__in=prompts, round_number=round.number).values_list(
            "generation__key", "text"
        )
    )

    def output(role: str, adapter_path: str, prompt: Prompt) -> NewOutput:
        return NewOutput(
            text=texts.get((role, prompt.pk), existing.get(key(role, prompt), "")),
            key=key(role, prompt),
            model_name=config["base_model"],
            adapter=adapter_path,
            round_number=round.number,
            generation={**provenance, "role": role, "conditional": _conditional(adapter_path)},
        )

    single_tasks, pair_tasks = [], []
    for prompt in prompts:
        new = output("new", adapter.path, prompt)
        if not new.text:
            continue  # an empty output gives a rater nothing to judge
        if single:
            single_tasks.append(NewTask(prompt_id=prompt.pk, outputs=(new,), round_number=round.number))
        if pairwise:
            old = output("previous", adapter.parent.path if adapter.parent else "", prompt)
            if old.text and old.text != new.text:
                pair_tasks.append(NewTask(prompt_id=prompt.pk, outputs=(new, old), round_number=round.number))
    services.round_outputs_enqueue(round_id=round.pk, token=token, single=single_tasks, pairwise=pair_tasks)


def demo_prompts(*, n_train: int, n_eval: int, seed: int = 0) -> list[dict]:
    """The demo's templated sentence task (engine.demo_task) as prompt rows to create."""
    return [
        {
            "external_id": p.external_id,
            "text": p.text,
            "split": p.split,
            "gold": p.reference,
            "data": {"must_include": list(p.must_include)},
        }
        for p in sentence_task(n_train=n_train, n_eval=n_eval, seed=seed)
    ]


def first_outputs(project_id: int, *, limit: int) -> int:
    """Outputs of the project's active model (its base model before any round) for up to `limit`
    train prompts that have none yet, as single rating tasks; returns how many tasks it made. A
    new project's raters get work before the first round; calling it again writes nothing twice."""
    project = Project.objects.get(pk=project_id)
    config = selectors.loop_config_of(project).snapshot()
    prompts = list(selectors.prompts_without_outputs(project, limit=limit))
    if not prompts:
        return 0
    active = selectors.active_adapter(project)
    backend = _backend(config["base_model"], adapters={"active": active.path} if active else None)
    backend.set_adapter("active" if active else None)
    generation = generation_config_from(config.get("generation", {}))
    samples = backend.generate([selectors.training_prompt_of(p) for p in prompts], generation)
    settings = {**dataclasses.asdict(generation), "adapter_id": active.pk if active else None}
    items = [
        NewTask(
            prompt_id=prompt.pk,
            outputs=(
                NewOutput(
                    text=storable(texts[0]).strip(),
                    key=f"first:prompt-{prompt.pk}",
                    model_name=config["base_model"],
                    adapter=active.path if active else "",
                    generation={**settings, "role": "first"},
                ),
            ),
        )
        for prompt, texts in zip(prompts, samples, strict=True)
        if texts and storable(texts[0]).strip()
    ]
    if not items:
        return 0
    return outputs_enqueue(project=project, items=items, task_kind="single").tasks_created


# ---------------------------------------------------------------- the tasks


@shared_task(name="feedback_loop.first_outputs", queue="gpu")
def first_outputs_task(project_id: int, limit: int = 32) -> int:
    return first_outputs(project_id, limit=limit)


@shared_task(name="feedback_loop.take_feedback", queue="default")
def round_take_feedback_task(round_id: int) -> None:
    _run_step(round_id, Round.State.PENDING, _take_feedback)


@shared_task(name="feedback_loop.refine")
def round_refine_task(round_id: int) -> None:
    _run_step(round_id, Round.State.REFINING, _refine)


@shared_task(name="feedback_loop.select")
def round_select_task(round_id: int) -> None:
    _run_step(round_id, Round.State.SELECTING, _select)


@shared_task(name="feedback_loop.train")
def round_train_task(round_id: int) -> None:
    _run_step(round_id, Round.State.TRAINING, _train)


@shared_task(name="feedback_loop.evaluate")
def round_evaluate_task(round_id: int) -> None:
    _run_step(round_id, Round.State.EVALUATING, _evaluate)


@shared_task(name="feedback_loop.generate")
def round_generate_task(round_id: int) -> None:
    _run_step(round_id, Round.State.GENERATING, _generate)


STEP_TASKS = {
    Round.State.PENDING: round_take_feedback_task,
    Round.State.REFINING: round_refine_task,
    Round.State.SELECTING: round_select_task,
    Round.State.TRAINING: round_train_task,
    Round.State.EVALUATING: round_evaluate_task,
    Round.State.GENERATING: round_generate_task,
}


def step_queue(state: str) -> str:
    """The queue of the round's step `state`: the model queue for every step that loads a model."""
    return "default" if state == Round.State.PENDING else settings.REFINERY_MODEL_QUEUE


def enqueue_step(round_id: int, state: str, *, countdown: float | None = None) -> None:
    """Send the task that runs the round's step `state` (to the queue that step runs on)."""
    task = STEP_TASKS.get(state)
    if task is not None:
        task.apply_async((round_id,), countdown=countdown, queue=step_queue(state))


@shared_task(name="feedback_loop.sweep_rounds", queue="default")
def rounds_sweep_task() -> list[int]:
    """Periodic (celery beat): send again the step of every round whose message was lost."""
    return services.rounds_resend_stalled()


@shared_task(name="feedback_loop.auto_start_rounds", queue="default")
def rounds_auto_start_task() -> list[int]:
    """Periodic (celery beat): start a round for each project with enough new accepted feedback."""
    return [round.pk for round in services.rounds_auto_start()]


def round_win_rate(round: Round) -> dict | None:
    """The raters' win rate of the round's new model over the previous one, from its comparison
    tasks: ties count ½, and the standard error and interval are over tasks (a task's raters are
    not independent of each other). None while no comparison has an outcome."""
    judgments = selectors.comparison_judgment_count(round)
    outcomes = selectors.comparison_outcomes(round)
    if not outcomes:
        return None
    result = win_rate_by_task(outcomes, seed=round.number)
    return {
        "win_rate": result.rate,
        # NaN (a single task) is not JSON: no standard error then.
        "win_rate_se": result.standard_error if result.standard_error == result.standard_error else None,
        "win_rate_low": result.low,
        "win_rate_high": result.high,
        "win_rate_n": result.n,
        "win_rate_n_tasks": result.n_tasks,
        "win_rate_judgments": judgments,
    }


@shared_task(name="feedback_loop.update_win_rates", queue="default")
def rounds_win_rate_task() -> list[int]:
    """Periodic (celery beat): recompute the win rate of every round with new comparison judgments."""
    updated = []
    for round in selectors.rounds_with_new_comparisons():
        win_rate = round_win_rate(round)
        if win_rate is not None:
            services.adapter_win_rate_record(adapter_id=round.adapter.pk, win_rate=win_rate)
            updated.append(round.pk)
    return updated
