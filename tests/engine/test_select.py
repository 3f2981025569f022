import math

import pytest
import torch
import torch.nn.functional as F

from feedback_loop.engine.backends.hf import HFBackend
from feedback_loop.engine.prompts import INSTRUCT_RM_TEMPLATES, instruct_rm_answers, instruct_rm_prompts
from feedback_loop.engine.refine import FeedbackItem, Refinement
from feedback_loop.engine.scoring import yes_probability
from feedback_loop.engine.select import (
    select,
    select_by_instruct_rm,
    select_by_unit_tests,
    select_first,
    select_random,
)

MARKER = "zebra"  # the fine-tuned judge says Yes exactly when a refinement mentions a zebra


class LogprobBackend:
    """A judge whose P(Yes) per question comes from a function of the question, in one recorded call."""

    name = "stub"

    def __init__(self, p_yes):
        self.p_yes = p_yes
        self.calls = []

    def next_token_logprobs(self, prompts, tokens):
        self.calls.append((list(prompts), list(tokens)))
        positive, negative = {" Yes", " True"}, {" No", " False"}
        return [
            {
                t: math.log(self.p_yes(p) if t in positive else 1 - self.p_yes(p))
                for t in tokens
                if t in positive | negative
            }
            for p in prompts
        ]


ITEM = FeedbackItem(prompt="Describe the animal.", output="An animal.", feedback="Name the animal.")


def test_instruct_rm_averages_p_yes_over_templates_in_one_batched_call():
    # "good one" gets P(Yes) 0.3 under the first template and 0.9 under the others; "bad" ones 0.2.
    first_template_question = instruct_rm_prompts(ITEM, "good one")[0]

    def p_yes(question):
        if "good" not in question:
            return 0.2
        return 0.3 if question == first_template_question else 0.9

    backend = LogprobBackend(p_yes)
    candidates = [["bad one", "good one", "bad two"], [Refinement("good"), Refinement("bad")]]
    selections = select_by_instruct_rm(backend, [ITEM, ITEM], candidates)

    n_templates = len(INSTRUCT_RM_TEMPLATES)
    assert n_templates >= 3
    assert len(backend.calls) == 1
    [(prompts, tokens)] = backend.calls
    assert len(prompts) == 5 * n_templates and tokens == [" Yes", " No", " True", " False"]
    assert [s.index for s in selections] == [1, 0]
    assert selections[0].scores[0] == pytest.approx(0.2)
    assert selections[0].scores[1] == pytest.approx((0.3 + 0.9 * (n_templates - 1)) / n_templates)
    assert selections[1].scores == pytest.approx([0.9, 0.2])
    assert all(s.method == "instruct_rm" for s in selections)


def test_instruct_rm_score_is_p_yes_over_p_yes_plus_p_no():
    # Unnormalised: P(Yes)=0.06, P(No)=0.02 -> 0.75, whatever else the model puts its mass on.
    assert yes_probability(math.log(0.06), math.log(0.02)) == pytest.approx(0.75)
    assert yes_probability(-1000.0, 0.0) == pytest.approx(0.0)
    assert yes_probability(-math.inf, -math.inf) == 0.5


JUDGED_ITEMS = [
    FeedbackItem("Describe what the cat does.", "The cat sees the door.", "Mention the garden."),
    FeedbackItem("Describe what a child does.", "A child reads.", "Mention a short story."),
]
JUDGED_CANDIDATES = [
    ["The dog helps the garden.", f"The {MARKER} opens the garden.", "A bird finds the house."],
    [f"The {MARKER} reads a short story.", "My friend reads a short story."],
]


# The tiny model's vocabulary has no single " True" token: its judge learns the Yes/No templates.
YES_NO_TEMPLATES = tuple(t for t in INSTRUCT_RM_TEMPLATES if instruct_rm_answers(t) == (" Yes", " No"))


