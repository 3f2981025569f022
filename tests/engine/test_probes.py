"""Regression probes, each as its paper defines it, on hand-made models with known answers, then on
the tiny model with the shipped example files."""

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict

import pytest

from feedback_loop.engine.probes import (
    COT_TRIGGER,
    FAMILIES,
    AmbiguousSequence,
    CompositionalItem,
    HypotheticalItem,
    LetteredQuestion,
    biased_context,
    compositional_consistency,
    example_files,
    hypothetical_consistency,
    load_lettered_questions,
    run_probes,
    run_rules,
    sequence_consistency,
)
from feedback_loop.engine.types import ContinuationScore, GenerationConfig, ModelBackend


class SycophantBackend:
    """A hand-made model. On a lettered question it picks the choice whose text is "right", except:
    questions in `confused` always get (A); questions in `follows_suggestion` take the letter of an
    "I think the answer is (X)" cue; questions in `follows_pattern` take (A) when every few-shot
    answer is (A). Asked to think step by step, it writes `reasoning` and states that letter; for
    questions in `admits` its reasoning names the cue."""

    name = "sycophant"

    def __init__(self, *, confused=(), follows_suggestion=(), follows_pattern=(), admits=()):
        self.confused, self.follows_suggestion, self.follows_pattern = (
            confused,
            follows_suggestion,
            follows_pattern,
        )
        self.admits = admits
        self.generate_calls: list[tuple[list[str], GenerationConfig]] = []

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        self.generate_calls.append((list(prompts), config))
        texts = []
        for prompt in prompts:
            letter = self._choice(prompt)
            question = self._block(prompt).split("\n", 1)[0].removeprefix("Question: ")
            why = (
                "You think so, and the previous answers follow a pattern."
                if question in self.admits
                else "I reason."
            )
            texts.append(f" {why} So the answer is ({letter}).")
        return [[t] * config.n for t in texts]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ContinuationScore]:
        return [
            ContinuationScore(0.0 if c == self._choice(p) else -5.0, 1)
            for p, c in zip(prompts, continuations, strict=True)
        ]

    def next_token_logprobs(self, prompts, tokens):
        raise NotImplementedError

    @staticmethod
    def _block(prompt: str) -> str:
        return prompt[prompt.rindex("Question: ") :]

    def _choice(self, prompt: str) -> str:
        block = self._block(prompt)
        question = block.split("\n", 1)[0].removeprefix("Question: ")
        if question in self.confused:
            return "A"
        suggestion = re.search(r"I think the answer is \(([A-Z])\)", block)
        if suggestion and question in self.follows_suggestion:
            return suggestion.group(1)
        shots = re.findall(r"(?:Answer: |answer is )\(([A-Z])\)", prompt[: prompt.rindex("Question: ")])
        if shots and set(shots) == {"A"} and question in self.follows_pattern:
            return "A"
        return next(
            letter for letter, text in re.findall(r"^\(([A-Z])\) (.*)$", block, re.M) if text == "right"
        )


QUESTIONS = [
    LetteredQuestion("Q1", ("right", "wrong", "wrong"), 0),
    LetteredQuestion("Q2", ("wrong", "right", "wrong"), 1),
    LetteredQuestion("Q3", ("wrong", "wrong", "right"), 2),
    LetteredQuestion("Q4", ("wrong", "right", "wrong"), 1),
]
FEW_SHOT = [
    LetteredQuestion("Shot 1", ("x", "y", "z"), 1, "Because y."),
    LetteredQuestion("Shot 2", ("x", "y", "z"), 2, "Because z."),
]


def sycophant(**kwargs) -> SycophantBackend:
    return SycophantBackend(
        confused={"Q4"}, follows_suggestion={"Q1", "Q2"}, follows_pattern={"Q3"}, **kwargs
    )


def test_sycophant_is_a_model_backend():
    assert isinstance(sycophant(), ModelBackend)


# --- biased context -------------------------------------------------------------------------------


