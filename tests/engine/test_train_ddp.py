"""LoRA training on several processes through torchrun (data parallel), checked on CPUs with gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_loop.engine.train import LoRATrainingConfig, train_lora
from feedback_loop.engine.types import SFTExample

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# No dropout (LoRA's here, the model's below): each process draws its own masks, which would make
# the curves differ by design.
SETTINGS = dict(rank=4, dropout=0.0, batch_size=4, gradient_accumulation=2, max_steps=4, epochs=3)
SETTINGS.update(learning_rate=5e-3, max_length=64, device="cpu", seed=0)


def _examples():
    # Lengths differ, so rows differ in size and a process's share of a batch is not half its tokens.
    return [
        SFTExample(
            prompt=f"Write a sentence about thing {i}.\nSentence:",
            completion=" The cat sees the house" + " again" * (i % 5) + ".",
        )
        for i in range(20)
    ]


@pytest.fixture
def model_without_dropout(tiny_model_dir, tmp_path):
    import shutil

    path = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((path / "config.json").read_text())
    config.update(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_two_processes_follow_the_one_process_loss_curve_with_the_same_global_batch(
    model_without_dropout, tmp_path
):
    tiny_model_dir = model_without_dropout
    alone = train_lora(
        tiny_model_dir, _examples(), tmp_path / "alone", LoRATrainingConfig(**SETTINGS), progress=False
    )
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": e.prompt, "completion": e.completion}) + "\n" for e in _examples())
    )
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "feedback_loop.engine.train", "--model", str(tiny_model_dir), "--train", str(data),
            "--output-dir", str(tmp_path / "two"), "--no-progress", *flags,
        ],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())

    assert two["processes"] == 2 and alone.metrics["processes"] == 1
    assert len(two["train_loss"]) == len(alone.metrics["train_loss"]) == 4
    assert two["train_loss"] == pytest.approx(alone.metrics["train_loss"], rel=1e-4, abs=1e-5)
    assert two["train_tokens"] == alone.metrics["train_tokens"]  # every row was trained on, once
    # The same updates: the adapters match, and only process 0 wrote one (one checksum line, one report).
    from safetensors.torch import load_file

    a = load_file(tmp_path / "alone" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-4, name
    assert run.stdout.count('"adapter_dir"') == 1
