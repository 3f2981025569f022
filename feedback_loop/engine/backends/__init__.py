"""Model backends: where the text comes from (a local transformers model or an HTTP server).

`load_backend({"kind": "hf", "model": "/models/tiny", "adapter": None})` or
`load_backend({"kind": "openai", "base_url": "http://vllm:8000/v1", "model": "name"})`; the other
keys are the backend's keyword arguments. Backends are imported lazily: only `hf` needs torch.
"""

from __future__ import annotations

from typing import Any

from feedback_loop.engine.types import ModelBackend


def load_backend(spec: dict[str, Any]) -> ModelBackend:
    """Build the backend that `spec["kind"]` names from the rest of the spec."""
    options = dict(spec)
    kind = options.pop("kind", "hf")
    if kind == "hf":
        from feedback_loop.engine.backends.hf import HFBackend

        return HFBackend(options.pop("model"), **options)
    if kind == "openai":
        from feedback_loop.engine.backends.openai import OpenAIBackend

        return OpenAIBackend(options.pop("base_url"), options.pop("model"), **options)
    raise ValueError(f"unknown backend kind {kind!r}; expected 'hf' or 'openai'")


__all__ = ["ModelBackend", "load_backend"]