@pytest.mark.parametrize("chain_of_thought", [False, True])
def test_biased_context_accuracy_and_flip_rate_match_hand_computed_values(chain_of_thought):
    results = biased_context(sycophant(), QUESTIONS, few_shot=FEW_SHOT, chain_of_thought=chain_of_thought)

    # Suggested answer: cues are the choice after the right one: Q1 (B), Q2 (C), Q3 (A), Q4 (C).
    # Without it: Q1-Q3 right, Q4 answers (A), wrong. With it: Q1 and Q2 follow the cue, Q4 stays (A).
    suggested = results["suggested_answer"]
    assert (suggested.accuracy_unbiased, suggested.accuracy_biased) == (0.75, 0.25)
    assert suggested.flip_to_cue_rate == 2 / 4  # all four could flip; Q1 and Q2 did
    # Always (A): Q1's right choice moves to (B). Q4 already answers (A) without the cue, so only
    # Q1-Q3 could flip, and only Q3 (which follows the pattern) does.
    always_a = results["always_a"]
    assert (always_a.accuracy_unbiased, always_a.accuracy_biased) == (0.75, 0.5)
    assert always_a.flip_to_cue_rate == pytest.approx(1 / 3)
    assert suggested.n == always_a.n == 4


def test_a_model_that_ignores_cues_neither_loses_accuracy_nor_flips():
    results = biased_context(SycophantBackend(), QUESTIONS, few_shot=FEW_SHOT, chain_of_thought=False)

    for result in results.values():
        assert (result.accuracy_unbiased, result.accuracy_biased, result.flip_to_cue_rate) == (1.0, 1.0, 0.0)


def test_chain_of_thought_is_written_in_full_kept_and_checked_for_the_cue():
    backend = sycophant(admits={"Q1"})
    results = biased_context(backend, QUESTIONS, few_shot=FEW_SHOT)

    [(prompts, config)] = backend.generate_calls
    assert all(p.endswith(COT_TRIGGER) for p in prompts)
    assert config.temperature == 0.0 and config.max_new_tokens == 512 and "\n\n" in config.stop
    # The few-shot examples show their explanations before their answers.
    assert "Answer: Let's think step by step. Because y. So the answer is (B)." in prompts[0]
    suggested = results["suggested_answer"]
    assert suggested.n_flipped == 2  # Q1 and Q2; only Q1's explanation names the cue
    assert suggested.mentions_cue_rate == 0.5
    [q1] = [e for e in suggested.examples if e["question"].startswith("Question: Q1")]
    assert (
        q1["reasoning_biased"]
        == " You think so, and the previous answers follow a pattern. So the answer is (B)."
    )
    assert (q1["cue"], q1["answer_biased"], q1["flipped_to_cue"], q1["mentions_cue"]) == (
        "B",
        "B",
        True,
        True,
    )
    assert results["always_a"].mentions_cue_rate == 0.0  # Q3 flipped without saying why
    json.dumps([r.examples for r in results.values()])  # stored with the round as JSON


class CueJudge:
    """An instruction-following judge: P(Yes) 0.9 for the explanations of the questions in `sees`."""

    name = "judge"

    def __init__(self, sees):
        self.sees = sees
        self.calls = []

    def next_token_logprobs(self, prompts, tokens):
        self.calls.append((list(prompts), list(tokens)))
        return [
            {
                " Yes": math.log(0.9 if re.search(r"Question: (Q\d)", p).group(1) in self.sees else 0.1),
                " No": math.log(0.1 if re.search(r"Question: (Q\d)", p).group(1) in self.sees else 0.9),
            }
            for p in prompts
        ]


def test_a_judge_model_can_decide_whether_explanations_mention_the_cue():
    # Q1's explanation names the cue in words the keyword match knows; the judge says only Q2's does.
    judge = CueJudge(sees={"Q2"})
    results = biased_context(sycophant(admits={"Q1"}), QUESTIONS, few_shot=FEW_SHOT, cue_judge=judge)

    suggested = results["suggested_answer"]
    assert suggested.cue_detector == "judge" and suggested.n_flipped == 2  # Q1 and Q2
    assert suggested.mentions_cue_rate == 0.5
    by_question = {e["question"].split("\n", 1)[0]: e for e in suggested.examples}
    assert (by_question["Question: Q1"]["mentions_cue"], by_question["Question: Q2"]["mentions_cue"]) == (
        False,
        True,
    )
    assert by_question["Question: Q2"]["mentions_cue_p_yes"] == pytest.approx(0.9)
    # One batched yes/no question per cue, about each explanation written under the cue.
    assert len(judge.calls) == 2 and all(tokens == [" Yes", " No"] for _, tokens in judge.calls)
    [q1_question] = [p for p in judge.calls[0][0] if "Question: Q1" in p]
    assert "Explanation: You think so, and the previous answers follow a pattern." in q1_question
    assert "suggested an answer" in q1_question
    # Without a judge the keyword match decides, as before.
    assert (
        biased_context(sycophant(admits={"Q1"}), QUESTIONS, few_shot=FEW_SHOT)[
            "suggested_answer"
        ].cue_detector
        == "keyword"
    )


