"""Every step of the ILF loop from the command line, on JSON-lines files, without the platform.

    python -m feedback_loop.engine tiny models/tiny --pretrain-steps 300
    python -m feedback_loop.engine generate --model models/tiny --input prompts.jsonl --output outputs.jsonl
    python -m feedback_loop.engine refine   --model models/tiny --input feedback.jsonl --output refinements.jsonl
    python -m feedback_loop.engine select   --method instruct_rm --model models/tiny \\
        --input refinements.jsonl --output selected.jsonl --sft-output train.jsonl
    python -m feedback_loop.engine train    --model models/tiny --train train.jsonl --output-dir adapters/r1
    python -m feedback_loop.engine evaluate --model models/tiny --adapter adapters/r1/adapter \\
        --held-out eval.jsonl --probes

Rows keep every field they came with; each step adds its own:
- generate: reads `prompt`, adds `outputs` (a list of n texts);
- refine: reads `prompt`, `output`, `feedback` (and `kind`, `tests`, `entry_point`), adds
  `refinements` (a list of {"text", "source", "sample_index"});
- select: reads the same plus `refinements` (texts or such dicts), adds `selected` (text or null),
  `selected_index` and `scores`; `--sft-output` also writes {"prompt", "completion"} per selection.
A model is a local folder (`--model`, optionally `--adapter`), or a model served by an
OpenAI-compatible server (`--base-url` with `--model` naming it; the key comes from OPENAI_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from feedback_loop.engine import jsonl
from feedback_loop.engine.train import TRAIN_DESCRIPTION, add_training_arguments, run_training
from feedback_loop.engine.types import FeedbackItem, GenerationConfig, ModelBackend, Refinement

# -- files ------------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; the error names the file and line."""
    try:
        return jsonl.read_jsonl(path)
    except jsonl.JSONLError as error:
        raise SystemExit(str(error)) from error


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write to a temporary file and rename it: a crash never leaves half a file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk, or a row that failed: no half file either
        raise


def _require(rows: Sequence[dict[str, Any]], fields: Sequence[str], path: str) -> None:
    for number, row in enumerate(rows, start=1):
        missing = [f for f in fields if not isinstance(row.get(f), str)]
        if missing:
            raise SystemExit(f"{path}: row {number} lacks string field(s) {missing}")


def feedback_item(row: dict[str, Any]) -> FeedbackItem:
    """A row as a FeedbackItem: `prompt`/`output`/`feedback` (and `kind`, `tests`, `entry_point`), or a
    code task in the MBPP/HumanEval shape (`text`, `test` or `test_list`) with `output` and `feedback`."""
    from feedback_loop.engine.refiner import refiner_item

    return refiner_item(row)


def _is_code_task_row(row: dict[str, Any]) -> bool:
    return isinstance(row.get("text"), str) and ("test" in row or "test_list" in row)


def _require_feedback_rows(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Every row has `output` and `feedback`, and a task: `prompt`, or a code task's `text` and tests."""
    _require(rows, ["output", "feedback"], path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) and not _is_code_task_row(row):
            raise SystemExit(f"{path}: row {number} lacks string field(s) ['prompt']")


def _sft_pair(row: dict[str, Any], item: FeedbackItem, chosen: str) -> dict[str, str]:
    """The training pair a selection makes; for code, generation prompt → the completion of the
    program (feedback_loop.engine.code), the shape evaluation samples in."""
    if item.kind != "code":
        return {"prompt": row["prompt"], "completion": chosen}
    from feedback_loop.engine.code import CodeTask, code_task, sft_example

    if _is_code_task_row(row):
        task = code_task({k: v for k, v in row.items() if k not in ("output", "feedback", "refinements")})
    else:
        task = CodeTask(task_id="", text=item.prompt, test=item.tests or "pass", entry_point=item.entry_point)
    example = sft_example(task, chosen)
    return {"prompt": example.prompt, "completion": example.completion}


def _refinement(value: str | dict[str, Any]) -> Refinement:
    if isinstance(value, str):
        return Refinement(text=value)
    return Refinement(
        text=value["text"], source=value.get("source", "model"), sample_index=value.get("sample_index", 0)
    )


# -- backends ---------------------------------------------------------------------------------------


def _add_backend_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", required=required, help="local model folder or HF id; with --base-url, the served name"
    )
    group.add_argument("--adapter", help="LoRA adapter folder to apply to a local model")
    group.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    group.add_argument("--device", help="cuda, cpu, cuda:1 ... (default: cuda when available)")
    group.add_argument("--dtype", help="bfloat16, float16, float32 (default: bf16 on a GPU, fp32 on the CPU)")
    group.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass or request")


