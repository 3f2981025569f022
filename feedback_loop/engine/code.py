"""Code tasks in one format, from the prompt a model sees to the program the sandbox runs.

One shape for every step (import, refine, select, train, evaluate, export), the MBPP/HumanEval one:

- `text`: the task's description in words ("Write a function that ...");
- `prompt` (optional): a prefix the model continues, a signature and docstring as in HumanEval;
  empty for MBPP, where the model writes the whole program;
- `test`: test code, either a HumanEval `check(candidate)` function or MBPP `assert` lines;
- `entry_point` (optional): the function under test; found from the prompt, else from the tests.

A *program* is always the whole program (`prompt` + what the model wrote, cut to the function):
it is what the sandbox runs, what a rater's feedback and a refinement are about, and what the
refine prompt's OLD CODE block shows. A *completion* is the part after `prompt`, what the model
is trained to write after `generation_prompt(task)`.

`read_mbpp_jsonl` and `read_humaneval_jsonl` convert the public files (MBPP's `text`, `code`,
`test_list`, `test_setup_code`; HumanEval's `prompt`, `canonical_solution`, `test`, `entry_point`).
`evaluate_pass_at_k` samples n programs per task and estimates pass@k the way Chen et al. (2021) do.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback_loop.engine.types import FeedbackItem, GenerationConfig, ModelBackend, SFTExample

# Where a generated function ends, as the reference evaluation scripts cut it (Codex/HumanEval).
CODE_STOP: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", '\n"""')
CODE_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class CodeTask:
    task_id: str
    text: str  # the description in words
    test: str  # check(candidate) or asserts; may start with imports (from pytest import approx)
    prompt: str = ""  # the prefix the model continues (signature + docstring); "" for MBPP
    entry_point: str | None = None  # the function under test; None: found by `entry_point_of`
    reference: str = ""  # a correct program, when the source has one (MBPP code, HumanEval solution)
    extra: Mapping[str, Any] = field(default_factory=dict)  # other fields of the row, kept as they came

    def as_row(self) -> dict[str, Any]:
        row = {**self.extra, "task_id": self.task_id, "text": self.text, "prompt": self.prompt}
        row.update(test=self.test, entry_point=self.entry_point_of(), reference=self.reference)
        return row

    def entry_point_of(self) -> str | None:
        """The task's entry_point, else the last function the prompt defines, else the first name
        the tests call that they do not define themselves (MBPP: `assert f(...) == ...`)."""
        if self.entry_point:
            return self.entry_point
        defined = _function_names(self.prompt)
        if defined:
            return defined[-1]
        try:
            tree = ast.parse(self.test)
        except SyntaxError:
            return None
        own = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
                if name not in own and name not in _BUILTINS:
                    return name
        return None


_BUILTINS = frozenset(dir(__import__("builtins"))) | {"approx", "check", "candidate"}


def _function_names(source: str) -> list[str]:
    return re.findall(r"^def\s+(\w+)\s*\(", source, flags=re.M)


def code_task(row: Mapping[str, Any]) -> CodeTask:
    """A CodeTask from a row of our format, MBPP's (`test_list`, `code`) or HumanEval's."""
    row = dict(row)
    test = row.pop("test", None)
    if test is None and "test_list" in row:  # MBPP
        setup = row.get("test_setup_code") or ""
        test = "\n".join([setup, *row["test_list"]]).strip() + "\n"
    if test is None:
        test = row.pop("tests", None)  # the engine's older CLI name
    if not isinstance(test, str) or not test.strip():
        raise ValueError(f"code task {row.get('task_id')!r} has no tests (`test` or `test_list`)")
    prompt = row.pop("prompt", "") or ""
    text = row.pop("text", None)
    if text is None:
        text = _docstring(prompt) or ""
    reference = row.pop("reference", None) or row.get("code") or ""
    if not reference and row.get("canonical_solution"):
        reference = prompt + row["canonical_solution"]
    task_id = str(row.pop("task_id", ""))
    entry_point = row.pop("entry_point", None)
    return CodeTask(
        task_id=task_id,
        text=str(text),
        test=test,
        prompt=prompt,
        entry_point=entry_point,
        reference=reference,
        extra=row,
    )


def _docstring(prompt: str) -> str | None:
    match = re.search(r'("""|\'\'\')(.*?)\1', prompt, flags=re.S)
    return match.group(2).strip() if match else None


