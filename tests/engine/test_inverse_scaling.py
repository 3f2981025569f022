"""Inverse Scaling Prize task files as published, their losses, and sweeps across model sizes."""

import csv
import json
import math

import pytest

from feedback_loop.engine.cli import main as cli_main
from feedback_loop.engine.inverse_scaling import (
    evaluate_task,
    load_task,
    loss_slope,
    plot_sweep,
    sweep,
)
from feedback_loop.engine.types import ContinuationScore


class TableBackend:
    """log p(continuation | prompt) from a table keyed by (prompt, continuation); -10 when absent."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def score(self, prompts, continuations):
        return [
            ContinuationScore(self.table.get((p, c), -10.0), 1)
            for p, c in zip(prompts, continuations, strict=True)
        ]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_published_classification_csv_reads_classes_as_a_python_list(tmp_path):
    path = write_csv(
        tmp_path / "memo-trap.csv",
        [
            {"prompt": "Q1", "classes": "[' Yes', ' No']", "answer_index": "1"},
            {"prompt": "Q2", "classes": '[" it\'s", " no, it is not"]', "answer_index": "0"},
        ],
    )
    task = load_task(path)

    assert task.kind == "classification" and task.name == "memo-trap"
    assert [i.classes for i in task.items] == [(" Yes", " No"), (" it's", " no, it is not")]
    assert [i.answer_index for i in task.items] == [1, 0]


def test_classification_loss_is_the_negative_log_softmax_of_the_answers_summed_logprob(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text(
        json.dumps({"prompt": "P", "classes": [" a", " b"], "answer_index": 1})
        + "\n"
        + json.dumps({"prompt": "R", "classes": "[' a', ' b']", "answer_index": 0})
        + "\n"
    )
    backend = TableBackend({("P", " a"): -1.0, ("P", " b"): -2.0, ("R", " a"): -0.5, ("R", " b"): -3.0})

    result = evaluate_task(backend, load_task(path))

    first = -(-2.0 - math.log(math.exp(-1.0) + math.exp(-2.0)))
    second = -(-0.5 - math.log(math.exp(-0.5) + math.exp(-3.0)))
    assert result.per_item == pytest.approx((first, second))
    assert result.loss == pytest.approx((first + second) / 2)
    assert result.accuracy == 0.5
    assert 0.0 <= result.accuracy_low <= 0.5 <= result.accuracy_high <= 1.0


def test_sequence_prob_loss_is_the_completions_negative_log_likelihood(tmp_path):
    path = write_csv(tmp_path / "seq.csv", [{"prompt": "P", "completion": " done."}])
    result = evaluate_task(TableBackend({("P", " done."): -4.5}), load_task(path))

    assert (result.kind, result.loss, result.accuracy) == ("sequence_prob", 4.5, None)


def test_logodds_compares_the_answers_log_odds_under_the_two_prompts(tmp_path):
    path = write_csv(
        tmp_path / "lo.csv",
        [
            {"prompt": "P1", "other_prompt": "O1", "classes": "[' Yes', ' No']", "answer_index": "0"},
            {"prompt": "P2", "other_prompt": "O2", "classes": "[' Yes', ' No']", "answer_index": "1"},
        ],
    )
    table = {
        ("P1", " Yes"): -1.0,
        ("P1", " No"): -2.0,  # log-odds +1
        ("O1", " Yes"): -2.0,
        ("O1", " No"): -1.0,  # log-odds -1, wrong under other_prompt
        ("P2", " Yes"): -1.0,
        ("P2", " No"): -1.0,  # log-odds 0
        ("O2", " Yes"): -3.0,
        ("O2", " No"): -1.0,  # log-odds -2, right under other_prompt
    }
    result = evaluate_task(TableBackend(table), load_task(path))

    assert result.kind == "logodds"
    assert result.per_item == pytest.approx((2.0, -2.0))  # 1 - (-1); and -(0 - (-2)) for answer 1
    assert result.accuracy == 0.5


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "classes": "[' a']", "answer_index": "0"}, "two or more"),
        ({"prompt": "p", "classes": "a, b", "answer_index": "0"}, "literal"),
        ({"prompt": "p", "classes": "[' a', ' b']", "answer_index": "2"}, "class position"),
    ],
)
def test_malformed_rows_are_refused_with_their_line(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_task(write_csv(tmp_path / "bad.csv", [row]))


def test_a_loss_rising_with_size_is_flagged_as_inverse_scaling(tmp_path):
    task_path = tmp_path / "t.jsonl"
    task_path.write_text(json.dumps({"prompt": "P", "classes": [" a", " b"], "answer_index": 0}) + "\n")
    task = load_task(task_path)

    def model(logprob_of_answer):
        return TableBackend({("P", " a"): logprob_of_answer, ("P", " b"): -1.0})

    worse = sweep(task, [("s", 10**6, model(-0.5)), ("m", 10**7, model(-1.0)), ("l", 10**8, model(-2.0))])
    better = sweep(task, [("s", 10**6, model(-2.0)), ("l", 10**8, model(-0.5))])

    assert worse.loss_slope > 0 and worse.inverse_scaling
    assert better.loss_slope < 0 and not better.inverse_scaling
    assert loss_slope([10, 10], [1.0, 2.0]) is None  # one size: no slope
    png = plot_sweep(worse, tmp_path / "out" / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sweep_command_runs_a_task_file_over_tiny_models_of_two_sizes(tmp_path, capsys):
    from feedback_loop.engine.tiny import TinyModelConfig, build_tiny_model

    small = build_tiny_model(tmp_path / "small", config=TinyModelConfig(n_embd=32, corpus_sentences=300))
    large = build_tiny_model(tmp_path / "large", config=TinyModelConfig(n_embd=64, corpus_sentences=300))
    task = write_csv(
        tmp_path / "yes-no.csv",
        [
            {
                "prompt": "Question: Does the cat see the house?\nAnswer:",
                "classes": "[' Yes', ' No']",
                "answer_index": "0",
            }
        ]
        * 3,
    )

    cli_main(
        ["sweep", "--task", str(task), "--models", str(small), str(large), "--output", str(tmp_path / "out")]
    )

    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "yes-no" and isinstance(summary["inverse_scaling"], bool)
    saved = json.loads((tmp_path / "out" / "yes-no.json").read_text())
    assert [p["model"] for p in saved["points"]] == [str(small), str(large)]
    assert saved["points"][0]["parameters"] < saved["points"][1]["parameters"]
    assert (tmp_path / "out" / "yes-no.png").stat().st_size > 1000
