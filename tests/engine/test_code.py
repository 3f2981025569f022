"""Code tasks: one format, program extraction, the sandbox's test helpers, pass@k done right."""

import json
from pathlib import Path

import pytest

from feedback_loop.engine.code import (
    CodeTask,
    SamplingConfig,
    check_pass_at_k,
    code_task,
    completion_for,
    evaluate_pass_at_k,
    extract_program,
    feedback_item,
    generation_prompt,
    program_from_completion,
    read_mbpp_jsonl,
)
from feedback_loop.engine.prompts import refinement_prompt
from feedback_loop.engine.sandbox import SandboxLimits, run_unit_tests, run_unit_tests_many
from feedback_loop.engine.types import GenerationConfig
from tests.engine.test_sandbox import NEEDS_BWRAP

FIXTURE = Path(__file__).resolve().parents[2] / "bench" / "data" / "ilf_code_tasks.jsonl"
# The layer this machine gives by default, and bubblewrap by force where it runs.
LAYERS = [
    pytest.param(SandboxLimits(), id="auto"),
    pytest.param(SandboxLimits(os_layer="bwrap"), id="bwrap", marks=NEEDS_BWRAP),
]
APPROX_TESTS = "from pytest import approx\nassert area(2) == approx(12.566370614359172)\n"


# -- the fixture: gold programs and human refinements pass, original completions fail -------------


def test_gold_programs_and_human_refinements_pass_the_sandbox_and_original_completions_fail():
    tasks = read_mbpp_jsonl(FIXTURE)
    assert len(tasks) >= 40

    gold = [t.reference for t in tasks]
    refined = [t.extra["refinement"] for t in tasks]
    original = [t.extra["completion"] for t in tasks]
    # A task's three programs share its tests: three sandboxes at a time.
    statuses = [
        [
            r.status
            for r in run_unit_tests_many(programs, t.test, entry_point=t.entry_point_of(), max_workers=3)
        ]
        for t, *programs in zip(tasks, gold, refined, original, strict=True)
    ]
    assert [g for g, _, _ in statuses] == ["pass"] * len(tasks)
    assert [r for _, r, _ in statuses] == ["pass"] * len(tasks)
    assert all(o not in ("pass", "tests_error") for _, _, o in statuses)
    # The gold program is a reference written on its own, not the human's edit of the completion.
    assert all(g != r for g, r in zip(gold, refined, strict=True))


# -- the sandbox's test helpers --------------------------------------------------------------------


@pytest.mark.parametrize("limits", LAYERS)
def test_approx_based_tests_pass_and_fail_correctly(limits):
    exact = run_unit_tests(
        "import math\ndef area(r):\n    return math.pi * r * r\n", APPROX_TESTS, limits=limits
    )
    rough = run_unit_tests("def area(r):\n    return 3.14 * r * r\n", APPROX_TESTS, limits=limits)
    assert exact.status == "pass", exact.output
    assert rough.status == "fail", rough.output


@pytest.mark.parametrize("limits", LAYERS)
@pytest.mark.parametrize(
    "module", ["socket", "subprocess", "ctypes", "_socket", "numpy", "torch", "_pytest", "pluggy"]
)
def test_program_still_cannot_import_anything_but_the_standard_library_and_the_helpers(limits, module):
    result = run_unit_tests(f"import {module}\n", "assert True", limits=limits)
    assert result.status == "error"
    assert "program:" in result.output


def test_pytest_raises_stand_in_works():
    tests = "import pytest\ndef test_raises():\n    with pytest.raises(ZeroDivisionError):\n        f(0)\n"
    assert run_unit_tests("def f(x):\n    return 1 / x\n", tests).status == "pass"
    assert run_unit_tests("def f(x):\n    return 1\n", tests).status == "fail"


@pytest.mark.parametrize(
    "tests", ["from numpy import isclose\nassert f() == 1\n", "assert f( == 1\n"], ids=["import", "syntax"]
)
def test_tests_that_cannot_load_are_their_own_status(tests):
    result = run_unit_tests("def f():\n    return 1\n", tests)
    assert result.status == "tests_error"
    assert "TESTS ERROR" in result.output


def test_check_candidate_finds_the_function_the_prompt_names_not_the_last_def():
    task = code_task(
        {
            "task_id": "HumanEval/x",
            "prompt": 'def double(x):\n    """Twice x."""\n',
            "test": "def check(candidate):\n    assert candidate(2) == 4\n",
        }
    )
    program = "def double(x):\n    return helper(x)\n\ndef helper(x):\n    return 2 * x\n"
    assert task.entry_point_of() == "double"
    assert run_unit_tests(program, task.test, entry_point=task.entry_point_of()).status == "pass"


# -- one format ------------------------------------------------------------------------------------


def test_mbpp_and_humaneval_rows_become_one_task_shape():
    mbpp = code_task(
        {
            "task_id": 2,
            "text": "Add two numbers.",
            "code": "def add(a, b):\n    return a + b\n",
            "test_list": ["assert add(1, 2) == 3"],
            "test_setup_code": "import math",
        }
    )
    assert (mbpp.prompt, mbpp.entry_point_of()) == ("", "add")
    assert mbpp.test == "import math\nassert add(1, 2) == 3\n"
    assert generation_prompt(mbpp) == '"""\nAdd two numbers.\nassert add(1, 2) == 3\n"""\n'
    humaneval = code_task(
        {
            "task_id": "HumanEval/0",
            "prompt": 'def inc(x):\n    """Add one to x."""\n',
            "canonical_solution": "    return x + 1\n",
            "test": "def check(candidate):\n    assert candidate(1) == 2\n",
            "entry_point": "inc",
        }
    )
    assert humaneval.text == "Add one to x."
    assert humaneval.reference == 'def inc(x):\n    """Add one to x."""\n    return x + 1\n'
    assert generation_prompt(humaneval) == humaneval.prompt
    assert json.loads(json.dumps(humaneval.as_row()))["entry_point"] == "inc"


