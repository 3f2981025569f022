"""ILF for code, end to end, on an MBPP-format file: the steps and the table of Chen et al. (2023).

    .venv/bin/python -m bench.ilf_code                       # the tiny model, on the CPU, minutes
    .venv/bin/python -m bench.ilf_code --quick               # fewer samples and steps
    .venv/bin/python -m bench.ilf_code --model PATH --device cuda --n 30 --max-new-tokens 512

The file (default bench/data/ilf_code_tasks.jsonl) holds MBPP rows (`text`, `code` = a reference
program written on its own, `test_list`, `test_setup_code`, `entry_point`) plus what raters gave:
`completion` (a model's wrong program), `feedback` on it, and `refinement` (a human's fix: the
smallest edit of the completion that the feedback asks for). The tasks are split three ways, in file
order and disjoint: refiner tasks (their human refinements train π_Refine), ILF tasks (their feedback
is refined by π_Refine) and held-out tasks (pass@k only; nothing of them is trained on). Then:

0. base model (without --model): the paper starts from a code model (CodeGen-Mono 6.1B); the tiny
   GPT-2 starts from random weights, so it is first pretrained on English and on a generated corpus
   of small Python functions and of edits of them (a wrong version, a review, the fix), from
   bench/ilf_code_corpus.py. That corpus defines none of the file's functions (checked), so it
   holds no solution of any task, held out or not;
1. zero-shot: pass@k of the base model on the held-out tasks;
2. π_Refine: a LoRA adapter trained on (task, OLD CODE, FEEDBACK) → human refinement, for
   --refiner-steps steps (the refine prompt is new to the base model: π_Refine learns it here);
3. refine: N refinements per ILF task's (completion, feedback), sampled from π_Refine;
4. select: the first refinement that passes the task's unit tests in the sandbox;
5. ILF: π_θ fine-tuned (LoRA) on the selected refinements, as generation prompt → program;
6. baselines: π_θ fine-tuned on the reference programs of the same ILF tasks (the paper's "MBPP
   gold") and on their human refinements;
7. pass@1 and pass@k of each on the held-out tasks: n samples at temperature T, top-p 0.95,
   unbiased estimator, tasks whose tests do not load listed apart.

The table gives each row's pass@k and, per held-out task, passing samples out of n; the steps say how
many refinements were sampled and how many tasks got one that passed. On the tiny model the numbers
are small; the point is that every step runs and every number is computed the paper's way. A
refinement is an edited copy of the old program, and the tiny GPT-2 (2 layers, 64 wide) does not
learn to copy within minutes of CPU pretraining (nor in 4000 steps), so its refinements rarely pass
and the ILF row then says "not trained": that row needs a base model that copies (--model, or a
larger --tiny-layers/--tiny-width with more --pretrain-steps). On a machine shared with other
work, OMP_NUM_THREADS=1 keeps torch from fighting for the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
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
        return "\n".join([*lines, "", *self.per_task()])

    def per_task(self) -> list[str]:
        """Passing samples out of n for every held-out task, one line per row of the table."""
        scored = [r for r in self.rows.values() if isinstance(r, PassAtKResult)]
        ids = list(dict.fromkeys(t.task_id for r in scored for t in r.per_task))
        if not ids:
            return []
        lines = [f"{'passing samples per task':<28}" + "".join(f"{i:>6}" for i in ids)]
        for name, result in self.rows.items():
            if isinstance(result, PassAtKResult):
                counts = {t.task_id: f"{t.c}/{t.n}" for t in result.per_task}
                lines.append(f"{name:<28}" + "".join(f"{counts.get(i, '-'):>6}" for i in ids))
        return lines


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
    tasks = read_mbpp_jsonl(args.data)[: args.max_tasks]
    model = args.model or base_model(args, report, work, tasks)
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
    refiner_lora = dataclasses.replace(
        lora, max_steps=args.refiner_steps, learning_rate=args.refiner_learning_rate
    )
    refiner = train_refiner(model, rows, work / "refiner", refiner_lora, progress=False)
    report.steps["pi_refine"] = {
        "examples": len(rows),
        "steps": args.refiner_steps,
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
        "passing_refinements": sum(r.status == "pass" for s in selections for r in s.details),
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


def base_model(args: argparse.Namespace, report: Report, work: Path, tasks: list[CodeTask]) -> str:
    """0. The base model: the tiny GPT-2, pretrained on English and on a generated code corpus that
    defines none of the fixture's functions (bench/ilf_code_corpus.py)."""
    from bench.ilf_code_corpus import check_disjoint, code_corpus
    from feedback_loop.engine.tiny import TinyModelConfig, build_tiny_model

    started = time.monotonic()
    names = [t.entry_point_of() or "" for t in tasks]
    corpus = code_corpus(args.code_documents, seed=args.seed, exclude=names)
    check_disjoint(corpus, names)
    config = TinyModelConfig(
        n_layer=args.tiny_layers,
        n_embd=args.tiny_width,
        n_head=args.tiny_heads,
        corpus_sentences=args.english_lines,
        block_size=args.pretrain_block,
        batch_size=args.pretrain_batch,
        learning_rate=args.pretrain_learning_rate,
    )
    path = build_tiny_model(
        work / "tiny", seed=args.seed, pretrain_steps=args.pretrain_steps, config=config, extra_corpus=corpus
    )
    report.steps["base model"] = {
        "code_documents": len(corpus),
        "pretrain_steps": args.pretrain_steps,
        "s": round(time.monotonic() - started, 1),
    }
    return str(path)


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


# --quick: every step still runs, on fewer samples and steps (options given explicitly win).
QUICK = {
    "refine_n": 5,
    "pretrain_steps": 300,
    "code_documents": 1000,
    "refiner_steps": 50,
    "steps": 20,
}


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
    parser.add_argument("--refiner-steps", type=int, default=150, help="optimizer steps of π_Refine")
    parser.add_argument("--refiner-learning-rate", type=float, default=5e-3)
    tiny = parser.add_argument_group("the tiny base model (without --model)")
    tiny.add_argument("--pretrain-steps", type=int, default=1000)
    tiny.add_argument("--code-documents", type=int, default=4000, help="generated programs and edits")
    tiny.add_argument("--pretrain-block", type=int, default=128, help="tokens per pretraining sequence")
    tiny.add_argument("--pretrain-batch", type=int, default=8, help="sequences per pretraining step")
    tiny.add_argument("--pretrain-learning-rate", type=float, default=3e-3)
    tiny.add_argument(
        "--english-lines", type=int, default=500, help="synthetic English lines beside the code"
    )
    tiny.add_argument("--tiny-layers", type=int, default=2)
    tiny.add_argument("--tiny-width", type=int, default=64)
    tiny.add_argument("--tiny-heads", type=int, default=2)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples and steps: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )
    parser.add_argument(
        "--best-of",
        type=int,
        default=0,
        help="also rank N samples of the last model by a reward model (paper: 64)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the table's numbers and the steps to this file")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; with --quick, QUICK's values for those not given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    report = run(args)
    print(report.table(tuple(args.k)))
    refined = report.steps["refine+select"]
    print(
        f"\nπ_Refine: {refined['refinements']} refinements of {refined['feedback']} feedback, "
        f"{refined['passing_refinements']} passed the unit tests; ILF trains on "
        f"{refined['passing_tasks']} (the first passing one per task)"
    )
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