def _backend(args: argparse.Namespace) -> ModelBackend:
    from feedback_loop.engine.backends import load_backend

    if args.base_url:
        if args.adapter:
            raise SystemExit("--adapter applies to local models; a server loads its adapters itself")
        return load_backend(
            {
                "kind": "openai",
                "base_url": args.base_url,
                "model": args.model,
                "api_key": os.environ.get("OPENAI_API_KEY"),
                "batch_size": args.batch_size,
                # Answer tokens' ids from vLLM's /tokenize, for logit_bias on yes/no questions.
                "token_ids": "server",
            }
        )
    return load_backend(
        {
            "kind": "hf",
            "model": args.model,
            "adapter": args.adapter,
            "device": args.device,
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "progress": True,
        }
    )


def _add_sampling_arguments(
    parser: argparse.ArgumentParser, *, n: int, temperature: float, max_new_tokens: int
):
    group = parser.add_argument_group("sampling")
    group.add_argument("--n", type=int, default=n, help="samples per prompt")
    group.add_argument("--temperature", type=float, default=temperature, help="0 means greedy")
    group.add_argument("--top-p", type=float, default=1.0 if temperature == 0 else 0.95)
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--seed", type=int, default=0)


# -- subcommands ------------------------------------------------------------------------------------


def cmd_tiny(args: argparse.Namespace) -> None:
    from feedback_loop.engine.tiny import build_tiny_model

    path = build_tiny_model(args.path, seed=args.seed, pretrain_steps=args.pretrain_steps)
    print(path)


def _generation_config(args: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        n=args.n,
        seed=args.seed,
        stop=tuple(args.stop),
    )


def cmd_generate(args: argparse.Namespace) -> None:
    rows = read_jsonl(args.input)
    _require(rows, ["prompt"], args.input)
    config = _generation_config(args)
    outputs = _backend(args).generate([row["prompt"] for row in rows], config)
    write_jsonl(args.output, ({**row, "outputs": texts} for row, texts in zip(rows, outputs, strict=True)))


