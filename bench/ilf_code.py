"""ILF for code, end to end, on an MBPP-format file: the steps and the table of Chen et al. (2023).

    .venv/bin/python -m bench.ilf_code                       # the tiny model, on the CPU, a few minutes
    .venv/bin/python -m bench.ilf_code --model PATH --device cuda --n 30 --max-new-tokens 512

The file (default bench/data/ilf_code_tasks.jsonl) holds MBPP rows (`text`, `code`, `test_list`,
`test_setup_code`, `entry_point`) plus what raters gave: `completion` (a model's wrong program),
`feedback` on it, and `refinement` (a human's fix). The tasks are split three ways: refiner tasks
(their human refinements train π_Refine), ILF tasks (their feedback is refined by π_Refine) and
held-out tasks (pass@k only). Then:

1. zero-shot: pass@k of the base model on the held-out tasks;
2. π_Refine: a LoRA adapter trained on (task, OLD CODE, FEEDBACK) → human refinement;
3. refine: N refinements per ILF task's (completion, feedback), by π_Refine;
4. select: the first refinement that passes the task's unit tests in the sandbox;
5. ILF: π_θ fine-tuned (LoRA) on the selected refinements, as generation prompt → program;
6. baselines: π_θ fine-tuned on the reference programs of the same ILF tasks (the paper's "MBPP
   gold") and on their human refinements;
7. pass@1 and pass@k of each on the held-out tasks: n samples at temperature T, top-p 0.95,
   unbiased estimator, tasks whose tests do not load listed apart.

On the tiny model the numbers are near zero; the point is that every step runs and every number is
computed the paper's way. A step with nothing to work on (no refinement passed) says so in the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/ilf_code.py` works too

from feedback_loop.engine.code import (
    CodeTask,
    PassAtKResult,
    SamplingConfig,
    evaluate_pass_at_k,
    feedback_item,
    read_mbpp_jsonl,
    sft_example,
)

DATA = Path(__file__).resolve().parent / "data" / "ilf_code_tasks.jsonl"


@dataclass
class Report:
    rows: dict[str, PassAtKResult | str] = field(default_factory=dict)  # setting -> result, or why none
    steps: dict[str, object] = field(default_factory=dict)  # what each step did (counts, seconds)

    def table(self, ks: tuple[int, ...]) -> str:
        header = f"{'setting':<28}" + "".join(f"{'pass@' + str(k):>10}" for k in ks) + "   tasks  tests_error"
        lines = [header, "-" * len(header)]
        for name, result in self.rows.items():
            if isinstance(result, str):
                lines.append(f"{name:<28}{result}")
                continue
            cells = "".join(
                f"{100 * result.pass_at[k]:>9.1f}%" if k in result.pass_at else f"{'-':>10}" for k in ks
            )
            lines.append(f"{name:<28}{cells}   {len(result.per_task):>5}  {len(result.tests_error):>11}")
        return "\n".join(lines)


def split_tasks(tasks: list[CodeTask], *, refiner: int, ilf: int) -> tuple[list, list, list]:
    """The first `refiner` tasks train π_Refine, the next `ilf` are refined, the rest are held out."""
    if refiner + ilf >= len(tasks):
        raise SystemExit(
            f"{len(tasks)} tasks leave none held out with --refiner-tasks {refiner} --ilf-tasks {ilf}"
        )
    return tasks[:refiner], tasks[refiner : refiner + ilf], tasks[refiner + ilf :]


def run(args: argparse.Namespace) -> Report:
    from feedback_loop.engine.backends.hf import HFBackend
    from feedback_loop.engine.refine import RefineConfig, refine
    from feedback_loop.engine.refiner import train_refiner
    from feedback_loop.engine.select import select
    from feedback_loop.engine.train import LoRATrainingConfig, train_lora

    report = Report()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ilf-code-"))
    model = args.model
    if model is None:
        from feedback_loop.engine.tiny import build_tiny_model

        model = str(build_tiny_model(work / "tiny", seed=args.seed, pretrain_steps=args.pretrain_steps))
    tasks = read_mbpp_jsonl(args.data)[: args.max_tasks]
    refiner_tasks, ilf_tasks, held_out = split_tasks(tasks, refiner=args.refiner_tasks, ilf=args.ilf_tasks)
    report.steps["tasks"] = {"refiner": len(refiner_tasks), "ilf": len(ilf_tasks), "held_out": len(held_out)}
    ks = tuple(args.k)
    sampling = SamplingConfig(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    lora = LoRATrainingConfig(
        rank=args.rank,
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        epochs=1000,  # max_steps decides
        batch_size=args.train_batch_size,
        max_length=args.max_length,
        seed=args.seed,
    )

    def evaluate(name: str, adapter: Path | None) -> None:
        started = time.monotonic()
        backend = HFBackend(model, adapter=adapter, device=args.device, batch_size=args.batch_size)
        report.rows[name] = evaluate_pass_at_k(backend, held_out, ks, sampling)
        report.steps[f"eval {name} s"] = round(time.monotonic() - started, 1)

    # 1. zero-shot
    evaluate("zero-shot", None)

    # 2. π_Refine on the refiner tasks' human refinements
    started = time.monotonic()
    rows = [
        {
            **task.as_row(),
            "output": task.extra["completion"],
            "feedback": task.extra["feedback"],
            "refinement": task.extra["refinement"],
            "kind": "code",
        }
        for task in refiner_tasks
    ]
    refiner = train_refiner(model, rows, work / "refiner", lora, progress=False)
    report.steps["pi_refine"] = {
        "examples": len(rows),
        "final_loss": (refiner.metrics["train_loss"] or [None])[-1],
        "s": round(time.monotonic() - started, 1),
    }

    # 3. refine the ILF tasks' feedback with π_Refine; 4. keep the first refinement that passes
    started = time.monotonic()
    items = [feedback_item(t, t.extra["completion"], t.extra["feedback"]) for t in ilf_tasks]
    refiner_backend = HFBackend(
        model, adapter=refiner.adapter_dir, device=args.device, batch_size=args.batch_size
    )
    config = RefineConfig(
        code_max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    candidates = refine(refiner_backend, items, n=args.refine_n, config=config)
    selections = select("unit_tests", items, candidates)
    chosen = [
        (task, cands[s.index].text)
        for task, cands, s in zip(ilf_tasks, candidates, selections, strict=True)
        if s.index is not None
    ]
    report.steps["refine+select"] = {
        "feedback": len(items),
        "refinements": sum(len(c) for c in candidates),
        "passing_tasks": len(chosen),
        "s": round(time.monotonic() - started, 1),
    }

    # 5./6. fine-tune π_θ on the gold programs, on the human refinements and on the selected
    # refinements (ILF), all of the same ILF tasks, then evaluate each on the held-out tasks
    settings = [
        ("gold", "fine-tuned on gold", [sft_example(t, t.reference) for t in ilf_tasks if t.reference]),
        ("human", "fine-tuned on human fixes", [sft_example(t, t.extra["refinement"]) for t in ilf_tasks]),
        ("ilf", "ILF (π_Refine + unit tests)", [sft_example(t, program) for t, program in chosen]),
    ]
    policy = None  # the last model fine-tuned, for best-of-N
    for slug, name, examples in settings:
        if not examples:
            report.rows[name] = "not trained: no refinement passed its tests"
            continue
        started = time.monotonic()
        result = train_lora(model, examples, work / slug, lora, progress=False)
        report.steps[f"train {slug}"] = {
            "examples": len(examples),
            "final_loss": result.metrics["train_loss"][-1],
            "s": round(time.monotonic() - started, 1),
        }
        evaluate(name, result.adapter_dir)
        policy = result.adapter_dir
    if args.best_of > 0:
        best_of_n_row(args, report, model, policy, refiner_tasks, held_out, lora, work)
    return report


def best_of_n_row(args, report, model, policy, refiner_tasks, held_out, lora, work) -> None:
    """The paper's ILF + best-of-N: the last fine-tuned model's N samples per held-out task, the one a
    reward model (trained on human fix ≻ original program, from the refiner tasks) ranks highest kept;
    pass@1 is the share of tasks whose kept program passes."""
    from feedback_loop.engine.backends.hf import HFBackend
    from feedback_loop.engine.code import CODE_STOP, TaskCount, generation_prompt, program_from_completion
    from feedback_loop.engine.reward_model import Comparison, best_of_n, train_reward_model
    from feedback_loop.engine.sandbox import run_unit_tests
    from feedback_loop.engine.types import GenerationConfig

    started = time.monotonic()
    comparisons = [
        Comparison(generation_prompt(t), t.extra["refinement"], t.extra["completion"]) for t in refiner_tasks
    ]
    trained = train_reward_model(model, comparisons, work / "reward", lora, progress=False)
    reward = HFBackend(model, adapter=trained.adapter_dir, device=args.device, batch_size=args.batch_size)
    sampler = HFBackend(model, adapter=policy, device=args.device, batch_size=args.batch_size)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        n=args.best_of,
        seed=args.seed,
        stop=CODE_STOP,
    )
    counts = []
    for task in held_out:
        [pick] = best_of_n(
            sampler,
            reward,
            [generation_prompt(task)],
            config,
            transform=lambda text, task=task: program_from_completion(task, text),
        )
        result = run_unit_tests(pick.text, task.test, entry_point=task.entry_point_of())
        counts.append(TaskCount(task.task_id, 1, int(result.status == "pass"), {result.status: 1}))
    scored = [c for c in counts if "tests_error" not in c.statuses]
    broken = tuple(c.task_id for c in counts if "tests_error" in c.statuses)
    rate = sum(c.c for c in scored) / len(scored) if scored else float("nan")
    name = f"last model + best-of-{args.best_of} (RM)"
    report.rows[name] = PassAtKResult({1: rate}, tuple(scored), broken, SamplingConfig(n=args.best_of))
    report.steps["best-of-n s"] = round(time.monotonic() - started, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="base model folder (default: build the tiny model)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--work-dir", help="where adapters go (default: a temporary folder)")
    parser.add_argument("--device")
    parser.add_argument("--max-tasks", type=int, default=None, help="use only the first tasks of the file")
    parser.add_argument("--refiner-tasks", type=int, default=16)
    parser.add_argument("--ilf-tasks", type=int, default=16)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--n", type=int, default=10, help="samples per task for pass@k (the paper: 30)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="the paper: 512 (the tiny model has 512 positions)"
    )
    parser.add_argument("--refine-n", type=int, default=10, help="refinements per feedback (the paper: 30)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each LoRA training")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    parser.add_argument("--pretrain-steps", type=int, default=150, help="tiny model only")
    parser.add_argument(
        "--best-of",
        type=int,
        default=0,
        help="also rank N samples of the last model by a reward model (paper: 64)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the table's numbers and the steps to this file")
    return parser


def main(argv: list[str] | None = None) -> Report:
    args = build_parser().parse_args(argv)
    report = run(args)
    print(report.table(tuple(args.k)))
    print(json.dumps(report.steps, indent=2))
    if args.json:
        rows = {
            name: r
            if isinstance(r, str)
            else {
                "pass_at": {str(k): v for k, v in r.pass_at.items()},
                "per_task": [vars(t) for t in r.per_task],
                "tests_error": list(r.tests_error),
            }
            for name, r in report.rows.items()
        }
        Path(args.json).write_text(json.dumps({"rows": rows, "steps": report.steps}, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
