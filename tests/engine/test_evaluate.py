"""Held-out loss, pass@k, win rate and multiple choice give the numbers worked out by hand."""

import math
from collections.abc import Callable, Sequence

import pytest

from feedback_loop.engine.evaluate import (
    MultipleChoiceItem,
    WinRate,
    held_out_loss,
    mean_pass_at_k,
    multiple_choice,
    pass_at_k,
    win_rate,
)
from feedback_loop.engine.types import ContinuationScore, GenerationConfig, ModelBackend, SFTExample


class FakeBackend:
    """A ModelBackend whose log-probs are chosen by the test: `logprob(prompt, continuation)`."""

    name = "fake"

    def __init__(self, logprob: Callable[[str, str], float], n_tokens: Callable[[str], int] = lambda c: 1):
        self.logprob = logprob
        self.n_tokens = n_tokens
        self.score_calls = 0

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        return [[""] * config.n for _ in prompts]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ContinuationScore]:
        self.score_calls += 1
        return [
            ContinuationScore(self.logprob(p, c), self.n_tokens(c))
            for p, c in zip(prompts, continuations, strict=True)
        ]

    def next_token_logprobs(self, prompts: Sequence[str], tokens: Sequence[str]) -> list[dict[str, float]]:
        return [{t: self.logprob(p, t) for t in tokens} for p in prompts]


def test_fake_backend_is_a_model_backend():
    assert isinstance(FakeBackend(lambda p, c: 0.0), ModelBackend)


# --- pass@k ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # pass@1 is the fraction that passed
        (10, 3, 2, 1 - 21 / 45),  # 1 - C(7,2)/C(10,2)
        (10, 0, 5, 0.0),  # nothing passed
        (10, 8, 3, 1.0),  # n - c < k: every draw of 3 holds a pass
        (1, 1, 1, 1.0),
        (200, 1, 100, 0.5),  # 1 - C(199,100)/C(200,100) = 1 - 100/200
    ],
)
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_formula_everywhere():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_over_tasks():
    passed = [[True, False, False, False, False], [True, True, False, False, False]]
    assert mean_pass_at_k(passed, 1) == pytest.approx((0.2 + 0.4) / 2)


# --- win rate -------------------------------------------------------------------------------------


def test_ties_count_half_in_the_win_rate():
    result = win_rate([1, 0, 0.5, 1])

    assert result.rate == pytest.approx(0.625)
    assert result.n == 4
    assert result.low <= result.rate <= result.high


def test_win_rate_interval_is_reproducible_for_a_seed():
    outcomes = [1, 0, 0.5, 1, 0, 1, 1, 0, 0.5, 1] * 3

    assert win_rate(outcomes, seed=3) == win_rate(outcomes, seed=3)


def test_win_rate_interval_agrees_with_the_normal_approximation():
    # 60 wins in 100: standard error sqrt(0.6 * 0.4 / 100) = 0.049, so about 0.6 +- 0.096.
    result = win_rate([1] * 60 + [0] * 40, n_boot=4000)

    assert result.low == pytest.approx(0.6 - 1.96 * 0.049, abs=0.02)
    assert result.high == pytest.approx(0.6 + 1.96 * 0.049, abs=0.02)


def test_win_rate_interval_narrows_with_more_comparisons():
    small = win_rate([1, 0] * 10)
    large = win_rate([1, 0] * 500)

    assert large.high - large.low < (small.high - small.low) / 3


def test_unanimous_outcomes_give_a_point_interval():
    assert win_rate([1, 1, 1]) == WinRate(rate=1.0, low=1.0, high=1.0, n=3)


@pytest.mark.parametrize("outcomes", [[], [1, 2], [0.3]])
def test_win_rate_refuses_outcomes_that_are_not_win_tie_or_loss(outcomes):
    with pytest.raises(ValueError):
        win_rate(outcomes)


# --- held-out loss --------------------------------------------------------------------------------


def test_held_out_loss_is_the_mean_nll_per_completion_token():
    table = {("p1", "aa"): (-2.0, 2), ("p2", "bbb"): (-6.0, 3)}
    backend = FakeBackend(lambda p, c: table[(p, c)][0], n_tokens=len)
    examples = [SFTExample("p1", "aa"), SFTExample("p2", "bbb")]

    assert held_out_loss(backend, examples) == pytest.approx((2.0 + 6.0) / (2 + 3))


def test_held_out_loss_refuses_an_empty_set():
    with pytest.raises(ValueError):
        held_out_loss(FakeBackend(lambda p, c: 0.0), [])


# --- multiple choice ------------------------------------------------------------------------------


