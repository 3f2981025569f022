"""π_Refine: a refiner trained on human refinements, as ILF for code trains one.

A training example is the refine prompt (the task, OLD CODE and FEEDBACK, exactly as `refine` asks
for a refinement) → the human refinement; `train_lora` puts the loss on the refinement only. The
adapter it writes is what `refine` then runs (`python -m feedback_loop.engine refine --refiner
ADAPTER`, or `HFBackend(model, adapter=ADAPTER)` in code).

Rows (JSON lines) carry what a rater saw and wrote: `output` (the program or text the feedback is
about), `feedback`, `refinement` (the human fix), and the task, either as `prompt` (with `kind`) or,
for code, in the code-task shape (`text`, `prompt`, `test`/`test_list`, `entry_point`: see
`feedback_loop.engine.code`). The platform's export writes them (`kind=refiner`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from feedback_loop.engine.prompts import refinement_prompt
from feedback_loop.engine.train import LoRATrainingConfig, TrainingResult, train_lora
from feedback_loop.engine.types import FeedbackItem, SFTExample

CODE_REFINEMENTS_N = 30  # refinements sampled per feedback for code tasks, as in ILF for code


def refiner_item(row: Mapping[str, Any]) -> FeedbackItem:
    """The FeedbackItem a row describes: a code task (text + test/test_list) or prompt/output/feedback."""
    is_code_task = "text" in row and ("test" in row or "test_list" in row)
    if is_code_task or (row.get("kind") == "code" and "text" in row):
        from feedback_loop.engine.code import code_task, feedback_item

        task = code_task({k: v for k, v in row.items() if k not in ("output", "feedback", "refinement")})
        return feedback_item(task, row["output"], row["feedback"])
    return FeedbackItem(
        prompt=row["prompt"],
        output=row["output"],
        feedback=row["feedback"],
        kind=row.get("kind", "text"),
        tests=row.get("tests") or row.get("test") or "",
        entry_point=row.get("entry_point"),
    )


def refiner_examples(rows: Sequence[Mapping[str, Any]]) -> list[SFTExample]:
    """One (refine prompt → human refinement) pair per row that has a refinement."""
    examples = []
    for number, row in enumerate(rows, start=1):
        missing = [f for f in ("output", "feedback", "refinement") if not isinstance(row.get(f), str)]
        if missing:
            raise ValueError(f"refiner row {number} lacks {missing}")
        item = refiner_item(row)
        refinement = (
            row["refinement"].strip("\n").rstrip() if item.kind == "code" else row["refinement"].strip()
        )
        examples.append(SFTExample(prompt=refinement_prompt(item), completion=refinement))
    return examples


def train_refiner(
    model: str | Path,
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    config: LoRATrainingConfig | None = None,
    *,
    eval_rows: Sequence[Mapping[str, Any]] = (),
    progress: bool = True,
) -> TrainingResult:
    """Train π_Refine as a LoRA adapter on `model` from human refinements (loss on the refinement)."""
    if not rows:
        raise ValueError("train_refiner needs at least one human refinement")
    return train_lora(
        model,
        refiner_examples(rows),
        output_dir,
        config or LoRATrainingConfig(),
        eval_examples=refiner_examples(eval_rows),
        progress=progress,
    )