def read_code_tasks(path: str | Path) -> list[CodeTask]:
    """Code tasks from a JSON-lines file in any of the three shapes."""
    with open(path, encoding="utf-8") as f:
        return [code_task(json.loads(line)) for line in f if line.strip()]


def read_mbpp_jsonl(path: str | Path) -> list[CodeTask]:
    """The public MBPP file (mbpp.jsonl or sanitized-mbpp.json lines): `text`/`prompt`, `code`, `test_list`."""
    tasks = []
    for task in read_code_tasks(path):
        # sanitized-mbpp names the description `prompt`; it is not a prefix to continue there.
        if task.prompt and not task.text and "def " not in task.prompt:
            task = CodeTask(
                task.task_id, task.prompt, task.test, "", task.entry_point, task.reference, task.extra
            )
        tasks.append(task)
    return tasks


def read_humaneval_jsonl(path: str | Path) -> list[CodeTask]:
    """The public HumanEval file: `prompt` (continued by the model), `canonical_solution`, `test`, `entry_point`."""
    return read_code_tasks(path)


def write_code_tasks(path: str | Path, tasks: Iterable[CodeTask]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for task in tasks:
            f.write(json.dumps(task.as_row()) + "\n")


# -- prompts, programs, completions -------------------------------------------------------------


def generation_prompt(task: CodeTask) -> str:
    """What the model is asked to continue: HumanEval's prompt as it is; for MBPP the description and
    the first test in a docstring, the function name being what the test calls (as in ILF for code)."""
    if task.prompt:
        return task.prompt
    first_test = next((line for line in task.test.splitlines() if line.startswith("assert")), "")
    return f'"""\n{task.text.strip()}\n{first_test}\n"""\n'


def extract_program(
    prompt: str, completion: str, stop: Sequence[str] = CODE_STOP, *, entry_point: str | None = None
) -> str:
    """The program a completion makes: `prompt` + `completion`, cut at the end of the function.

    The function is the last one the prompt defines, or else the completion's `entry_point` function
    (helpers written before it stay), or else the first function the completion defines.
    Whatever follows it is dropped: text after a stop sequence (a new top-level def, class, print,
    comment, `if __name__`), any other top-level line, and a last line the token limit cut in half
    (lines are dropped from the end until the program compiles). What stands before the function
    (imports, helper functions) stays.
    """
    full = prompt + completion
    defs = [(m.start(), m.group(1)) for m in re.finditer(r"^def\s+(\w+)", full, flags=re.M)]
    in_prompt = [d for d, _ in defs if d < len(prompt)]
    after = [d for d, name in defs if d >= len(prompt) and name == entry_point]
    after = after or [d for d, _ in defs if d >= len(prompt)]
    anchor = in_prompt[-1] if in_prompt else (after[0] if after else None)
    if anchor is None:
        return full.rstrip() + "\n"
    # The function's signature may span lines: the body starts after the first line ending in ":".
    header = re.compile(r"\)\s*(->[^\n]*)?:\s*(#[^\n]*)?$", flags=re.M).search(full, anchor)
    body_start = header.end() if header else full.find("\n", anchor) + 1 or len(full)
    body_start = max(body_start, len(prompt))  # the prompt's own text (a docstring) never stops it
    cut = len(full)
    for s in stop:
        i = full.find(s, body_start)
        if i != -1:
            cut = min(cut, i)
    lines = full[:cut].splitlines()
    # The first non-blank line at column 0 after the header ends the function.
    start_line = full[:body_start].count("\n") + 1
    for number in range(start_line, len(lines)):
        line = lines[number]
        if line.strip() and not line[0].isspace():
            lines = lines[:number]
            break
    program = "\n".join(lines).rstrip() + "\n"
    floor = start_line  # never drop the signature itself
    while len(lines) > floor and not _compiles(program):
        lines = lines[:-1]
        program = "\n".join(lines).rstrip() + "\n"
    return program


def _compiles(source: str) -> bool:
    try:
        compile(source, "<program>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def program_from_completion(task: CodeTask, completion: str) -> str:
    """The program the model wrote after `generation_prompt(task)`."""
    return extract_program(task.prompt, completion, entry_point=task.entry_point_of())


def completion_for(task: CodeTask, program: str) -> str:
    """The part of a whole program that the model writes after `generation_prompt(task)`."""
    if task.prompt and program.startswith(task.prompt):
        return program[len(task.prompt) :]
    if task.prompt:
        # A refinement may rewrite the signature line; train on the body after the prompt's function.
        name = task.entry_point_of()
        match = re.search(rf"^def\s+{re.escape(name or '')}\s*\(.*?:\s*\n", program, flags=re.M | re.S)
        if match:
            return program[match.end() :]
    return program


def sft_example(task: CodeTask, program: str) -> SFTExample:
    """A training pair: the generation prompt → the completion that makes `program`."""
    return SFTExample(
        prompt=generation_prompt(task), completion=completion_for(task, program).rstrip() + "\n"
    )


def feedback_item(task: CodeTask, program: str, feedback: str) -> FeedbackItem:
    """A FeedbackItem for refine/select: the description as prompt, the whole program as output."""
    return FeedbackItem(
        prompt=task.text or task.prompt,
        output=program,
        feedback=feedback,
        kind="code",
        tests=task.test,
        entry_point=task.entry_point_of(),
    )


# -- pass@k ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    """The paper's sampling for pass@k: n=30 samples at temperature 0.8, top-p 0.95."""

    n: int = 30
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = CODE_MAX_NEW_TOKENS
    seed: int | None = 0


@dataclass(frozen=True)
class TaskCount:
    task_id: str
    n: int  # samples drawn
    c: int  # samples that passed every test
    statuses: dict[str, int]  # how many samples ended in each sandbox status


@dataclass(frozen=True)
class PassAtKResult:
    pass_at: dict[int, float]  # k -> mean pass@k over the tasks whose tests load
    per_task: tuple[TaskCount, ...]  # the counts behind it, one per scored task
    tests_error: tuple[str, ...]  # task ids whose tests could not load: left out, reported once
    config: SamplingConfig


def check_pass_at_k(ks: Sequence[int], n: int, temperature: float) -> None:
    """Refuse settings under which pass@k would be wrong, with the reason."""
    if not ks:
        raise ValueError("give at least one k")
    too_big = [k for k in ks if k > n]
    if too_big:
        raise ValueError(f"pass@k needs n >= k samples per task: k={too_big} with n={n}")
    if any(k < 1 for k in ks):
        raise ValueError("k must be at least 1")
    if temperature <= 0 and n > 1:
        raise ValueError(
            f"greedy decoding (temperature {temperature}) gives one program, not n={n} samples: "
            "pass@k would count copies of it. Sample at temperature > 0 (the paper: 0.8, top-p 0.95), "
            "or use n=1 for greedy pass@1"
        )


def evaluate_pass_at_k(
    backend: ModelBackend,
    tasks: Sequence[CodeTask],
    ks: Sequence[int] = (1, 10),
    config: SamplingConfig | None = None,
    *,
    limits: Any = None,
    max_workers: int | None = None,
) -> PassAtKResult:
    """Sample n programs per task, run each against the task's tests, estimate pass@k (unbiased).

    A task whose tests do not load (status `tests_error`) is left out of the mean and listed once in
    `tests_error`: it says nothing about the model, and counting it as n failures would hide it.
    """
    from feedback_loop.engine.evaluate import pass_at_k
    from feedback_loop.engine.sandbox import SandboxLimits, run_unit_tests_many

    config = config or SamplingConfig()
    check_pass_at_k(ks, config.n, config.temperature)
    if not tasks:
        raise ValueError("evaluate_pass_at_k needs at least one task")
    generation = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        n=config.n,
        seed=config.seed,
        stop=CODE_STOP,
    )
    samples = backend.generate([generation_prompt(t) for t in tasks], generation)
    counts, broken = [], []
    for task, texts in zip(tasks, samples, strict=True):
        programs = [program_from_completion(task, text) for text in texts]
        results = run_unit_tests_many(
            programs,
            task.test,
            limits=limits or SandboxLimits(),
            entry_point=task.entry_point_of(),
            max_workers=max_workers,
        )
        statuses: dict[str, int] = {}
        for r in results:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        if statuses.get("tests_error"):
            broken.append(task.task_id)
            continue
        counts.append(TaskCount(task.task_id, len(results), statuses.get("pass", 0), statuses))
    pass_at = {
        k: (sum(pass_at_k(t.n, t.c, k) for t in counts) / len(counts) if counts else float("nan")) for k in ks
    }
    return PassAtKResult(pass_at=pass_at, per_task=tuple(counts), tests_error=tuple(broken), config=config)
