"""LoRA training on the tiny model: what is trained, on which tokens, and what lands on disk."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedback_loop.engine import train as train_module
from feedback_loop.engine.train import (
    IGNORE_INDEX,
    LoRATrainingConfig,
    adapter_checksum,
    collate,
    completion_token_nll,
    load_lora_model,
    load_sft_jsonl,
    plan_batches,
    tokenize_examples,
    train_lora,
)
from feedback_loop.engine.types import SFTExample
from tests.engine.conftest import REPO_ROOT

SUBJECTS = ["The cat", "The dog", "A bird", "My friend", "The teacher", "A child"]
OBJECTS = ["the house", "a red ball", "the small book", "the garden", "the door", "a short story"]


def make_examples(n, seed=0):
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        subj, obj = rng.choice(SUBJECTS), rng.choice(OBJECTS)
        prompt = f"Question: What does {subj.lower()} see?" + " Think." * rng.randint(0, 6) + "\nAnswer:"
        examples.append(SFTExample(prompt=prompt, completion=f" {subj} sees {obj}." * rng.randint(1, 3)))
    return examples


def per_example_mean_nll(model, tokenized, rows):
    batch = collate(tokenized, rows, pad_id=0)
    with torch.no_grad():
        nll = completion_token_nll(model, batch)
    owner = batch.completion_example_index()
    return {int(i): nll[owner == i].mean().item() for i in owner.unique()}


def test_labels_mask_the_prompt_and_keep_the_completion_and_eos(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = SFTExample(prompt="Question: Does the cat see the house?\nAnswer:", completion=" Yes, it does.")
    [tokenized] = tokenize_examples(tokenizer, [example], max_length=512)

    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    assert tokenized.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert tokenized.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]

    # The loss has one term per completion token (EOS included), none for the prompt.
    batch = collate([tokenized], [[0]], pad_id=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        assert completion_token_nll(model, batch).numel() == len(completion_ids) + 1


def test_truncation_cuts_the_end_and_an_example_never_learns_its_first_token(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long, empty_prompt = tokenize_examples(
        tokenizer,
        [
            SFTExample("The cat sees", " the house every morning and the dog sees the garden."),
            SFTExample("", " Hi"),
        ],
        max_length=6,
    )
    assert len(long.input_ids) == 6 and long.labels[-1] != IGNORE_INDEX
    # An empty prompt is conditioned on BOS, as HFBackend does at generation time.
    assert empty_prompt.input_ids[0] == tokenizer.bos_token_id
    assert empty_prompt.labels[0] == IGNORE_INDEX and empty_prompt.labels[1] != IGNORE_INDEX


def test_packed_and_padded_batches_give_each_example_its_single_example_loss(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenized = tokenize_examples(tokenizer, make_examples(5), max_length=512)
    config = LoRATrainingConfig(dropout=0.0)
    model = load_lora_model(tiny_model_dir, config, torch.device("cpu")).eval()
    assert len({len(t.input_ids) for t in tokenized}) > 1  # the padded batch really holds padding

    alone = {i: per_example_mean_nll(model, tokenized, [[i]])[i] for i in range(5)}
    padded = per_example_mean_nll(model, tokenized, [[0], [1], [2], [3], [4]])
    packed = per_example_mean_nll(model, tokenized, [[0, 1, 2], [3, 4]])  # two rows of unequal length

    for i in range(5):
        assert padded[i] == pytest.approx(alone[i], abs=1e-5)
        assert packed[i] == pytest.approx(alone[i], abs=1e-5)


@pytest.mark.parametrize("packing", ["group_by_length", "pack"])
def test_batch_plan_uses_every_example_once_per_epoch_in_a_seeded_order(packing):
    lengths = [random.Random(i).randint(5, 60) for i in range(37)]
    config = LoRATrainingConfig(batch_size=4, max_length=64, packing=packing, seed=1)

    epoch0 = plan_batches(lengths, config, epoch=0)
    used = sorted(i for batch in epoch0 for row in batch for i in row)
    assert used == list(range(37))
    assert all(sum(lengths[i] for i in row) <= 64 for batch in epoch0 for row in batch)
    assert all(len(batch) <= 4 for batch in epoch0)
    assert plan_batches(lengths, config, epoch=0) == epoch0
    assert plan_batches(lengths, config, epoch=1) != epoch0
    assert len(plan_batches(lengths, config, epoch=1)) == len(epoch0)


@pytest.mark.parametrize("packing", ["group_by_length", "pack"])
def test_training_changes_lora_weights_only_and_lowers_the_loss(
    tiny_model_dir, tmp_path, monkeypatch, packing
):
    trained = {}

    def load_and_keep(*args, **kwargs):
        model = load_lora_model(*args, **kwargs)
        trained["model"] = model
        trained["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    monkeypatch.setattr(train_module, "load_lora_model", load_and_keep)
    examples = make_examples(16)
    config = LoRATrainingConfig(epochs=3, batch_size=4, learning_rate=3e-3, max_length=128, packing=packing)
    result = train_lora(
        tiny_model_dir, examples, tmp_path / "out", config, eval_examples=examples, progress=False
    )

    after = dict(trained["model"].named_parameters())
    lora = [n for n in after if "lora_" in n]
    assert lora and all(after[n].requires_grad for n in lora)
    assert all(not torch.equal(after[n], trained["before"][n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(p, trained["before"][n]) for n, p in after.items() if "lora_" not in n)
    assert result.metrics["eval_loss"] < result.metrics["eval_loss_initial"] - 0.5
    assert result.metrics["train_loss"][-1] < result.metrics["train_loss"][0]
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)


def test_output_folder_holds_adapter_config_metrics_and_a_matching_checksum(tiny_model_dir, tmp_path):
    examples = make_examples(6)
    config = LoRATrainingConfig(epochs=1, batch_size=2, max_length=128)
    result = train_lora(tiny_model_dir, examples, tmp_path / "out", config, progress=False)

    out = result.adapter_dir
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_config.json",
        "metrics.json",
        "adapter.sha256",
    } <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoints").exists()
    assert (out / "adapter.sha256").read_text().split()[0] == result.checksum == adapter_checksum(out)
    described = json.loads((out / "training_config.json").read_text())
    assert described["run"]["config"]["rank"] == config.rank
    assert described["run"]["n_examples"] == 6
    assert set(described["target_modules"]) == {"c_attn", "c_proj", "c_fc"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["train_loss"]) == metrics["steps"] == 3
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0

    # One changed byte in the weights changes the checksum.
    (out / "adapter_model.safetensors").write_bytes(
        (out / "adapter_model.safetensors").read_bytes()[:-1] + b"\0"
    )
    assert adapter_checksum(out) != result.checksum


def test_resumed_run_reaches_the_same_weights_as_an_uninterrupted_one(tiny_model_dir, tmp_path):
    examples = make_examples(12)
    # Dropout is on, so the run matches only if the random state is restored with the checkpoint too.
    config = LoRATrainingConfig(
        epochs=2,
        batch_size=2,
        gradient_accumulation=2,
        learning_rate=3e-3,
        dropout=0.1,
        save_every_steps=2,
        warmup_steps=2,
        max_length=128,
    )
    straight = train_lora(tiny_model_dir, examples, tmp_path / "straight", config, progress=False)

    def crash_after_step_5(step, total_steps, loss):
        if step == 5:
            raise KeyboardInterrupt("worker killed")

    with pytest.raises(KeyboardInterrupt):
        train_lora(
            tiny_model_dir, examples, tmp_path / "resumed", config, progress=False, on_step=crash_after_step_5
        )
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-00000004"]

    resumed = train_lora(tiny_model_dir, examples, tmp_path / "resumed", config, progress=False)
    assert resumed.metrics["steps_this_run"] == straight.metrics["steps"] - 4
    assert resumed.metrics["train_loss"] == straight.metrics["train_loss"]
    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rerunning_a_finished_run_returns_it_and_other_settings_are_refused(tiny_model_dir, tmp_path):
    examples = make_examples(4)
    config = LoRATrainingConfig(batch_size=2, max_length=128)
    first = train_lora(tiny_model_dir, examples, tmp_path / "out", config, progress=False)

    calls = []
    again = train_lora(
        tiny_model_dir, examples, tmp_path / "out", config, progress=False, on_step=lambda *a: calls.append(a)
    )
    assert calls == [] and again.checksum == first.checksum
    with pytest.raises(ValueError, match="other data or settings"):
        train_lora(tiny_model_dir, examples, tmp_path / "out", LoRATrainingConfig(rank=4), progress=False)


def test_load_sft_jsonl_reads_prompt_completion_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "Q: 1+1?", "completion": " 2"}\n\n{"prompt": "Q", "completion": " A"}\n')
    assert load_sft_jsonl(path) == [SFTExample("Q: 1+1?", " 2"), SFTExample("Q", " A")]
    path.write_text('{"prompt": "Q"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:1"):
        load_sft_jsonl(path)


def test_training_from_a_parent_adapter_starts_from_its_weights(tiny_model_dir, tmp_path):
    examples = make_examples(8)
    config = LoRATrainingConfig(rank=4, batch_size=4, max_steps=2, target_modules=("c_attn",), dropout=0.0)
    parent = train_lora(tiny_model_dir, examples, tmp_path / "parent", config, progress=False)
    # A learning rate of zero keeps the starting point: the child's weights are the parent's exactly.
    frozen = LoRATrainingConfig(**{**config.__dict__, "learning_rate": 0.0, "max_steps": 1})
    child = train_lora(
        tiny_model_dir, examples, tmp_path / "child", frozen, progress=False, init_adapter=parent.adapter_dir
    )
    fresh = train_lora(tiny_model_dir, examples, tmp_path / "fresh", frozen, progress=False)
    parent_weights = load_file(parent.adapter_dir / "adapter_model.safetensors")
    child_weights = load_file(child.adapter_dir / "adapter_model.safetensors")
    fresh_weights = load_file(fresh.adapter_dir / "adapter_model.safetensors")
    assert parent_weights.keys() == child_weights.keys()
    assert all(torch.equal(parent_weights[k], child_weights[k]) for k in parent_weights)
    assert not all(torch.equal(parent_weights[k], fresh_weights[k]) for k in parent_weights)
    # The parent is part of what the run is: the same folder refuses another starting point.
    with pytest.raises(ValueError):
        train_lora(tiny_model_dir, examples, tmp_path / "child", frozen, progress=False)


def _adapter_files_left(folder):
    """What a failed save must not leave: anything in the folder but the checkpoints to resume from."""
    return sorted(p.name for p in folder.iterdir() if p.name != "checkpoints")


def test_a_full_disk_while_saving_leaves_no_half_adapter_and_the_retry_resumes(
    tiny_model_dir, tmp_path, monkeypatch
):
    import errno

    import peft.peft_model

    examples = make_examples(6)
    config = LoRATrainingConfig(epochs=1, batch_size=2, max_length=128, save_every_steps=1)
    out = tmp_path / "out"
    real_save = peft.peft_model.safe_save_file

    def half_written_then_full(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:  # what a full disk leaves: the first bytes of the file
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(peft.peft_model, "safe_save_file", half_written_then_full)
    with pytest.raises(OSError, match="No space left on device"):
        train_lora(tiny_model_dir, examples, out, config, progress=False)
    assert _adapter_files_left(out) == []
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # kept, to resume

    monkeypatch.setattr(peft.peft_model, "safe_save_file", real_save)
    result = train_lora(tiny_model_dir, examples, out, config, progress=False)
    assert (result.metrics["steps_this_run"], result.metrics["steps"]) == (1, 3)  # resumed at step 2
    assert (out / "adapter.sha256").read_text().split()[0] == adapter_checksum(out) == result.checksum
    assert not (out / ".saving").exists() and not (out / "checkpoints").exists()


def test_a_real_full_disk_while_saving_leaves_no_adapter_file(tiny_model_dir, tmp_path):
    """The adapter's folder on a 64 KiB tmpfs: the weights (about 130 KB) do not fit."""
    import os
    import sys

    from tests.full_disk import full_disk

    folder, run = full_disk(tmp_path)
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from feedback_loop.engine.train import LoRATrainingConfig, train_lora\n"
        "from feedback_loop.engine.types import SFTExample\n"
        "examples = [SFTExample(prompt=f'Question {i}?\\nAnswer:', completion=' The cat sees.') for i in range(4)]\n"
        "train_lora(sys.argv[1], examples, sys.argv[2], LoRATrainingConfig(batch_size=2, max_length=64), progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = run(
        [sys.executable, "-c", script, str(tiny_model_dir), str(folder / "out")],
        size="64k",
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode != 0
    assert "No space left on device" in result.stderr, result.stderr[-2000:]
    # Only the (empty) output folder: no adapter file, no README, no staging folder, no temporary file.
    assert result.left == ["./out"]
