"""Shared fixtures for the engine tests: CPU only, one thread, no network, one tiny model per session."""

import os
import sys
from pathlib import Path

# Set before transformers is imported anywhere: tests must never reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `.venv/bin/pytest` does not put the repository root on sys.path; the engine must be importable.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

# The machine is shared: one thread keeps tests from starving each other (and keeps them deterministic).
torch.set_num_threads(1)

TINY_PRETRAIN_STEPS = 150  # enough that greedy outputs are words from the corpus, not noise


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny pretrained GPT-2 with its tokenizer, built once per test session (a few seconds)."""
    from feedback_loop.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0, pretrain_steps=TINY_PRETRAIN_STEPS)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny model with random, nonzero B weights, so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
    )
    model = get_peft_model(base, config)
    path = tmp_path_factory.mktemp("tiny_adapter")
    model.save_pretrained(path)
    return path
