"""The backend interface, re-exported from `feedback_loop.engine.types` (its one definition)."""

from feedback_loop.engine.types import ContinuationScore, GenerationConfig, ModelBackend

__all__ = ["ContinuationScore", "GenerationConfig", "ModelBackend"]