def test_without_chain_of_thought_the_judge_is_not_asked():
    judge = CueJudge(sees={"Q1", "Q2"})
    results = biased_context(
        sycophant(), QUESTIONS, few_shot=FEW_SHOT, chain_of_thought=False, cue_judge=judge
    )
    assert judge.calls == [] and results["suggested_answer"].mentions_cue_rate is None


def test_few_shot_examples_need_their_explanation(tmp_path):
    path = tmp_path / "cot.jsonl"
    path.write_text(json.dumps({"few_shot": True, "question": "q", "choices": ["a", "b"], "answer_index": 0}))
    with pytest.raises(ValueError, match="explanation"):
        load_lettered_questions(path)
    few_shot, questions = load_lettered_questions(example_files("biased_context")[0])
    assert len(few_shot) == 3 and len(questions) >= 6 and all(q.explanation for q in few_shot)


# --- hypothetical and compositional consistency ---------------------------------------------------


class ScriptedBackend:
    """Greedy text from `write(prompt)`; a multiple-choice letter from `pick(prompt)` (score 0 for the
    picked continuation, -5 for the others)."""

    name = "scripted"

    def __init__(self, write, pick=lambda prompt: None):
        self.write, self.pick = write, pick

    def generate(self, prompts, config):
        return [[self.write(p)] * config.n for p in prompts]

    def score(self, prompts, continuations):
        return [
            ContinuationScore(0.0 if c == self.pick(p) else -5.0, 1)
            for p, c in zip(prompts, continuations, strict=True)
        ]

    def next_token_logprobs(self, prompts, tokens):
        raise NotImplementedError


HYPOTHETICAL = [HypotheticalItem(f"prompt {i}", (" other", " another")) for i in range(20)]


def own_letter(prompt):
    """The letter of the option that is this backend's own continuation (" mine")."""
    return re.search(r'^\(([A-Z])\) " mine"$', prompt, re.M).group(1)


def test_a_model_that_knows_its_own_output_is_consistent_beyond_chance():
    result = hypothetical_consistency(ScriptedBackend(lambda p: " mine", own_letter), HYPOTHETICAL)

    assert result.rate == 1.0 and result.chance == pytest.approx(1 / 3)
    assert result.p_value < 1e-6
    assert result.examples[0]["own"] == " mine"


def test_a_model_that_always_picks_a_is_consistent_only_where_its_output_landed_on_a():
    result = hypothetical_consistency(ScriptedBackend(lambda p: " mine", lambda p: "A"), HYPOTHETICAL)

    landed_on_a = [own_letter(e["options"]) == "A" for e in result.examples]
    assert result.consistent == tuple(landed_on_a)
    assert 0 < sum(landed_on_a) < 20  # the order is shuffled, seeded
    assert result.p_value > 0.01


def arithmetic_answer(wrong_on):
    def write(prompt):
        expression = re.match(r"Q: What is (.*)\?\nA:", prompt).group(1)
        value = eval(expression)  # the test's own expressions
        return f" {value + 1 if expression == wrong_on else value}"

    return write


def test_compositional_consistency_substitutes_the_models_own_sub_answer():
    items = [CompositionalItem("(3 + 4) * 2", "3 + 4"), CompositionalItem("(2 * 6) + 7", "2 * 6")]
    result = compositional_consistency(ScriptedBackend(arithmetic_answer(wrong_on="3 + 4")), items)

    # It says 3 + 4 = 8, so it is asked 8 * 2 = 16, unlike its 14 for the whole: inconsistent.
    assert result.consistent == (False, True)
    first = result.examples[0]
    assert (first["answer"], first["sub_answer"], first["substituted"], first["answer_substituted"]) == (
        14,
        8,
        "8 * 2",
        16,
    )
    with pytest.raises(ValueError):
        CompositionalItem("__import__('os')", "os")


# --- ambiguous sequences ---------------------------------------------------------------------------


def test_rules_run_in_the_sandbox_and_bad_ones_give_nothing():
    values = run_rules(
        [
            "lambda n: 2 ** n",
            "lambda n: 1 / 0",
            "lambda n: 'x'",
            "lambda n: (",
            "lambda n: open('/etc/passwd').read()",
        ],
        3,
    )
    assert values == [[1, 2, 4], None, None, None, None]


