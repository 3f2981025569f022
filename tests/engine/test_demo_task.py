"""The demo's templated task and its mechanical held-out metric."""

from feedback_loop.engine.demo_task import sentence_task
from feedback_loop.engine.evaluate import mention_accuracy, missing_mentions
from feedback_loop.engine.types import GenerationConfig


class CannedBackend:
    """Answers each prompt with a fixed text, so the metric's arithmetic can be checked."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, config):
        assert config.n == 1
        return [[self.answers[p]] for p in prompts]


def test_the_held_out_prompts_name_pairs_no_train_prompt_names_and_the_task_is_reproducible():
    prompts = sentence_task(n_train=96, n_eval=24, seed=0)
    train = {p.must_include for p in prompts if p.split == "train"}
    held_out = {p.must_include for p in prompts if p.split == "eval"}
    assert len(train) == 96 and len(held_out) == 24 and not train & held_out
    assert all(not missing_mentions(p.reference, p.must_include) for p in prompts)
    assert sentence_task(n_train=96, n_eval=24, seed=0) == prompts
    assert sentence_task(n_train=96, n_eval=24, seed=1) != prompts


def test_mention_accuracy_is_the_share_of_outputs_that_mention_everything_they_must():
    backend = CannedBackend({"a": "The cat sees A red ball.", "b": "The cat sees the door.", "c": ""})
    wanted = [("the cat", "a red ball"), ("the cat", "a red ball"), ("the cat",)]

    accuracy = mention_accuracy(backend, ["a", "b", "c"], wanted, GenerationConfig(n=4))

    assert accuracy == 1 / 3
    assert missing_mentions("The cat sees the door.", ("the cat", "a red ball")) == ["a red ball"]