def cmd_refine(args: argparse.Namespace) -> None:
    from feedback_loop.engine.refine import RefineConfig, refine

    rows = read_jsonl(args.input)
    _require_feedback_rows(rows, args.input)
    items = [feedback_item(row) for row in rows]
    all_code = all(item.kind == "code" for item in items)
    n = args.n if args.n is not None else _default_refinements(all_code)
    config = RefineConfig(
        max_new_tokens=args.max_new_tokens or 128,
        code_max_new_tokens=args.max_new_tokens or 512,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.refiner:
        if args.adapter:
            raise SystemExit("give --refiner or --adapter, not both")
        args.adapter = args.refiner
    results = refine(_backend(args), items, n=n, config=config)
    write_jsonl(
        args.output,
        (
            {**row, "refinements": [vars(r) for r in refinements]}
            for row, refinements in zip(rows, results, strict=True)
        ),
    )


def cmd_select(args: argparse.Namespace) -> None:
    from feedback_loop.engine.select import select

    rows = read_jsonl(args.input)
    _require_feedback_rows(rows, args.input)
    items = [feedback_item(row) for row in rows]
    candidates = [[_refinement(r) for r in row.get("refinements", [])] for row in rows]
    backend = None
    if args.method in ("instruct_rm", "reward_model"):
        if not args.model:
            raise SystemExit(f"--method {args.method} needs --model")
        backend = _backend(args)
    limits = None
    if args.method == "unit_tests":
        from feedback_loop.engine.sandbox import SandboxLimits

        limits = SandboxLimits(timeout_s=args.timeout_s)
    selections = select(args.method, items, candidates, backend=backend, limits=limits, seed=args.seed)
    out, sft = [], []
    for row, item, cands, selection in zip(rows, items, candidates, selections, strict=True):
        chosen = cands[selection.index].text if selection.index is not None else None
        out.append(
            {
                **row,
                "selected": chosen,
                "selected_index": selection.index,
                "scores": selection.scores,
                "selection_method": selection.method,
                **({"tests_error": True} if selection.tests_error else {}),
            }
        )
        if chosen is not None:
            sft.append(_sft_pair(row, item, chosen))
    write_jsonl(args.output, out)
    if args.sft_output:
        write_jsonl(args.sft_output, sft)
    print(f"selected {len(sft)} of {len(rows)} by {args.method}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from feedback_loop.engine import evaluate

    metrics: dict[str, Any] = {}
    if args.win_outcomes:
        outcomes = []
        rows = read_jsonl(args.win_outcomes)
        for number, row in enumerate(rows, start=1):
            outcome = row.get("outcome")
            if isinstance(outcome, bool) or outcome not in (0, 0.5, 1):
                raise SystemExit(f"{args.win_outcomes}: row {number} needs an outcome of 1, 0.5 or 0")
            outcomes.append(float(outcome))
        if rows and all("task_id" in row for row in rows):
            # Several raters per task: the interval resamples tasks, not single judgments.
            by_task = evaluate.win_rate_by_task(
                [(row["task_id"], o) for row, o in zip(rows, outcomes, strict=True)]
            )
            metrics["win_rate_se"] = by_task.standard_error
            metrics["win_rate_tasks"] = by_task.n_tasks
        result = evaluate.win_rate(outcomes)
        metrics.update(
            {
                "win_rate": result.rate,
                "win_rate_low": by_task.low if "win_rate_tasks" in metrics else result.low,
                "win_rate_high": by_task.high if "win_rate_tasks" in metrics else result.high,
                "win_rate_n": result.n,
            }
        )
    if args.held_out or args.multiple_choice or args.probes or args.code:
        if not args.model:
            raise SystemExit("evaluating a model needs --model")
        backend = _backend(args)
        if args.held_out:
            from feedback_loop.engine.types import SFTExample

            rows = read_jsonl(args.held_out)
            _require(rows, ["prompt", "completion"], args.held_out)
            examples = [SFTExample(row["prompt"], row["completion"]) for row in rows]
            metrics["held_out_loss"] = evaluate.held_out_loss(backend, examples)
        if args.multiple_choice:
            from feedback_loop.engine.inverse_scaling import load_task

            task = load_task(args.multiple_choice, kind="classification")
            items = [evaluate.MultipleChoiceItem(i.prompt, i.classes, i.answer_index) for i in task.items]
            result = evaluate.multiple_choice(backend, items)
            metrics.update({"multiple_choice/accuracy": result.accuracy, "multiple_choice/loss": result.loss})
        if args.code:
            metrics.update(_code_metrics(backend, args))
        if args.probes:
            from feedback_loop.engine.probes import run_probes

            metrics.update(run_probes(backend).metrics)
    if not metrics:
        raise SystemExit(
            "nothing to evaluate: give --held-out, --multiple-choice, --code, --probes or --win-outcomes"
        )
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)


def _code_metrics(backend: ModelBackend, args: argparse.Namespace) -> dict[str, Any]:
    """pass@k on code tasks (feedback_loop.engine.code): n samples per task, each program cut at the
    end of its function and run against the task's tests in the sandbox. Refused where pass@k would
    be wrong (k > n, or n > 1 greedy samples); tasks whose tests do not load are listed, not scored."""
    from feedback_loop.engine.code import SamplingConfig, code_task, evaluate_pass_at_k
    from feedback_loop.engine.sandbox import SandboxLimits

    tasks = [code_task(row) for row in read_jsonl(args.code)]
    config = SamplingConfig(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    result = evaluate_pass_at_k(
        backend, tasks, args.k, config, limits=SandboxLimits(timeout_s=args.timeout_s)
    )
    metrics: dict[str, Any] = {f"pass@{k}": value for k, value in result.pass_at.items()}
    metrics["code/per_task"] = [{"task_id": t.task_id, "n": t.n, "c": t.c} for t in result.per_task]
    metrics["code/tests_error"] = list(result.tests_error)
    return metrics


# -- π_Refine: a refiner trained on human refinements -----------------------------------------------


def _default_refinements(all_code: bool) -> int:
    from feedback_loop.engine.refiner import CODE_REFINEMENTS_N

    return CODE_REFINEMENTS_N if all_code else 5


def cmd_train_refiner(args: argparse.Namespace) -> None:
    from feedback_loop.engine.refiner import train_refiner
    from feedback_loop.engine.train import LoRATrainingConfig

    config = LoRATrainingConfig(
        rank=args.rank,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        max_steps=args.max_steps,
        max_length=args.max_length,
        seed=args.seed,
    )
    result = train_refiner(
        args.model,
        read_jsonl(args.train),
        args.output_dir,
        config,
        eval_rows=read_jsonl(args.eval) if args.eval else (),
        progress=not args.no_progress,
    )
    summary = {k: v for k, v in result.metrics.items() if k != "train_loss"}
    print(
        json.dumps({"adapter_dir": str(result.adapter_dir), "checksum": result.checksum, **summary}, indent=2)
    )


def _add_refiner_commands(commands) -> None:
    parser = commands.add_parser(
        "train-refiner",
        help="train π_Refine: (task, OLD CODE, FEEDBACK) → the human refinement, as a LoRA adapter",
    )
    parser.add_argument("--model", required=True, help="base model folder")
    parser.add_argument(
        "--train",
        required=True,
        help="JSONL of {output, feedback, refinement} + the task (code shape or prompt)",
    )
    parser.add_argument("--eval", help="held-out rows, same format")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=cmd_train_refiner)


# -- the parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m feedback_loop.engine", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny", help="build the tiny local model for tests and the demo")
    tiny.add_argument("path")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--pretrain-steps", type=int, default=300)
    tiny.set_defaults(run=cmd_tiny)

    generate = commands.add_parser("generate", help="outputs for prompts")
    generate.add_argument("--input", required=True)
    generate.add_argument("--output", required=True)
    generate.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    _add_backend_arguments(generate)
    _add_sampling_arguments(generate, n=1, temperature=0.0, max_new_tokens=64)
    generate.set_defaults(run=cmd_generate)

    refine = commands.add_parser("refine", help="N refinements per (prompt, output, feedback)")
    refine.add_argument("--input", required=True)
    refine.add_argument("--output", required=True)
    refine.add_argument("--refiner", help="a trained refiner's adapter (see train-refiner) to refine with")
    _add_backend_arguments(refine)
    # None: N=30 and 512 tokens when every row is code (ILF for code), else N=5 and 128 tokens.
    _add_sampling_arguments(refine, n=None, temperature=0.8, max_new_tokens=None)
    refine.set_defaults(run=cmd_refine)
    _add_refiner_commands(commands)

    select = commands.add_parser("select", help="one refinement per feedback")
    select.add_argument(
        "--method", required=True, choices=["instruct_rm", "unit_tests", "reward_model", "random", "first"]
    )
    select.add_argument("--input", required=True)
    select.add_argument("--output", required=True)
    select.add_argument("--sft-output", help="also write the selections as {prompt, completion} for `train`")
    select.add_argument("--seed", type=int, default=0, help="for --method random")
    select.add_argument("--timeout-s", type=float, default=5.0, help="sandbox time limit per candidate")
    _add_backend_arguments(select, required=False)
    select.set_defaults(run=cmd_select)

    train = commands.add_parser("train", help="fine-tune a LoRA adapter", description=TRAIN_DESCRIPTION)
    add_training_arguments(train)
    train.set_defaults(run=run_training)

    evaluate = commands.add_parser(
        "evaluate", help="held-out loss, multiple choice, pass@k, probes, win rate"
    )
    evaluate.add_argument("--held-out", help="JSONL of {prompt, completion}: mean NLL per completion token")
    evaluate.add_argument("--multiple-choice", help="JSONL of {prompt, classes, answer_index}")
    evaluate.add_argument(
        "--code", help="JSONL of code tasks (MBPP, HumanEval or {text, prompt?, test, entry_point?}): pass@k"
    )
    evaluate.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k for these k (k <= n)")
    evaluate.add_argument(
        "--probes", action="store_true", help="the regression probes on their built-in items"
    )
    evaluate.add_argument(
        "--win-outcomes",
        help="JSONL of {outcome: 1|0.5|0, task_id?} from rater comparisons (with task_id: resampled by task)",
    )
    evaluate.add_argument("--stop", action="append", default=[], help="stop string for --code samples")
    evaluate.add_argument("--timeout-s", type=float, default=5.0, help="sandbox time limit per sample")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    _add_backend_arguments(evaluate, required=False)
    _add_sampling_arguments(evaluate, n=1, temperature=0.0, max_new_tokens=128)
    evaluate.set_defaults(run=cmd_evaluate)
    _add_research_commands(commands)
    return parser


# -- research probes: inverse-scaling sweeps and probe files ---------------------------------------------


def _sweep_models(args: argparse.Namespace):
    """(name, parameter count, backend) for each --models entry, loaded one at a time."""
    import gc

    from feedback_loop.engine.backends import load_backend
    from feedback_loop.engine.inverse_scaling import parameter_count

    if args.params and len(args.params) != len(args.models):
        raise SystemExit("sweep: give one --params value per model")
    for i, spec in enumerate(args.models):
        if args.base_url:
            options = {"kind": "openai", "base_url": args.base_url, "model": spec}
            options["api_key"] = os.environ.get("OPENAI_API_KEY")
        else:
            model, _, adapter = spec.partition("::")
            options = {"kind": "hf", "model": model, "adapter": adapter or None, "device": args.device}
            options["dtype"] = args.dtype
        backend = load_backend({**options, "batch_size": args.batch_size})
        count = args.params[i] if args.params else parameter_count(backend)
        if count is None:
            raise SystemExit(f"sweep: the parameter count of {spec} is unknown; pass --params")
        yield spec, count, backend
        del backend
        gc.collect()


def cmd_sweep(args: argparse.Namespace) -> None:
    from feedback_loop.engine.inverse_scaling import load_task, plot_sweep, sweep

    task = load_task(args.task)
    result = sweep(task, _sweep_models(args), seed=args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{task.name}.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    plot_sweep(result, output / f"{task.name}.png")
    summary = {k: v for k, v in result.to_dict().items() if k != "points"}
    print(json.dumps(summary | {"output": str(output)}, indent=2))


def cmd_probes(args: argparse.Namespace) -> None:
    from feedback_loop.engine.probes import run_probes

    files: dict[str, list[str]] = {}
    for spec in args.files or ():
        family, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"probes: --files takes FAMILY=PATH, got {spec!r}")
        files.setdefault(family, []).append(path)
    results = run_probes(
        _backend(args),
        files=files,
        families=args.families,
        chain_of_thought=not args.no_chain_of_thought,
        max_reasoning_tokens=args.max_reasoning_tokens,
        cue_judge=_backend(argparse.Namespace(**{**vars(args), "model": args.cue_judge, "adapter": None}))
        if args.cue_judge
        else None,
    )
    text = json.dumps(results.to_dict(), indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)


def _add_research_commands(commands) -> None:
    sweep = commands.add_parser(
        "sweep", help="an inverse-scaling task over models of several sizes: loss against parameters"
    )
    sweep.add_argument("--task", required=True, help="Inverse Scaling Prize task file (.csv or .jsonl)")
    sweep.add_argument(
        "--models", nargs="+", required=True, help="model folders or names; BASE::ADAPTER for an adapter"
    )
    sweep.add_argument("--params", nargs="+", type=int, help="parameter counts (default: counted)")
    sweep.add_argument("--output", required=True, help="folder for TASK.json and TASK.png")
    sweep.add_argument("--seed", type=int, default=0, help="seed of the bootstrap interval")
    sweep.add_argument("--base-url", help="OpenAI-compatible server serving the --models by name")
    sweep.add_argument("--device")
    sweep.add_argument("--dtype")
    sweep.add_argument("--batch-size", type=int, default=8)
    sweep.set_defaults(run=cmd_sweep)

    probes = commands.add_parser("probes", help="regression probes (probe files, or the built-in examples)")
    probes.add_argument("--files", nargs="+", help="FAMILY=PATH probe files (README, 'Probe files')")
    probes.add_argument("--no-chain-of-thought", action="store_true", help="biased_context: score letters")
    probes.add_argument("--max-reasoning-tokens", type=int, default=512)
    probes.add_argument("--families", nargs="+", help="probe families to run (default: all)")
    probes.add_argument(
        "--cue-judge",
        help="biased_context: an instruction-following model that decides whether an explanation "
        "mentions its cue (same server or device; default: a keyword match)",
    )
    probes.add_argument("--output", help="also write the results to this JSON file")
    _add_backend_arguments(probes)
    probes.set_defaults(run=cmd_probes)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:  # the engine's word on bad input (an empty file, a bad value)
        raise SystemExit(f"{argv[0]}: {error}") from error
