"""Plain data shared by every part of the engine, and the one interface a model backend offers.

Nothing here imports torch, so `import feedback_loop.engine` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64  # tokens generated after the prompt, at most
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling mass (used only when temperature > 0)
    n: int = 1  # samples per prompt
    seed: int | None = 0  # seed for sampling; None draws from the global generator
    stop: tuple[str, ...] = ()  # the output is cut before the first of these strings
    bad_words: tuple[str, ...] = ()  # texts the model may never write (e.g. control tokens)


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # sum of log p(continuation tokens | prompt)
    n_tokens: int  # number of continuation tokens scored


@dataclass(frozen=True)
class SFTExample:
    prompt: str  # the input the model sees (no loss on it)
    completion: str  # the text it should learn to write (loss on these tokens only)


@runtime_checkable
class ModelBackend(Protocol):
    """What the engine needs from a language model, wherever it runs."""

    name: str

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        """One list of `config.n` completions per prompt (the prompt is not repeated)."""
        ...

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ContinuationScore]:
        """Log-probability of each continuation given its prompt (pairwise, same length)."""
        ...

    def next_token_logprobs(self, prompts: Sequence[str], tokens: Sequence[str]) -> list[dict[str, float]]:
        """Log-prob of each candidate next token (e.g. " Yes", " No") after each prompt."""
        ...


@dataclass(frozen=True)
class FeedbackItem:
    prompt: str  # the input: a task, a post to summarise, a code task's description
    output: str  # the model's output that the feedback is about
    feedback: str  # what a rater wrote about the output
    kind: str = "text"  # "text" or "code": picks the refinement prompt and the selection method
    tests: str = ""  # code tasks: unit tests a refinement must pass (run in the sandbox)
    entry_point: str | None = None  # code tasks: the function a HumanEval-style `check` receives


@dataclass(frozen=True)
class Refinement:
    text: str  # the improved output
    source: str = "model"  # "model" (sampled by the refiner) or "human" (a rater's fix)
    sample_index: int = 0  # which of the N samples it was, counted before filtering