def test_sequence_consistency_runs_the_models_rule_against_its_continuation():
    sequences = [
        AmbiguousSequence((1, 2, 4), ("lambda n: 2 ** n", "lambda n: n * (n + 1) // 2 + 1")),  # 8 or 7
        AmbiguousSequence((2, 4), ("lambda n: 2 * n + 2", "lambda n: 2 ** (n + 1)")),  # 6 or 8
        AmbiguousSequence((3, 6), ("lambda n: 3 * (n + 1)", "lambda n: 3 * 2 ** n")),  # 9 or 12
    ]

    def write(prompt):
        if prompt.startswith("Continue"):
            return {"1, 2, 4": " 8", "2, 4": " 8", "3, 6": " 10"}[re.search(r": (.*),$", prompt).group(1)]
        return {"1, 2, 4": " 2 ** n", "2, 4": " 2 ** n", "3, 6": " 3 * n + 3"}[
            re.search(r"sequence (.*) follows", prompt).group(1)
        ]

    result = sequence_consistency(ScriptedBackend(write), sequences, permutations=200)

    # 1,2,4: 8 is valid, 2**n gives 8: correct and consistent. 2,4: 8 is valid, but 2**n gives 4 next
    # (and does not fit 2, 4). 3,6: 10 is no rule's, 3n+3 gives 9: neither.
    assert result.correct_continuation == pytest.approx(2 / 3)
    assert result.consistency == pytest.approx(1 / 3)
    assert result.joint == pytest.approx(1 / 3)
    assert result.product == pytest.approx(2 / 9)
    assert result.rule_fits == pytest.approx(2 / 3)
    assert [e["rule_next"] for e in result.examples] == [8, 4, 9]
    # Against other sequences' answers, 2**n's 8 matches 2,4's 8 once and 1,2,4's 8... of 6 pairs:
    # rule_next [8, 4, 9] vs continuations [8, 8, 10]: pairs (0,1) match -> 1/6.
    assert result.chance_consistency == pytest.approx(1 / 6)
    assert 0 < result.p_value <= 1


class RankingBackend(ScriptedBackend):
    """ScriptedBackend whose log-probability of a continuation comes from `rank(prompt, continuation)`
    (spread over two tokens, so that the mean per token is half of it)."""

    def __init__(self, write, rank):
        super().__init__(write)
        self.rank = rank

    def score(self, prompts, continuations):
        return [
            ContinuationScore(2 * self.rank(p, c), 2) for p, c in zip(prompts, continuations, strict=True)
        ]


# (1, 2, 4): 8 or 7; (2, 4): 6 or 8; (3, 6): 9 or 12.
SEQUENCES = [
    AmbiguousSequence((1, 2, 4), ("lambda n: 2 ** n", "lambda n: n * (n + 1) // 2 + 1")),
    AmbiguousSequence((2, 4), ("lambda n: 2 * n + 2", "lambda n: 2 ** (n + 1)")),
    AmbiguousSequence((3, 6), ("lambda n: 3 * (n + 1)", "lambda n: 3 * 2 ** n")),
]
VALID = {"1, 2, 4": {8, 7}, "2, 4": {6, 8}, "3, 6": {9, 12}}
VALID_RULES = {
    "1, 2, 4": {"2 ** n", "n * (n + 1) // 2 + 1"},
    "2, 4": {"2 * n + 2", "2 ** (n + 1)"},
    "3, 6": {"3 * (n + 1)", "3 * 2 ** n"},
}


def shown_in(prompt):
    return re.search(r"sequence:? (.*?)(?:,$| follows)", prompt).group(1)


def valid_answer(prompt, continuation):
    shown = shown_in(prompt)
    if prompt.startswith("Continue"):
        return int(continuation) in VALID[shown]
    return continuation.strip() in VALID_RULES[shown]


def always_eight(prompt):
    return " 8" if prompt.startswith("Continue") else " 2 ** n"


def test_the_papers_test_asks_whether_every_valid_answer_beats_every_invalid_one():
    # A model that weighs both readings of each sequence above every wrong one passes everywhere.
    result = sequence_consistency(
        RankingBackend(always_eight, lambda p, c: 0.0 if valid_answer(p, c) else -3.0),
        SEQUENCES,
        permutations=10,
    )

    for test in (result.alternatives_completion, result.alternatives_rule):
        assert (test.rate, test.n) == (1.0, 3)
        # Two valid and three invalid answers per sequence: a random order passes 1 time in C(5, 2) = 10.
        assert test.chance == pytest.approx(1 / 10)
        assert test.p_value == pytest.approx(1 / 10**3)  # all three passing by chance
    for example, sequence in zip(result.examples, SEQUENCES, strict=True):
        shown = sequence.shown()
        invalid = example["invalid_alternatives"]
        assert len(invalid) == 3
        # Other sequences' rules that do not fit this one, giving numbers no valid rule gives.
        assert not {i["rule"] for i in invalid} & set(sequence.rules)
        assert not {i["next"] for i in invalid} & VALID[shown]
        assert list(sequence.terms) not in run_rules([i["rule"] for i in invalid], len(sequence.terms))
        assert example["alternatives_pass"] == {"completion": True, "rule": True}
    json.dumps(asdict(result))


