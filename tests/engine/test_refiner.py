"""π_Refine: trained on (task, OLD CODE, FEEDBACK) → human refinement, used by refine; and the ILF
for code reproduction runs every step end to end (cut down to a few tasks and steps)."""

import json
from pathlib import Path

import pytest

from feedback_loop.engine.cli import main, read_jsonl, write_jsonl
from feedback_loop.engine.code import read_mbpp_jsonl
from feedback_loop.engine.prompts import refinement_prompt
from feedback_loop.engine.refine import RefineConfig, refine
from feedback_loop.engine.refiner import CODE_REFINEMENTS_N, refiner_examples, refiner_item
from feedback_loop.engine.types import FeedbackItem

FIXTURE = Path(__file__).resolve().parents[2] / "bench" / "data" / "ilf_code_tasks.jsonl"


def _fixture_rows(n):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()[:n]]
    return [{**row, "output": row["completion"]} for row in rows]


def test_a_refiner_example_is_the_refine_prompt_then_the_human_refinement():
    [row] = _fixture_rows(1)
    [example] = refiner_examples([row])
    item = refiner_item(row)
    assert item.kind == "code" and item.prompt == row["text"] and item.output == row["completion"]
    assert item.tests.startswith("assert add_numbers(2, 3) == 5")
    assert example.prompt == refinement_prompt(item)
    assert "OLD CODE" in example.prompt and row["feedback"] in example.prompt
    assert example.completion == row["refinement"].rstrip()


def test_text_rows_give_text_refiner_examples():
    row = {"prompt": "Summarise.", "output": "Long.", "feedback": "Shorter.", "refinement": " Short. "}
    [example] = refiner_examples([row])
    assert example.completion == "Short."
    assert example.prompt == refinement_prompt(FeedbackItem("Summarise.", "Long.", "Shorter."))


def test_a_row_without_a_refinement_is_refused():
    with pytest.raises(ValueError, match="refinement"):
        refiner_examples([{"prompt": "p", "output": "o", "feedback": "f"}])


def test_train_refiner_from_the_command_line_and_refine_with_it(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "fixes.jsonl", _fixture_rows(6))
    main(
        [
            "train-refiner",
            "--model",
            str(tiny_model_dir),
            "--train",
            str(tmp_path / "fixes.jsonl"),
            "--output-dir",
            str(tmp_path / "refiner"),
            "--max-steps",
            "2",
            "--rank",
            "2",
            "--no-progress",
        ]
    )
    assert (tmp_path / "refiner" / "adapter_model.safetensors").exists()
    feedback = [{**row, "prompt": row["text"], "kind": "code"} for row in _fixture_rows(2)]
    write_jsonl(tmp_path / "feedback.jsonl", feedback)
    main(
        [
            "refine",
            "--model",
            str(tiny_model_dir),
            "--refiner",
            str(tmp_path / "refiner"),
            "--input",
            str(tmp_path / "feedback.jsonl"),
            "--output",
            str(tmp_path / "refined.jsonl"),
            "--max-new-tokens",
            "16",
        ]
    )
    refined = read_jsonl(tmp_path / "refined.jsonl")
    assert len(refined) == 2
    # Code rows get N=30 samples by default (what is left after dropping empties and duplicates).
    assert all(r["sample_index"] < CODE_REFINEMENTS_N for row in refined for r in row["refinements"])
    assert max(r["sample_index"] for row in refined for r in row["refinements"]) >= 5


class _Recording:
    name = "recording"

    def __init__(self):
        self.configs = []

    def generate(self, prompts, config):
        self.configs.append(config)
        return [["def f():\n    return 1\nprint(f())\n"] * config.n for _ in prompts]


def test_code_refinements_get_room_for_a_program_and_are_cut_after_the_function():
    backend = _Recording()
    item = FeedbackItem("Return one.", "def f():\n    return 2\n", "Return 1.", kind="code", entry_point="f")
    [[refinement]] = refine(backend, [item], n=3, config=RefineConfig())
    assert backend.configs[0].max_new_tokens == 512
    assert refinement.text == "def f():\n    return 1"


