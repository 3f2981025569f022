"""The machine-learning core of Refinery: plain Python, no Django.

Model backends, prompts, refinement, selection, LoRA training, evaluation and probes. Heavy
libraries (torch, transformers, peft) are imported inside the modules that need them, so importing
this package is cheap.
"""

from feedback_loop.engine.types import ContinuationScore, GenerationConfig, ModelBackend, SFTExample

__all__ = ["ContinuationScore", "GenerationConfig", "ModelBackend", "SFTExample"]