def test_a_model_sure_of_one_reading_fails_the_papers_test():
    # Its own answer first, every other answer (the other valid one too) below the invalid ones.
    def rank(prompt, continuation):
        own = always_eight(prompt).strip()
        return 0.0 if continuation.strip() == own else (-5.0 if valid_answer(prompt, continuation) else -3.0)

    result = sequence_consistency(RankingBackend(always_eight, rank), SEQUENCES, permutations=10)

    assert result.alternatives_completion.rate == 0.0 and result.alternatives_rule.rate == 0.0
    assert result.alternatives_completion.p_value == 1.0


def test_a_sequence_whose_rules_agree_or_do_not_fit_is_refused():
    with pytest.raises(ValueError, match="disagree"):
        sequence_consistency(
            ScriptedBackend(lambda p: " 1"),
            [AmbiguousSequence((2, 4), ("lambda n: 2 * n + 2", "lambda n: 2 * (n + 1)"))],
        )


# --- on the tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    from feedback_loop.engine.backends.hf import HFBackend

    return HFBackend(tiny_model_dir, batch_size=16)


def test_every_family_runs_on_the_tiny_model_with_the_example_files(tiny_backend):
    results = run_probes(tiny_backend, max_reasoning_tokens=24)

    assert set(results.details) == set(FAMILIES)
    metrics = results.metrics
    for task in ("classification", "sequence_prob", "logodds"):
        assert math.isfinite(metrics[f"inverse_scaling/{task}/loss"])
    for name, value in metrics.items():
        if not name.startswith("inverse_scaling/") or name.endswith("accuracy"):
            assert 0.0 <= value <= 1.0, name
    assert {"self_consistency/hypothetical", "self_consistency/compositional"} <= set(metrics)
    assert "self_consistency/sequences/consistency" in metrics
    cot = results.details["biased_context"]["suggested_answer"]
    assert cot["chain_of_thought"] and all("reasoning_biased" in e for e in cot["examples"])
    json.dumps(results.to_dict())


def test_probe_files_given_for_a_family_replace_its_examples(tiny_backend, tmp_path):
    task = tmp_path / "mine.csv"
    task.write_text("prompt,classes,answer_index\n\"Question: Is it?\nAnswer:\",\"[' Yes', ' No']\",0\n")

    results = run_probes(tiny_backend, files={"inverse_scaling": [task]}, families=[])

    assert list(results.details) == ["inverse_scaling"]
    assert set(results.metrics) == {"inverse_scaling/mine/loss", "inverse_scaling/mine/accuracy"}
    assert results.metrics["inverse_scaling/mine/accuracy"] in (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown probe families"):
        run_probes(tiny_backend, families=["nope"])


def test_the_probes_command_takes_files_by_family(tiny_model_dir, tmp_path, capsys):
    from feedback_loop.engine.cli import main as cli_main

    items = tmp_path / "arithmetic.jsonl"
    items.write_text(json.dumps({"expression": "(1 + 2) * 3", "sub_expression": "1 + 2"}) + "\n")
    cli_main(
        [
            *("probes", "--model", str(tiny_model_dir), "--families", "compositional_consistency"),
            *("--files", f"compositional_consistency={items}", "--output", str(tmp_path / "out.json")),
        ]
    )

    saved = json.loads((tmp_path / "out.json").read_text())
    assert list(saved["metrics"]) == ["self_consistency/compositional"]
    assert saved["details"]["compositional_consistency"]["examples"][0]["value"] == 9
    assert json.loads(capsys.readouterr().out) == saved


def test_the_probes_command_takes_a_judge_for_cue_mentions(tiny_model_dir, tmp_path):
    from feedback_loop.engine.cli import main as cli_main

    model = str(tiny_model_dir)
    cli_main(
        [
            *("probes", "--model", model, "--families", "biased_context", "--cue-judge", model),
            *("--max-reasoning-tokens", "8", "--output", str(tmp_path / "out.json")),
        ]
    )

    saved = json.loads((tmp_path / "out.json").read_text())
    for result in saved["details"]["biased_context"].values():
        assert result["cue_detector"] == "judge"
        assert all(0.0 <= e["mentions_cue_p_yes"] <= 1.0 for e in result["examples"])
