import pytest

from feedback_loop.engine.backends.hf import HFBackend
from feedback_loop.engine.prompts import refinement_prompt
from feedback_loop.engine.refine import (
    FeedbackItem,
    RefineConfig,
    filter_refinements,
    refine,
    repeated_ngram_fraction,
)

TEXT_ITEM = FeedbackItem(
    prompt="Summarise: The dog walks to the garden every morning.",
    output="The dog walks.",
    feedback="The summary should mention the garden.",
)
CODE_ITEM = FeedbackItem(
    prompt="Return the sum of a list.",
    output="def total(xs):\n    return xs[0]",
    feedback="Fix the bug: the function must return the sum.",
    kind="code",
)


class ScriptedBackend:
    """Returns canned samples and records what it was asked."""

    name = "scripted"

    def __init__(self, samples_by_prompt_start):
        self.samples_by_prompt_start = samples_by_prompt_start
        self.calls = []

    def generate(self, prompts, config):
        self.calls.append((list(prompts), config))
        out = []
        for prompt in prompts:
            [samples] = [s for start, s in self.samples_by_prompt_start.items() if prompt.startswith(start)]
            out.append(samples[: config.n])
        return out


def test_filter_drops_empty_copies_duplicates_and_repetitive_samples():
    samples = [
        " The dog walks to the garden.",
        "   \n ",
        "The  dog walks.",  # the original output, up to whitespace
        "The dog walks to the garden.",  # a duplicate of the first, up to whitespace
        "the the the the the the the the the the the the",
        "",
        "Every morning the dog walks to the garden.",
    ]
    kept = filter_refinements(samples, TEXT_ITEM)
    assert [r.text for r in kept] == [
        "The dog walks to the garden.",
        "Every morning the dog walks to the garden.",
    ]
    assert [r.sample_index for r in kept] == [0, 6]
    assert all(r.source == "model" for r in kept)


def test_repetition_check_flags_loops_but_not_ordinary_sentences():
    assert repeated_ngram_fraction("a red ball a red ball a red ball a red ball a red ball") > 0.5
    assert repeated_ngram_fraction("The cat sees a red ball in the garden every morning.") == 0.0
    assert repeated_ngram_fraction("yes yes") == 0.0  # too short to judge


def test_code_refinements_keep_their_indentation():
    [kept] = filter_refinements(["\ndef total(xs):\n    return sum(xs)\n\n"], CODE_ITEM)
    assert kept.text == "def total(xs):\n    return sum(xs)"


def test_refinement_prompts_carry_input_output_and_feedback():
    text_prompt = refinement_prompt(TEXT_ITEM)
    code_prompt = refinement_prompt(CODE_ITEM)
    for item, prompt in ((TEXT_ITEM, text_prompt), (CODE_ITEM, code_prompt)):
        assert item.prompt.strip() in prompt and item.output.strip() in prompt and item.feedback in prompt
    assert text_prompt.endswith("Improved output:")
    assert code_prompt.startswith("OLD CODE:") and code_prompt.endswith("REFINEMENT:\n")
    with pytest.raises(ValueError, match="unknown feedback kind"):
        refinement_prompt(FeedbackItem("p", "o", "f", kind="poem"))


def test_refine_samples_n_per_item_with_kind_specific_stops_and_keeps_item_order():
    backend = ScriptedBackend(
        {
            "OLD CODE": ["def total(xs):\n    return sum(xs)", "def total(xs):\n    return xs[0]", ""],
            "Write an improved": [
                "The dog walks to the garden.",
                "The dog walks to the garden.",
                "The dog walks.",
            ],
        }
    )
    results = refine(backend, [CODE_ITEM, TEXT_ITEM, CODE_ITEM], n=3, config=RefineConfig(seed=5))
    assert [[r.text for r in rs] for rs in results] == [
        ["def total(xs):\n    return sum(xs)"],
        ["The dog walks to the garden."],
        ["def total(xs):\n    return sum(xs)"],
    ]
    # One batched call per kind, n samples each, sampling (not greedy), stops chosen by kind.
    assert len(backend.calls) == 2
    by_kind = {
        ("code" if prompts[0].startswith("OLD CODE") else "text"): cfg for prompts, cfg in backend.calls
    }
    assert len(backend.calls[0][0]) + len(backend.calls[1][0]) == 3
    assert by_kind["text"].n == 3 and by_kind["text"].temperature > 0 and by_kind["text"].seed == 5
    assert "\n\n" in by_kind["text"].stop
    assert "\nFEEDBACK" in by_kind["code"].stop


def test_refine_with_the_tiny_model_returns_distinct_nonempty_refinements(tiny_model_dir):
    backend = HFBackend(tiny_model_dir)
    config = RefineConfig(max_new_tokens=16, temperature=1.0)
    [refinements] = refine(backend, [TEXT_ITEM], n=5, config=config)
    assert 1 <= len(refinements) <= 5
    texts = [r.text for r in refinements]
    assert all(t.strip() for t in texts)
    assert len(set(texts)) == len(texts)
    assert TEXT_ITEM.output not in texts
    assert refine(backend, [TEXT_ITEM], n=5, config=config) == [refinements]  # reproducible under the seed