@pytest.fixture(scope="module")
def marker_judge_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model fine-tuned to answer " Yes" to every InstructRM question about a refinement
    that mentions the marker and " No" to the others, trained until it has learned them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    questions, answers = [], []
    for item, candidates in zip(JUDGED_ITEMS, JUDGED_CANDIDATES, strict=True):
        for candidate in candidates:
            for question in instruct_rm_prompts(item, candidate, YES_NO_TEMPLATES):
                questions.append(question)
                answers.append(tokenizer(" Yes" if MARKER in candidate else " No")["input_ids"][0])
    inputs = tokenizer(questions, return_tensors="pt", padding=True)
    position_ids = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    targets = torch.tensor(answers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    # The loss sits on a plateau for ~50 steps before attention finds the marker; stop once learned.
    for _ in range(300):
        logits = model(**inputs, position_ids=position_ids, logits_to_keep=1).logits[:, -1]
        loss = F.cross_entropy(logits, targets)
        if loss.item() < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, "the judge did not learn its answers; the test below would mean nothing"
    path = tmp_path_factory.mktemp("marker_judge")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_instruct_rm_picks_the_refinement_the_judge_says_yes_to(marker_judge_dir):
    judge = HFBackend(marker_judge_dir, batch_size=16)
    selections = select_by_instruct_rm(judge, JUDGED_ITEMS, JUDGED_CANDIDATES, templates=YES_NO_TEMPLATES)
    assert [s.index for s in selections] == [1, 0]
    # Read as P(Yes)/(P(Yes)+P(No)): high for the marker, low for the rest (inverted, it would pick another).
    assert selections[0].scores[1] > 0.9 > 0.1 > max(selections[0].scores[0], selections[0].scores[2])


PROGRAM_PASSING = "def add(a, b):\n    return a + b\n"
PROGRAM_WRONG = "def add(a, b):\n    return a - b\n"
PROGRAM_BROKEN = "def add(a, b)\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(-1, 1) == 0\n"


def test_unit_test_selection_keeps_the_first_passing_candidate_and_reports_each():
    selection = select_by_unit_tests(
        [PROGRAM_BROKEN, PROGRAM_WRONG, Refinement(PROGRAM_PASSING), PROGRAM_PASSING + "# again\n"], TESTS
    )
    assert selection.index == 2
    assert [r.status for r in selection.details] == ["error", "fail", "pass", "pass"]
    assert selection.scores[0] == 0.0
    assert selection.scores[1] == pytest.approx(1 / 3)  # add(0, 0) == 0 passes with a - b
    assert selection.scores[2:] == [1.0, 1.0]


def test_unit_test_selection_chooses_nothing_when_nothing_passes():
    assert select_by_unit_tests([PROGRAM_WRONG], TESTS).index is None
    assert select_by_unit_tests([], TESTS).index is None


def test_random_selection_is_seeded_and_first_takes_the_first():
    candidates = [list("abcdef")] * 20 + [[]]
    a = select_random(candidates, seed=1)
    assert [s.index for s in a] == [s.index for s in select_random(candidates, seed=1)]
    assert [s.index for s in a] != [s.index for s in select_random(candidates, seed=2)]
    assert len({s.index for s in a[:-1]}) > 1 and a[-1].index is None
    assert [s.index for s in select_first([["x", "y"], []])] == [0, None]


def test_select_dispatches_by_method_name():
    code_item = FeedbackItem(
        "Add two numbers.", PROGRAM_WRONG, "Add, do not subtract.", kind="code", tests=TESTS
    )
    [by_tests] = select("unit_tests", [code_item], [[PROGRAM_WRONG, PROGRAM_PASSING]])
    assert by_tests.index == 1 and by_tests.method == "unit_tests"

    judge = LogprobBackend(lambda q: 0.8 if "second" in q else 0.4)
    [by_rm] = select("instruct_rm", [ITEM], [["first", "second"]], backend=judge)
    assert by_rm.index == 1

    reward = LogprobBackend(lambda q: 0.7 if q.startswith(ITEM.prompt + "first") else 0.1)
    [by_reward] = select("reward_model", [ITEM], [["second", "first"]], backend=reward)
    assert by_reward.index == 1 and by_reward.method == "reward_model"

    assert select("first", [ITEM], [["a", "b"]])[0].index == 0
    with pytest.raises(ValueError, match="unknown selection method"):
        select("vibes", [ITEM], [["a"]])
    with pytest.raises(ValueError, match="needs a backend"):
        select("instruct_rm", [ITEM], [["a"]])
    with pytest.raises(ValueError, match="needs tests"):
        select("unit_tests", [ITEM], [["a"]])


def test_every_instruct_rm_template_shows_input_output_feedback_and_refinement():
    item = FeedbackItem(prompt="INPUT-X", output="OUTPUT-X", feedback="FEEDBACK-X")
    questions = instruct_rm_prompts(item, "REFINEMENT-X")
    for question in questions:
        for part in ("INPUT-X", "OUTPUT-X", "FEEDBACK-X", "REFINEMENT-X"):
            assert part in question
        assert question.endswith("Answer:")
    pairs = {instruct_rm_answers(t) for t in INSTRUCT_RM_TEMPLATES}
    assert pairs == {(" Yes", " No"), (" True", " False")}


def test_unit_test_selection_says_when_the_tests_themselves_do_not_load():
    broken = select_by_unit_tests([PROGRAM_PASSING, PROGRAM_WRONG], "from numpy import isclose\n" + TESTS)
    assert broken.index is None and broken.tests_error
    assert [r.status for r in broken.details] == ["tests_error", "tests_error"]
    assert not select_by_unit_tests([PROGRAM_WRONG], TESTS).tests_error