def test_refine_prompt_shows_the_description_and_the_whole_program():
    task = code_task(
        {"task_id": "h", "prompt": 'def inc(x):\n    """Add one to x."""\n', "test": "assert inc(1) == 2"}
    )
    program = program_from_completion(task, "    return x - 1\n")
    prompt = refinement_prompt(feedback_item(task, program, "Subtracts."))
    assert prompt.startswith('OLD CODE:\n"""\nAdd one to x.\n"""\ndef inc(x):\n    """Add one to x."""\n')
    assert completion_for(task, program) == "    return x - 1\n"


# -- program extraction ----------------------------------------------------------------------------


def test_extraction_stops_at_the_end_of_the_function():
    prompt = 'def add(a, b):\n    """Add."""\n'
    completion = "    return a + b\n\ndef other():\n    pass\nprint(add(1, 2))"
    assert extract_program(prompt, completion) == prompt + "    return a + b\n"
    trailing = "def f(x):\n    return 1\n\n\nif __name__ == '__main__':\n    f(2)\nmore text"
    assert extract_program("", trailing) == "def f(x):\n    return 1\n"
    assert extract_program("", "def f(x):\n    return 1\nThat is my answer.") == "def f(x):\n    return 1\n"


def test_extraction_keeps_helpers_before_the_entry_point_and_drops_a_cut_last_line():
    completion = "import math\n\ndef helper(x):\n    return x\n\ndef f(x):\n    return helper(x)\n# done"
    assert extract_program("", completion, entry_point="f") == (
        "import math\n\ndef helper(x):\n    return x\n\ndef f(x):\n    return helper(x)\n"
    )
    cut = "def f(x):\n    y = x + 1\n    return y +"
    assert extract_program("", cut) == "def f(x):\n    y = x + 1\n"


# -- pass@k ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ks, n, temperature, message",
    [((1, 10), 5, 0.8, "n >= k"), ((1,), 10, 0.0, "greedy"), ((1,), 30, 0, "greedy")],
)
def test_pass_at_k_is_refused_where_it_would_be_wrong(ks, n, temperature, message):
    with pytest.raises(ValueError, match=message):
        check_pass_at_k(ks, n, temperature)
    with pytest.raises(ValueError, match=message):
        evaluate_pass_at_k(_Scripted({}), [_task("t")], ks, SamplingConfig(n=n, temperature=temperature))


def test_greedy_pass_at_1_with_one_sample_is_allowed():
    check_pass_at_k((1,), 1, 0.0)


class _Scripted:
    """A backend that writes the given completions for each prompt, in turn."""

    name = "scripted"

    def __init__(self, by_prompt):
        self.by_prompt = by_prompt
        self.configs = []

    def generate(self, prompts, config: GenerationConfig):
        self.configs.append(config)
        return [self.by_prompt[p][: config.n] for p in prompts]


def _task(name, test=None):
    return CodeTask(task_id=name, text=f"Return {name}.", test=test or f"assert {name}() == 1\n")


def test_pass_at_k_reports_per_task_counts_and_tests_errors_once():
    good, broken = _task("one"), _task("two", test="from numpy import isclose\nassert two() == 1\n")
    right = "def one():\n    return 1\n"
    wrong = "def one():\n    return 2\n"
    backend = _Scripted(
        {
            generation_prompt(good): [right, wrong, wrong, right + "\nprint('trailing')"],
            generation_prompt(broken): ["def two():\n    return 1\n"] * 4,
        }
    )
    result = evaluate_pass_at_k(backend, [good, broken], ks=(1, 2), config=SamplingConfig(n=4))
    [count] = result.per_task
    assert (count.task_id, count.n, count.c) == ("one", 4, 2)
    assert result.tests_error == ("two",)
    assert result.pass_at[1] == pytest.approx(0.5)
    assert result.pass_at[2] == pytest.approx(1 - (2 * 1) / (4 * 3))
    config = backend.configs[0]
    assert (config.n, config.temperature, config.top_p, config.max_new_tokens) == (4, 0.8, 0.95, 512)
    assert "\ndef " in config.stop


def test_run_unit_tests_many_keeps_the_order_with_helpers():
    results = run_unit_tests_many(
        ["def f():\n    return 1\n", "def f():\n    return 2\n"],
        APPROX_TESTS.replace("area(2)", "f()").replace("12.566370614359172", "1"),
    )
    assert [r.status for r in results] == ["pass", "fail"]


@pytest.mark.parametrize("limits", LAYERS)
def test_the_stand_in_is_the_only_pytest_and_the_real_one_stays_out_of_reach(limits):
    real = Path(pytest.__file__).resolve()
    tests = (
        "import pytest\n"
        "def test_stand_in():\n"
        "    assert pytest.__file__ == '<sandbox_lib/pytest.py>'\n"
        "    assert not hasattr(pytest, 'fixture')\n"
        "def test_real_file_unreadable():\n"
        "    try:\n"
        f"        open({str(real)!r}).read()\n"
        "    except OSError:\n"
        "        return\n"
        "    raise AssertionError('read the real pytest')\n"
    )
    result = run_unit_tests("", tests, limits=limits)
    assert (result.status, result.passed) == ("pass", 2), result.output
