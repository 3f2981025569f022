"""Scores read from a model's next-token distribution, shared by the selectors and the reward model."""

from __future__ import annotations

import math


def yes_probability(logprob_yes: float, logprob_no: float) -> float:
    """P(Yes) / (P(Yes) + P(No)) = sigmoid(log P(Yes) - log P(No)), without overflow."""
    if logprob_yes == -math.inf and logprob_no == -math.inf:
        return 0.5  # neither answer is among the server's top tokens: no information
    x = logprob_yes - logprob_no
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))
