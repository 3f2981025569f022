"""A reward model in the ILF paper's Yes/No formulation, trained as a LoRA adapter on comparisons.

For every comparison (prompt, chosen, rejected) that raters made, the language model learns

    "<prompt><chosen>\\n\\nIs this a good answer?"   →  " Yes"
    "<prompt><rejected>\\n\\nIs this a good answer?" →  " No"

with the loss on the answer token alone (`train_lora` with no EOS after the answer). A candidate's
reward is then read from the next-token distribution after the question:
P(" Yes") / (P(" Yes") + P(" No")), a number in (0, 1) that ranks the best of N samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from feedback_loop.engine.scoring import yes_probability
from feedback_loop.engine.train import LoRATrainingConfig, TrainingResult, train_lora
from feedback_loop.engine.types import GenerationConfig, ModelBackend, SFTExample

QUESTION = "\n\nIs this a good answer?"
YES = " Yes"
NO = " No"


@dataclass(frozen=True)
class Comparison:
    prompt: str  # the input both outputs answer
    chosen: str  # the output raters preferred
    rejected: str  # the output they liked less


def reward_model_input(prompt: str, candidate: str) -> str:
    """The text after which the reward model answers " Yes" or " No"."""
    return f"{prompt}{candidate}{QUESTION}"


def reward_model_examples(comparisons: Sequence[Comparison]) -> list[SFTExample]:
    """Two training examples per comparison: the preferred output → " Yes", the other → " No"."""
    examples = []
    for c in comparisons:
        examples.append(SFTExample(prompt=reward_model_input(c.prompt, c.chosen), completion=YES))
        examples.append(SFTExample(prompt=reward_model_input(c.prompt, c.rejected), completion=NO))
    return examples


def _check_single_token_answers(model: str | Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    ids = {answer: tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in (YES, NO)}
    if any(len(i) != 1 for i in ids.values()):
        raise ValueError(f"the reward model needs {YES!r} and {NO!r} to be one token each; got {ids}")


def train_reward_model(
    model: str | Path,
    comparisons: Sequence[Comparison],
    output_dir: str | Path,
    config: LoRATrainingConfig | None = None,
    *,
    eval_comparisons: Sequence[Comparison] = (),
    progress: bool = True,
) -> TrainingResult:
    """Train the Yes/No reward model as a LoRA adapter on `model`; loss on the answer token only."""
    _check_single_token_answers(model)
    # No EOS after the answer: the one token " Yes" / " No" is all the model is asked to predict.
    config = dataclasses.replace(config or LoRATrainingConfig(), append_eos=False)
    return train_lora(
        model,
        reward_model_examples(comparisons),
        output_dir,
        config,
        eval_examples=reward_model_examples(eval_comparisons),
        progress=progress,
    )


def reward_scores(backend: ModelBackend, prompt: str, candidates: Sequence[str]) -> list[float]:
    """P(Yes) / (P(Yes) + P(No)) for each candidate, from a backend that runs the reward model."""
    logprobs = backend.next_token_logprobs([reward_model_input(prompt, c) for c in candidates], [YES, NO])
    return [yes_probability(lp[YES], lp[NO]) for lp in logprobs]


def score_with_reward_model(
    model: str | Path,
    adapter_dir: str | Path,
    prompt: str,
    candidates: Sequence[str],
    *,
    batch_size: int = 8,
    device: str | None = None,
) -> list[float]:
    """Load the base model with the reward adapter and score the candidates in batches of `batch_size`.

    To score many prompts, build one `HFBackend(model, adapter=adapter_dir)` and call `reward_scores`.
    """
    from feedback_loop.engine.backends.hf import HFBackend

    backend = HFBackend(model, adapter=adapter_dir, batch_size=batch_size, device=device)
    return reward_scores(backend, prompt, candidates)


@dataclass(frozen=True)
class BestOfN:
    text: str  # the sample the reward model ranked highest
    index: int  # its position among the samples
    scores: list[float]  # every sample's reward, in sampling order
    samples: list[str]  # every sample, in sampling order


def best_of_n(
    policy: ModelBackend,
    reward: ModelBackend,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    reward_prompts: Sequence[str] | None = None,
    transform: Callable[[str], str] | None = None,
) -> list[BestOfN]:
    """Sample `config.n` outputs per prompt from `policy` and keep the one `reward` ranks highest.

    The ILF paper's "ILF + best-of-64" setting: the fine-tuned model's samples, re-ranked by a reward
    model trained on raters' comparisons. `transform` turns a sample into what is scored and kept (a
    code sample into its program); `reward_prompts` is the input the reward model sees (default: the
    prompts). Greedy decoding would give n copies of one sample, so it is refused for n > 1.
    """
    if config.n > 1 and config.temperature <= 0:
        raise ValueError("best-of-n needs n distinct samples: sample at temperature > 0")
    reward_prompts = list(reward_prompts) if reward_prompts is not None else list(prompts)
    if len(reward_prompts) != len(prompts):
        raise ValueError("best_of_n needs one reward prompt per prompt")
    results = []
    for prompt, samples in zip(reward_prompts, policy.generate(prompts, config), strict=True):
        samples = [transform(s) for s in samples] if transform else list(samples)
        scores = reward_scores(reward, prompt, samples)
        index = max(range(len(scores)), key=lambda i: (scores[i], -i))
        results.append(BestOfN(samples[index], index, scores, samples))
    return results