def test_multiple_choice_accuracy_and_loss_match_hand_computed_values():
    table = {
        ("Q1", " yes"): -1.0,
        ("Q1", " no"): -2.0,
        ("Q2", " red"): -3.0,
        ("Q2", " green"): -1.0,
        ("Q2", " blue"): -2.0,
    }
    backend = FakeBackend(lambda p, c: table[(p, c)])
    items = [
        MultipleChoiceItem("Q1", (" yes", " no"), answer_index=0),
        MultipleChoiceItem("Q2", (" red", " green", " blue"), answer_index=2),
    ]

    result = multiple_choice(backend, items)

    loss_1 = -(-1.0 - math.log(math.exp(-1.0) + math.exp(-2.0)))
    loss_2 = -(-2.0 - math.log(math.exp(-3.0) + math.exp(-1.0) + math.exp(-2.0)))
    assert result.accuracy == 0.5
    assert result.loss == pytest.approx((loss_1 + loss_2) / 2)
    assert [s.predicted for s in result.per_item] == [0, 1]
    assert [s.correct for s in result.per_item] == [True, False]
    assert result.per_item[1].logprobs == (-3.0, -1.0, -2.0)
    assert math.fsum(math.exp(v) for v in result.per_item[1].log_softmax) == pytest.approx(1.0)
    assert backend.score_calls == 1  # every class of every item in one batch


def test_multiple_choice_loss_ignores_a_shared_offset_of_the_class_logprobs():
    items = [MultipleChoiceItem("Q", (" a", " b"), answer_index=1)]
    near = multiple_choice(FakeBackend(lambda p, c: {" a": -1.0, " b": -0.5}[c]), items)
    far = multiple_choice(FakeBackend(lambda p, c: {" a": -901.0, " b": -900.5}[c]), items)

    assert near.loss == pytest.approx(far.loss)
    assert near.loss == pytest.approx(math.log(1 + math.exp(-0.5)))


def test_multiple_choice_item_refuses_an_answer_outside_its_classes():
    with pytest.raises(ValueError):
        MultipleChoiceItem("Q", (" a", " b"), answer_index=2)


# --- on the tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    from feedback_loop.engine.backends.hf import HFBackend

    return HFBackend(tiny_model_dir, batch_size=8)


def test_tiny_model_finds_its_own_kind_of_text_likelier_than_noise(tiny_backend):
    question = "Question: Does the cat see the house?\nAnswer:"
    familiar = [SFTExample(question, " Yes"), SFTExample("", "The dog likes a red ball today.")]
    noise = [SFTExample(question, " qzx"), SFTExample("", "Xq vbz kq wprr jt yyx.")]

    familiar_loss = held_out_loss(tiny_backend, familiar)
    assert 0 < familiar_loss < held_out_loss(tiny_backend, noise)


def test_multiple_choice_on_the_tiny_model_gives_one_normalised_score_per_item(tiny_backend):
    items = [
        MultipleChoiceItem("The cat sees the", (" house", " zqx"), answer_index=0),
        MultipleChoiceItem("Question: Does the dog like the garden?\nAnswer:", (" Yes", " No", " Maybe"), 1),
    ]

    result = multiple_choice(tiny_backend, items)

    assert 0.0 <= result.accuracy <= 1.0
    assert result.loss > 0
    assert [len(s.logprobs) for s in result.per_item] == [2, 3]
    for score in result.per_item:
        assert math.fsum(math.exp(v) for v in score.log_softmax) == pytest.approx(1.0)
    assert result.per_item[0].predicted == 0  # a word it has seen beats letters it has not


# --- win rate from raters' comparisons, several per task ------------------------------------------


def test_win_rate_by_task_counts_ties_as_half_and_resamples_tasks():
    from feedback_loop.engine.evaluate import win_rate_by_task

    # Task a: three raters all prefer A; task b: three raters all prefer B; task c: a tie and a win.
    judgments = [("a", 1)] * 3 + [("b", 0)] * 3 + [("c", 0.5), ("c", 1)]
    result = win_rate_by_task(judgments, n_boot=4000)
    assert result.rate == pytest.approx(4.5 / 8)
    assert (result.n, result.n_tasks) == (8, 3)
    # Cluster-robust SE by hand: task sums 3, 0, 1.5 against rate * counts 1.6875, 1.6875, 1.125.
    residuals = [3 - 1.6875, 0 - 1.6875, 1.5 - 1.125]
    assert result.standard_error == pytest.approx(math.sqrt(3 / 2 * sum(r * r for r in residuals)) / 8)
    # Judgments treated as independent would give a much narrower interval than tasks resampled.
    naive = win_rate([o for _, o in judgments], n_boot=4000)
    assert result.high - result.low > 1.3 * (naive.high - naive.low)
    assert win_rate_by_task(judgments, n_boot=4000) == result  # seeded


def test_win_rate_by_task_refuses_bad_outcomes():
    from feedback_loop.engine.evaluate import win_rate_by_task

    with pytest.raises(ValueError):
        win_rate_by_task([("a", 2)])
    with pytest.raises(ValueError):
        win_rate_by_task([])