def test_the_ilf_code_reproduction_runs_every_step(tmp_path):
    from bench.ilf_code import main as bench_main

    report = bench_main(
        [
            "--max-tasks",
            "9",
            "--refiner-tasks",
            "3",
            "--ilf-tasks",
            "3",
            "--n",
            "3",
            "--k",
            "1",
            "2",
            "--refine-n",
            "2",
            "--steps",
            "2",
            "--max-new-tokens",
            "32",
            "--pretrain-steps",
            "20",
            "--code-documents",
            "60",
            "--refiner-steps",
            "2",
            "--work-dir",
            str(tmp_path),
            "--json",
            str(tmp_path / "report.json"),
            "--best-of",
            "2",
        ]
    )
    held_out = [t.task_id for t in read_mbpp_jsonl(FIXTURE)[6:9]]
    for name in ("zero-shot", "fine-tuned on gold", "fine-tuned on human fixes"):
        result = report.rows[name]
        assert [t.task_id for t in result.per_task] == held_out
        assert all(t.n == 3 and 0 <= t.c <= 3 for t in result.per_task)
        assert set(result.pass_at) == {1, 2}
    ilf = report.rows["ILF (π_Refine + unit tests)"]
    assert isinstance(ilf, str) or len(ilf.per_task) == 3  # trained only when a refinement passed
    best = report.rows["last model + best-of-2 (RM)"]
    assert [t.n for t in best.per_task] == [1, 1, 1] and set(best.pass_at) == {1}
    assert report.steps["refine+select"]["feedback"] == 3
    assert (
        report.steps["refine+select"]["passing_refinements"] >= report.steps["refine+select"]["passing_tasks"]
    )
    assert report.steps["base model"]["code_documents"] == 60
    per_task = report.table((1, 2)).split("passing samples per task")[1].splitlines()
    assert per_task[0].split() == [str(i) for i in held_out]
    assert per_task[1].split()[-3:] == [f"{t.c}/3" for t in report.rows["zero-shot"].per_task]
    assert report.steps["pi_refine"]["examples"] == 3
    assert json.loads((tmp_path / "report.json").read_text())["rows"]["zero-shot"]["pass_at"].keys() == {
        "1",
        "2",
    }


def test_the_code_pretraining_corpus_holds_no_fixture_function():
    from bench.ilf_code_corpus import check_disjoint, code_corpus

    names = [t.entry_point_of() for t in read_mbpp_jsonl(FIXTURE)]
    corpus = code_corpus(600, seed=3, exclude=names)
    check_disjoint(corpus, names)
    assert len(corpus) == 600
    assert sum(doc.startswith("# before\n") for doc in corpus) == 400  # two edits to a program
    with pytest.raises(ValueError, match="add_numbers"):
        check_disjoint([*corpus, "def add_numbers(a, b):\n    return a + b\n"], names)


def test_the_ilf_row_is_trained_on_the_refinements_that_pass_and_evaluated(tmp_path, monkeypatch):
    # π_Refine stood in for by one that writes a broken program, then the human's fix: the fix is
    # the only refinement that passes, so ILF trains on exactly one program per ILF task.
    import feedback_loop.engine.refine as refine_module
    from bench.ilf_code import main as bench_main
    from feedback_loop.engine.types import Refinement

    fixes = {row["completion"]: row["refinement"] for row in _fixture_rows(9)}

    def fake_refine(backend, items, n=5, config=None):
        return [[Refinement("def broken(:\n    pass"), Refinement(fixes[item.output])] for item in items]

    monkeypatch.setattr(refine_module, "refine", fake_refine)
    small = "--max-tasks 9 --refiner-tasks 3 --ilf-tasks 3 --n 2 --k 1 --steps 2 --refiner-steps 1"
    small += " --max-new-tokens 16 --pretrain-steps 5 --code-documents 20"
    report = bench_main([*small.split(), "--work-dir", str(tmp_path)])
    assert report.steps["refine+select"] | {"s": 0} == {
        "feedback": 3,
        "refinements": 6,
        "passing_refinements": 3,
        "passing_tasks": 3,
        "s": 0,
    }
    assert report.steps["train ilf"]["examples"] == 3
    ilf = report.rows["ILF (π_Refine + unit tests)"]
    held_out = [t.task_id for t in read_mbpp_jsonl(FIXTURE)[6:9]]
    assert [t.task_id for t in ilf.per_task] == held_out and all(t.n == 2 for t in ilf.per_task)
    assert "ILF (π_Refine + unit tests)" in report.table((1,)).split("passing samples per task")[1]


def test_quick_takes_fewer_steps_where_none_are_given_and_still_has_samples_for_every_k():
    from bench.ilf_code import QUICK, parse_args

    quick, full = parse_args(["--quick"]), parse_args([])
    assert quick.pretrain_steps == QUICK["pretrain_steps"] < full.pretrain_steps
    assert quick.refiner_steps < full.refiner_steps and quick.refine_n < full.refine_n
    assert quick.n >= max(quick.k)  # pass@10 needs 10 samples
    assert parse_args(["--quick", "--pretrain-steps", "7"]).pretrain_steps == 7
