import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_loop.engine.backends.hf import HFBackend
from feedback_loop.engine.cli import build_parser, main, read_jsonl, write_jsonl
from feedback_loop.engine.train import run_training
from feedback_loop.engine.types import GenerationConfig

PROMPTS = ["The cat", "Question: Does the dog like the garden?\nAnswer:", "Summary: A bird"]


def test_generate_round_trips_jsonl_keeping_every_field(tiny_model_dir, tmp_path):
    rows = [{"prompt": p, "id": i, "meta": {"split": "eval"}} for i, p in enumerate(PROMPTS)]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    args = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--input",
        str(tmp_path / "prompts.jsonl"),
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
    ]
    main([*args, "--output", str(tmp_path / "a.jsonl")])
    main([*args, "--output", str(tmp_path / "b.jsonl")])

    out = read_jsonl(tmp_path / "a.jsonl")
    assert [{k: v for k, v in row.items() if k != "outputs"} for row in out] == rows
    expected = HFBackend(tiny_model_dir).generate(PROMPTS, GenerationConfig(max_new_tokens=8))
    assert [row["outputs"] for row in out] == expected
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert not list(tmp_path.glob("*.partial"))


def test_refine_select_and_train_chain_on_files(tiny_model_dir, tmp_path):
    feedback = [
        {
            "id": 7,
            "prompt": "Summarise: The dog walks to the garden.",
            "output": "The dog.",
            "feedback": "Mention the garden.",
        },
    ]
    write_jsonl(tmp_path / "feedback.jsonl", feedback)
    model = ["--model", str(tiny_model_dir)]
    main(
        [
            "refine",
            *model,
            "--input",
            str(tmp_path / "feedback.jsonl"),
            "--output",
            str(tmp_path / "ref.jsonl"),
            "--n",
            "4",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
        ]
    )
    [refined] = read_jsonl(tmp_path / "ref.jsonl")
    assert refined["id"] == 7 and 1 <= len(refined["refinements"]) <= 4
    assert all(r["text"].strip() and r["source"] == "model" for r in refined["refinements"])

    main(
        [
            "select",
            "--method",
            "instruct_rm",
            *model,
            "--input",
            str(tmp_path / "ref.jsonl"),
            "--output",
            str(tmp_path / "sel.jsonl"),
            "--sft-output",
            str(tmp_path / "train.jsonl"),
        ]
    )
    [selected] = read_jsonl(tmp_path / "sel.jsonl")
    best = max(range(len(selected["scores"])), key=lambda i: selected["scores"][i])
    assert selected["selected_index"] == best
    assert selected["selected"] == refined["refinements"][best]["text"]
    assert read_jsonl(tmp_path / "train.jsonl") == [
        {"prompt": feedback[0]["prompt"], "completion": selected["selected"]}
    ]

    main(
        [
            "train",
            *model,
            "--train",
            str(tmp_path / "train.jsonl"),
            "--output-dir",
            str(tmp_path / "adapter"),
            "--max-steps",
            "1",
            "--rank",
            "2",
            "--no-progress",
        ]
    )
    assert any((tmp_path / "adapter").rglob("adapter_model.safetensors"))


def test_select_by_unit_tests_from_files(tmp_path):
    rows = [
        {
            "prompt": "Add two numbers.",
            "output": "def add(a, b):\n    return a - b",
            "feedback": "Add them.",
            "kind": "code",
            "tests": "assert add(2, 3) == 5\n",
            "refinements": ["def add(a, b):\n    return a * b", {"text": "def add(a, b):\n    return a + b"}],
        },
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    main(
        [
            "select",
            "--method",
            "unit_tests",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
        ]
    )
    [row] = read_jsonl(tmp_path / "out.jsonl")
    assert row["selected_index"] == 1 and row["selected"] == "def add(a, b):\n    return a + b"
    assert row["scores"] == [0.0, 1.0]


def test_evaluate_reports_held_out_loss_and_multiple_choice(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "held_out.jsonl", [{"prompt": "The cat", "completion": " sees the house."}])
    write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {
                "prompt": "Question: Does the cat see the door?\nAnswer:",
                "classes": [" Yes", " No"],
                "answer_index": 0,
            }
        ],
    )
    main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--held-out",
            str(tmp_path / "held_out.jsonl"),
            "--multiple-choice",
            str(tmp_path / "mc.jsonl"),
            "--output",
            str(tmp_path / "metrics.json"),
        ]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    [score] = HFBackend(tiny_model_dir).score(["The cat"], [" sees the house."])
    assert metrics["held_out_loss"] == pytest.approx(-score.logprob / score.n_tokens, rel=1e-5)
    assert metrics["multiple_choice/accuracy"] in (0.0, 1.0)
    assert metrics["multiple_choice/loss"] > 0


def test_bad_input_names_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"bad\.jsonl:2"):
        main(
            [
                "generate",
                "--model",
                "unused",
                "--input",
                str(tmp_path / "bad.jsonl"),
                "--output",
                str(tmp_path / "o"),
            ]
        )


def test_train_is_a_command_of_the_parser_with_every_training_setting():
    args = build_parser().parse_args(
        ["train", "--model", "m", "--train", "t.jsonl", "--output-dir", "o", "--rank", "4", "--no-append-eos"]
    )
    assert args.run is run_training
    assert (args.rank, args.append_eos, args.packing, args.max_steps) == (4, False, "group_by_length", None)


def test_train_refuses_bad_input_with_a_message_like_every_command(tiny_model_dir, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SystemExit, match=r"^train: no example has a completion token"):
        main(
            [
                "train",
                "--model",
                str(tiny_model_dir),
                "--train",
                str(tmp_path / "empty.jsonl"),
                "--output-dir",
                str(tmp_path / "adapter"),
            ]
        )


def test_module_entry_point_builds_the_tiny_model(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "feedback_loop.engine",
            "tiny",
            str(tmp_path / "tiny"),
            "--pretrain-steps",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "tiny").iterdir()
    }


def test_select_reads_mbpp_rows_and_writes_code_training_pairs_in_the_evaluation_shape(tmp_path):
    from feedback_loop.engine.code import code_task, generation_prompt

    row = {
        "task_id": 3,
        "text": "Add two numbers.",
        "test_list": ["assert add(2, 3) == 5"],
        "output": "def add(a, b):\n    return a - b\n",
        "feedback": "Add them.",
        "refinements": ["def add(a, b):\n    return a * b", "def add(a, b):\n    return a + b"],
    }
    write_jsonl(tmp_path / "in.jsonl", [row])
    out, sft = str(tmp_path / "out.jsonl"), str(tmp_path / "sft.jsonl")
    main(
        [
            "select",
            "--method",
            "unit_tests",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            out,
            "--sft-output",
            sft,
        ]
    )
    assert read_jsonl(out)[0]["selected_index"] == 1
    task = code_task({k: v for k, v in row.items() if k not in ("output", "feedback", "refinements")})
    assert read_jsonl(sft) == [
        {"prompt": generation_prompt(task), "completion": "def add(a, b):\n    return a + b\n"}
    ]


def test_write_jsonl_that_meets_a_full_disk_leaves_neither_file(tmp_path):
    import errno

    def rows():
        yield {"prompt": "a"}
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        write_jsonl(tmp_path / "out.jsonl", rows())
    assert list(tmp_path.iterdir()) == []
