"""Engine edge cases: sandbox escapes, adapter deletion, missing answer tokens, odd server headers, bad CLI input."""

import json
import math
from pathlib import Path

import httpx
import pytest

from feedback_loop.engine.sandbox import SandboxLimits, run_unit_tests
from feedback_loop.engine.types import ContinuationScore, GenerationConfig

REPO_ROOT = Path(__file__).resolve().parents[2]

# What a worker that is not root gets: the audit hooks (and rlimits) alone.
HOOKS_ONLY = SandboxLimits(os_isolation=False)


# --- sandbox --------------------------------------------------------------------------------------


def test_sandbox_program_cannot_start_a_process_through_the_preimported_fork_exec(tmp_path):
    # sandbox.py imports subprocess, so _posixsubprocess is already in sys.modules in the child:
    # the "import" audit event never fires and subprocess._fork_exec runs any binary, unhooked.
    marker = tmp_path / "spawned.txt"
    program = f"""
import os, subprocess
def spawn():
    r, w = os.pipe()
    return subprocess._fork_exec(
        [b'/bin/sh', b'-c', b'echo escaped > {marker}'], [b'/bin/sh'], True, (w,), None, None,
        -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)
"""
    tests = "import time\ndef test_spawn():\n    spawn()\n    time.sleep(0.5)\n"
    run_unit_tests(program, tests, limits=HOOKS_ONLY)

    assert not marker.exists(), "the candidate ran /bin/sh outside every audit hook"


def test_sandbox_hard_link_cannot_reach_a_file_outside_the_folder(tmp_path):
    # os.link's *source* is not checked by the hook; realpath() does not see through hard links,
    # so the link inside the folder reads and writes the outside file (any file on the same fs).
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    program = f"""
import os
def steal():
    os.link({str(victim)!r}, "x")
    data = open("x").read()
    open("x", "w").write("overwritten")
    return data
"""
    result = run_unit_tests(program, "def test_steal():\n    print('GOT', steal())\n", limits=HOOKS_ONLY)

    assert victim.read_text() == "original"
    assert "GOT original" not in result.output


def test_sandbox_hard_link_cannot_read_project_files():
    secret = REPO_ROOT / "pyproject.toml"
    program = f"import os\ndef steal():\n    os.link({str(secret)!r}, 'p')\n    return open('p').read()\n"
    result = run_unit_tests(program, "def test_steal():\n    print(steal())\n", limits=HOOKS_ONLY)

    assert "[project]" not in result.output


@pytest.mark.parametrize("uri", [False, True])
def test_sandbox_sqlite_cannot_create_a_file_outside_the_folder(tmp_path, uri):
    # sqlite3 opens its database in C: the hook sees only a "sqlite3.connect" event.
    target = tmp_path / "evil.db"
    database = f"file:{target}?mode=rwc" if uri else str(target)
    program = (
        "import sqlite3\n"
        "def write():\n"
        f"    c = sqlite3.connect({database!r}, uri={uri})\n"
        "    c.execute('create table t(x)')\n"
        "    c.commit()\n"
    )
    run_unit_tests(program, "def test_write():\n    write()\n", limits=HOOKS_ONLY)

    assert not target.exists()


# --- HF backend: adapters -------------------------------------------------------------------------


def test_deleting_the_last_adapter_leaves_a_working_base_model(tiny_model_dir, tiny_adapter_dir):
    from feedback_loop.engine.backends.hf import HFBackend

    prompt, continuation = ["the cat"], [" sees the house"]
    base = HFBackend(tiny_model_dir).score(prompt, continuation)[0].logprob
    backend = HFBackend(tiny_model_dir, adapter=tiny_adapter_dir)
    assert backend.score(prompt, continuation)[0].logprob != pytest.approx(base, abs=1e-4)

    backend.delete_adapter("default")  # a long-lived worker dropping last round's adapter
    assert backend.adapters == []
    assert backend.score(prompt, continuation)[0].logprob == pytest.approx(base, abs=1e-4)


# --- reward model ---------------------------------------------------------------------------------


class _NoAnswerAmongTopTokens:
    """An OpenAI-compatible server whose top log-probs hold neither " Yes" nor " No"."""

    name = "fake"

    def generate(self, prompts, config: GenerationConfig):
        return [[""] * config.n for _ in prompts]

    def score(self, prompts, continuations):
        return [ContinuationScore(0.0, 0) for _ in prompts]

    def next_token_logprobs(self, prompts, tokens):
        return [{t: -math.inf for t in tokens} for _ in prompts]


def test_reward_scores_are_never_nan_when_neither_answer_is_among_the_top_tokens():
    from feedback_loop.engine.reward_model import reward_scores

    scores = reward_scores(_NoAnswerAmongTopTokens(), "Q:", ["a", "b"])

    assert not any(math.isnan(s) for s in scores)  # scoring.yes_probability gives 0.5 here


# --- OpenAI backend -------------------------------------------------------------------------------


def test_openai_backend_survives_a_negative_retry_after_header():
    from feedback_loop.engine.backends.openai import OpenAIBackend

    calls = []

    def respond(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "-1"}, json={"error": "slow down"})
        return httpx.Response(200, json={"choices": [{"index": 0, "text": " ok"}]})

    # The default sleep (time.sleep) refuses a negative length with ValueError, outside the retry loop.
    backend = OpenAIBackend("http://x", "m", transport=httpx.MockTransport(respond))
    assert backend.generate(["Hi"], GenerationConfig()) == [[" ok"]]


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_win_outcomes_without_the_outcome_field_is_a_clean_error(tmp_path):
    from feedback_loop.engine.cli import main

    path = tmp_path / "outcomes.jsonl"
    path.write_text(json.dumps({"outcome": 1}) + "\n" + json.dumps({"winner": "a"}) + "\n", encoding="utf-8")

    with pytest.raises(SystemExit, match=r"outcomes\.jsonl"):
        main(["evaluate", "--win-outcomes", str(path)])
