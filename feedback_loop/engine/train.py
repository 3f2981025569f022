"""LoRA fine-tuning on (prompt → completion) pairs: one training loop you can read top to bottom.

    result = train_lora("path/to/base", examples, "out/round-3", LoRATrainingConfig(rank=16))

What it does, in order (see `train_lora`):

1. Tokenize each example as prompt tokens + completion tokens (+ EOS). Labels are the input ids on
   the completion and IGNORE_INDEX (-100) on the prompt, so the loss is on completion tokens only.
2. Plan the batches of every epoch from the seed alone (`plan_batches`), so a resumed run sees the
   same data in the same order as an uninterrupted one. Batches carry almost no padding:
   - "group_by_length" (default): shuffle, sort within mega-batches of 50 batches by length, cut
     into batches, shuffle the batches. Rows are right-padded and run with no attention mask: in a
     causal model a real token only attends to earlier positions, and with right padding those are
     all real, so the padding can never leak into the loss, and attention keeps its fast causal kernel.
   - "pack": whole examples are packed best-fit-decreasing into rows of `max_length` tokens, with
     position ids restarting at 0 for every example. transformers turns restarting position ids into
     a block-diagonal causal mask (or flash-attention varlen), so packed examples never see each other.
3. AdamW on the LoRA matrices only; linear warmup then linear decay of the learning rate; gradient
   accumulation that averages the loss over all completion tokens of an optimizer step; gradient
   clipping; bf16 autocast on a GPU, fp32 on a CPU. Logits are computed only where a completion token
   is predicted, which skips most of the output layer (large for 150k-token vocabularies).
4. Every `save_every_steps` optimizer steps, a checkpoint (adapter, optimizer, RNG state, step)
   goes to `output_dir/checkpoints/`; `train_lora` called again on the same folder resumes from it.
5. At the end, `output_dir` holds the adapter (`save_pretrained`), `training_config.json`,
   `metrics.json` and `adapter.sha256` (moved in last: its presence marks a finished run). They are
   written in `output_dir/.saving/` first and moved into place once all are whole, so a full disk
   leaves no half-written adapter, only the checkpoints a retry resumes from.

Several GPUs on one machine: `torchrun --nproc_per_node N -m feedback_loop.engine.train ...` (see
`distributed_rank_and_size`). Every process plans the same batches; each takes every N-th row of
each micro-batch, and the gradients are summed across processes before the optimizer step, so with
the same `batch_size` (the global batch) the run follows the one-process loss curve (up to float
summation order, and dropout, LoRA's or the model's own, which draws its masks per process).
Process 0 writes the files.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from feedback_loop.engine.devices import pick_device, pick_dtype
from feedback_loop.engine.tokens import prompt_ids
from feedback_loop.engine.types import SFTExample

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # label of tokens that carry no loss (the value PyTorch's cross_entropy skips)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what PEFT needs to load the adapter
CHECKSUM_FILE = "adapter.sha256"
CHECKPOINTS_DIR = "checkpoints"
STAGING_DIR = ".saving"  # in the output folder: the finished adapter's files, until all are written
MEGA_BATCH = 50  # group_by_length sorts within this many batches: little padding, still random batches


@dataclass
class LoRATrainingConfig:
    """Every training setting in one place.

    `batch_size` counts sequences: one example per sequence in "group_by_length" mode, one row of up to
    `max_length` tokens holding several whole examples in "pack" mode. The number of tokens per step
    varies with the examples' lengths; the loss is a mean over completion tokens either way.
    `target_modules=None` adapts every linear layer but the output head: c_attn, c_proj and c_fc
    in GPT-2; q/k/v/o_proj and gate/up/down_proj in Llama and Qwen.
    """

    # LoRA adapter
    rank: int = 16  # rank r of the low-rank update B·A added to each target weight
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.05  # dropout on the input of the LoRA branch
    target_modules: tuple[str, ...] | None = None  # layers to adapt; None: all linear but the head
    # optimisation
    learning_rate: float = 2e-4  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay on the LoRA matrices
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0 turns clipping off)
    warmup_steps: int = 0  # optimizer steps of linear warmup, followed by linear decay to zero
    epochs: int = 1  # passes over the training examples
    max_steps: int | None = None  # stop after this many optimizer steps in all (None: run every epoch)
    batch_size: int = 8  # sequences per micro-batch (see above: examples, or packed rows)
    gradient_accumulation: int = 1  # micro-batches per optimizer step
    # data
    max_length: int = 512  # tokens per example (prompt + completion + EOS); longer examples lose their end
    packing: Literal["group_by_length", "pack"] = "group_by_length"  # how batches avoid padding (module doc)
    append_eos: bool = True  # end every completion with EOS, so the model learns to stop
    # runtime
    seed: int = 0  # seeds the LoRA initialisation, the data order and dropout
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    device: str | None = None  # "cuda", "cpu", "cuda:1"...; None picks cuda when available
    save_every_steps: int = 0  # checkpoint every this many optimizer steps, to resume a crash (0: never)
    # conditional training (feedback_loop.engine.conditional)
    added_tokens: tuple[str, ...] = ()  # new special tokens (<|good|>, <|bad|>): added to the tokenizer,
    #                                     rows start at the mean embedding and train with the LoRA matrices
    added_tokens_learning_rate: float | None = None  # peak rate for those rows (None: learning_rate); new
    #                                                  rows start far from any meaning and need larger steps


@dataclass
class TrainingResult:
    adapter_dir: Path  # folder to pass to PeftModel.from_pretrained / HFBackend(adapter=...)
    metrics: dict[str, Any]  # the content of metrics.json
    checksum: str  # sha256 over the adapter files, as written in adapter.sha256


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]  # prompt tokens, then completion tokens (and EOS)
    labels: list[int]  # the input id on completion tokens, IGNORE_INDEX on prompt tokens


@dataclass
class Batch:
    input_ids: torch.Tensor  # (rows, length) token ids, right-padded
    labels: torch.Tensor  # (rows, length) target at each position, IGNORE_INDEX where there is no loss
    position_ids: torch.Tensor | None  # (rows, length), from 0 for each packed example; None: unpacked
    example_index: torch.Tensor  # (rows, length) which example each token belongs to (-1 on padding)
    n_tokens: int  # real (non-padding) tokens
    n_completion_tokens: int  # tokens that carry a loss

    def to(self, device: torch.device | str) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("input_ids", "labels", "position_ids", "example_index"):
            if moved[name] is not None:
                moved[name] = moved[name].to(device, non_blocking=True)
        return Batch(**moved)

    def completion_example_index(self) -> torch.Tensor:
        """The example each completion token belongs to, in the order `completion_token_nll` returns them."""
        return self.example_index[self.labels != IGNORE_INDEX]


# --------------------------------------------------------------------------------------------------
# Data: tokenize, plan batches, collate


def load_sft_jsonl(path: str | Path) -> list[SFTExample]:
    """Read SFT examples from a JSON-lines file with one {"prompt": ..., "completion": ...} per line."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
                raise ValueError(f"{path}:{line_number}: expected string fields 'prompt' and 'completion'")
            examples.append(SFTExample(prompt=row["prompt"], completion=row["completion"]))
    return examples


def tokenize_examples(
    tokenizer, examples: Sequence[SFTExample], *, max_length: int, append_eos: bool = True
) -> list[TokenizedExample]:
    """Prompt and completion are tokenized apart, so the prompt/completion boundary is exact.

    The prompt is encoded by `feedback_loop.engine.tokens.prompt_ids`, as `HFBackend` encodes it at
    generation time (the tokenizer's leading special tokens; an empty prompt becomes BOS, else EOS);
    the completion gets no special tokens. EOS ends the completion. Examples longer
    than `max_length` are cut at the end. The first token of every example never carries a loss:
    nothing in the example precedes it, and in a packed row the position before it is another example's.
    """
    if not examples:
        return []
    prompts = prompt_ids(tokenizer, [e.prompt for e in examples])
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    tokenized = []
    for context_ids, completion_ids in zip(prompts, completions, strict=True):
        completion_ids = completion_ids + eos
        input_ids = (context_ids + completion_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(context_ids) + completion_ids)[:max_length]
        labels[0] = IGNORE_INDEX
        tokenized.append(TokenizedExample(input_ids=input_ids, labels=labels))
    return tokenized


def has_completion_tokens(example: TokenizedExample) -> bool:
    return any(label != IGNORE_INDEX for label in example.labels)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: put each example (longest first) into the fullest row it still fits in."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row number), kept sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = bisect.bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            rows.append([i])
            bisect.insort(free, (capacity - lengths[i], len(rows) - 1))
        else:
            space, row = free.pop(slot)
            rows[row].append(i)
            bisect.insort(free, (space - lengths[i], row))
    return rows


def plan_batches(lengths: Sequence[int], config: LoRATrainingConfig, *, epoch: int) -> list[list[list[int]]]:
    """The batches of one epoch: a list of batches, each a list of rows, each a list of example indices.

    Depends only on the lengths, the config and the epoch, so every run with the same seed (a resumed
    one too) trains on the same batches in the same order. Every epoch has the same number of batches.
    """
    rng = random.Random(f"{config.seed}:{epoch}")  # str seeds hash with sha512: same order in every process
    size = config.batch_size
    if config.packing == "pack":
        rows = pack_rows(lengths, config.max_length)
        rng.shuffle(rows)
        return [rows[i : i + size] for i in range(0, len(rows), size)]
    if config.packing != "group_by_length":
        raise ValueError(f"unknown packing mode {config.packing!r}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), size * MEGA_BATCH):
        mega = sorted(order[start : start + size * MEGA_BATCH], key=lambda i: lengths[i])
        batches += [[[i] for i in mega[j : j + size]] for j in range(0, len(mega), size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[TokenizedExample], rows: Sequence[Sequence[int]], *, pad_id: int) -> Batch:
    """Lay out rows of examples as right-padded tensors (see `Batch`)."""
    import torch

    packed = any(len(row) > 1 for row in rows)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    example_index = torch.full((len(rows), width), -1, dtype=torch.long)
    # Padding positions count on from 0 too: in a packed row they form a block of their own.
    position_ids = torch.zeros((len(rows), width), dtype=torch.long) if packed else None
    n_tokens = 0
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(examples[i].input_ids)
            input_ids[r, start : start + n] = torch.tensor(examples[i].input_ids)
            labels[r, start : start + n] = torch.tensor(examples[i].labels)
            example_index[r, start : start + n] = i
            if position_ids is not None:
                position_ids[r, start : start + n] = torch.arange(n)
            start += n
        if position_ids is not None:
            position_ids[r, start:] = torch.arange(width - start)
        n_tokens += start
    return Batch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        example_index=example_index,
        n_tokens=n_tokens,
        n_completion_tokens=int((labels != IGNORE_INDEX).sum()),
    )


def filler_token_id(model_config, tokenizer) -> int:
    """The id that fills padding positions. Its value never matters (padding has no loss and no real
    token attends to it), but a token other than the model's pad token keeps transformers from warning
    that an attention mask may be missing."""
    pad = model_config.pad_token_id
    for candidate in (tokenizer.eos_token_id, 0, 1):
        if candidate is not None and candidate != pad:
            return candidate
    return 0


# --------------------------------------------------------------------------------------------------
# Model: load with LoRA, completion-token loss


def training_device(requested: str | None) -> torch.device:
    """The device asked for, else cuda when there is one, else cpu; never a silent swap for another.
    Under torchrun, a bare "cuda" means this process's GPU (LOCAL_RANK)."""
    import torch

    device = torch.device(pick_device(requested))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: one GPU per process
        torch.cuda.set_device(device)
    return device


def distributed_rank_and_size(device: torch.device) -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) alone; under torchrun (WORLD_SIZE > 1) it joins the
    process group (NCCL on GPUs, gloo on CPUs) if nobody did yet."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not dist.is_initialized():
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum tensors across the process group in place, in one flat buffer (one collective per step)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def uses_bf16(device: torch.device) -> bool:
    """bf16 where `HFBackend` would use it too: a GPU that has it (CPUs without bf16 units are slower in it)."""
    import torch

    return pick_dtype(str(device)) == torch.bfloat16


def autocast_for(device: torch.device):
    import torch

    if uses_bf16(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def add_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add `tokens` to the tokenizer as special tokens (never split, never normalised); their ids."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(list(tokens))


def resize_for_added_tokens(base, vocab_size: int, new_ids: Sequence[int]) -> None:
    """Grow the embedding (and an untied output layer) to `vocab_size`; the new tokens' rows start at
    the mean of the existing rows (a neutral start: the model reads them as an average token)."""
    import torch

    if vocab_size > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        layers = [base.get_input_embeddings()]
        output = base.get_output_embeddings()
        if output is not None and output.weight is not layers[0].weight:
            layers.append(output)
        new = torch.tensor(list(new_ids), dtype=torch.long, device=layers[0].weight.device)
        for layer in layers:
            weight = layer.weight
            others = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            others[new] = False
            weight[new] = weight[others].mean(dim=0)
            bias = getattr(layer, "bias", None)
            if bias is not None and bias.shape[0] == weight.shape[0]:
                bias[new] = 0.0


def _trainable_token_indices(base, new_ids: Sequence[int]) -> list[int] | dict[str, list[int]]:
    """peft's `trainable_token_indices`: the input embedding's rows, and the output layer's when it has
    its own weights (a tied output layer follows its embedding)."""
    embedding, output = base.get_input_embeddings(), base.get_output_embeddings()
    if output is None or output.weight is embedding.weight:
        return list(new_ids)
    names = {module: name for name, module in base.named_modules()}
    return {names[embedding].split(".")[-1]: list(new_ids), names[output].split(".")[-1]: list(new_ids)}


def load_lora_model(model: str | Path, config: LoRATrainingConfig, device: torch.device, *, tokenizer=None):
    """The base model with fresh LoRA matrices; only the LoRA matrices are trainable.

    On a bf16 GPU the frozen base weights are stored in bf16 (half the memory, no casts) while the LoRA
    matrices stay fp32, so the optimizer updates full-precision weights.
    With `config.added_tokens`, the tokens join `tokenizer` (loaded from `model` when not given), the
    embeddings grow to hold them, and their rows are trainable too (peft trainable tokens).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    dtype = torch.bfloat16 if uses_bf16(device) else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
    extra: dict[str, Any] = {}
    if config.added_tokens:
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
        new_ids = add_tokens(tokenizer, config.added_tokens)
        resize_for_added_tokens(base, len(tokenizer), new_ids)
        extra["trainable_token_indices"] = _trainable_token_indices(base, new_ids)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules) if config.target_modules else "all-linear",
        # GPT-2 stores its linear layers transposed (Conv1D); PEFT must know to get the shapes right.
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in base.modules()),
        bias="none",
        task_type="CAUSAL_LM",
        **extra,
    )
    torch.manual_seed(config.seed)  # the LoRA A matrices are drawn now
    peft_model = get_peft_model(base, lora_config)
    for name, parameter in peft_model.named_parameters():
        if "trainable_tokens_delta" in name:
            # Like the LoRA matrices, the new tokens' rows train in fp32 (peft casts them to the base's
            # dtype in the forward pass).
            parameter.data = parameter.data.float()
    if config.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return peft_model


def load_adapter_weights(peft_model, adapter_dir: str | Path) -> None:
    """Copy a saved adapter's LoRA weights into `peft_model`, whose adapter must have the same shapes."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, weights)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the adapter in {adapter_dir} does not fit this LoRA configuration "
            f"(missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})"
        )


# Configs with these set change the logits after the output layer, so the shortcut below would be wrong.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def completion_token_nll(model, batch: Batch) -> torch.Tensor:
    """Negative log-likelihood of every completion token in the batch, row by row, left to right.

    Position t predicts the token at t + 1, so only positions followed by a completion token need
    logits: the output layer runs on those alone instead of on every prompt and padding token.
    """
    import torch.nn.functional as F

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if any(getattr(causal_lm.config, name, None) for name in _LOGIT_TRANSFORMS):
        logits = causal_lm(**inputs).logits[:, :-1][keep]
    else:
        hidden = causal_lm.get_decoder()(**inputs).last_hidden_state
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="none")


def completion_loss(
    model, examples: Sequence[TokenizedExample], config: LoRATrainingConfig, *, pad_id: int, device
) -> float:
    """Mean NLL per completion token over `examples` (eval mode, no gradients, batches sorted by length)."""
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_for(device):
        for start in range(0, len(order), config.batch_size):
            rows = [[i] for i in order[start : start + config.batch_size]]
            nll = completion_token_nll(model, collate(examples, rows, pad_id=pad_id).to(device))
            total += nll.sum().item()
            count += nll.numel()
    model.train(was_training)
    return total / max(count, 1)


def learning_rate_at(step: int, config: LoRATrainingConfig, total_steps: int) -> float:
    """Linear warmup over `warmup_steps`, then linear decay to zero at `total_steps`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / (config.warmup_steps + 1)
    return config.learning_rate * max(0.0, total_steps - step) / max(1, total_steps - config.warmup_steps)


# --------------------------------------------------------------------------------------------------
# Files: run description, checkpoints, checksum


def dataset_sha256(examples: Sequence[SFTExample], weights: Sequence[float] | None = None) -> str:
    """Content hash of the training data (and loss weights, when there are any), recorded so an
    adapter traces back to what it learned from."""
    digest = hashlib.sha256()
    for i, e in enumerate(examples):
        row = [e.prompt, e.completion] if weights is None else [e.prompt, e.completion, float(weights[i])]
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def adapter_checksum(adapter_dir: str | Path) -> str:
    """sha256 over the adapter files (name and content), the value written in adapter.sha256."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update(name.encode() + b"\0")
        with open(Path(adapter_dir) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Settings that do not change the trained weights: a run may resume under different values.
_RESUMABLE_ACROSS = ("save_every_steps", "device")


def _same_run(a: dict, b: dict) -> bool:
    def essence(run: dict) -> dict:
        config = {k: v for k, v in run["config"].items() if k not in _RESUMABLE_ACROSS}
        kept = {
            "base_model": run["base_model"],
            "dataset_sha256": run["dataset_sha256"],
            "config": config,
            "init_adapter_sha256": run.get("init_adapter_sha256"),
        }
        return json.loads(json.dumps(kept))  # as read back from JSON: tuples become lists

    return essence(a) == essence(b)


def _finished_run(output_dir: Path, run: dict) -> TrainingResult | None:
    """The result already in `output_dir` when the same run finished there before (re-running is a no-op)."""
    if not (output_dir / CHECKSUM_FILE).exists():
        return None
    recorded = json.loads((output_dir / "training_config.json").read_text(encoding="utf-8"))
    if not _same_run(recorded["run"], run):
        raise ValueError(
            f"{output_dir} holds an adapter trained with other data or settings; use a new folder"
        )
    checksum = (output_dir / CHECKSUM_FILE).read_text(encoding="utf-8").split()[0]
    if adapter_checksum(output_dir) != checksum:
        raise ValueError(f"the adapter files in {output_dir} do not match {CHECKSUM_FILE}")
    metrics = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
    return TrainingResult(adapter_dir=output_dir, metrics=metrics, checksum=checksum)


def _latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / CHECKPOINTS_DIR).glob("step-*/state.pt"))
    return found[-1].parent if found else None


def _save_checkpoint(
    output_dir: Path,
    run: dict,
    step: int,
    losses: list[float],
    tokens_seen: int,
    peft_model,
    optimizer,
    device,
) -> None:
    """Write checkpoints/step-N/ (adapter, optimizer, RNG states, progress) atomically (a crash mid-write
    leaves the previous one intact), then drop the older ones. `_resume` reads it back."""
    import torch
    from peft import get_peft_model_state_dict

    state = {
        "run": run,
        "step": step,
        "losses": losses,
        "tokens_seen": tokens_seen,
        "adapter": get_peft_model_state_dict(peft_model),
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(device),
    }

    folder = output_dir / CHECKPOINTS_DIR
    final = folder / f"step-{state['step']:08d}"
    tmp = folder / f"tmp-step-{state['step']:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.save(state, tmp / "state.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: the previous checkpoint stays whole
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in folder.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _rng_state(device) -> dict:
    import torch

    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _peak_memory_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB; whole process


# --------------------------------------------------------------------------------------------------
# The training loop


def train_lora(
    model: str | Path,
    examples: Sequence[SFTExample],
    output_dir: str | Path,
    config: LoRATrainingConfig,
    *,
    eval_examples: Sequence[SFTExample] = (),
    progress: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    init_adapter: str | Path | None = None,
    example_weights: Sequence[float] | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on `examples` (loss on completion tokens only) and save it to `output_dir`.

    `model` is a local folder (or a Hugging Face id in the local cache). Calling it again on the same
    `output_dir` resumes from the last checkpoint, or returns the finished result at once.
    `on_step(step, total_steps, loss)` is called after every optimizer step (a progress hook; an
    exception raised from it stops training, and a later call resumes).
    `init_adapter`: start the LoRA matrices from this adapter's weights instead of a fresh draw
    (continued fine-tuning of a parent adapter); its rank and target modules must match `config`.
    `example_weights`: one loss weight per example (reward-weighted regression); each completion token's
    loss is multiplied by its example's weight. With `config.added_tokens` the adapter folder also holds
    the grown tokenizer, which `HFBackend` loads with the adapter.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    wall_start = time.perf_counter()
    output_dir = Path(output_dir)
    if example_weights is not None and len(example_weights) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(example_weights)} weights")
    run = _describe_run(model, examples, config, eval_examples, init_adapter, example_weights)
    finished = _finished_run(output_dir, run)
    if finished is not None:
        return finished
    output_dir.mkdir(parents=True, exist_ok=True)

    # Device and process group, data, model, optimizer, schedule.
    device = training_device(config.device)
    rank, world = distributed_rank_and_size(device)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if config.added_tokens:
        add_tokens(tokenizer, config.added_tokens)  # before tokenizing: the tokens must stay whole
    kept, train_set = _examples_with_completion_tokens(tokenizer, examples, config)
    if not train_set:
        raise ValueError("no example has a completion token left after truncation to max_length")
    weights = (
        torch.tensor([float(example_weights[i]) for i in kept], device=device)
        if example_weights is not None
        else None
    )
    _, eval_set = _examples_with_completion_tokens(tokenizer, eval_examples, config)
    peft_model = load_lora_model(model, config, device, tokenizer=tokenizer)
    if init_adapter is not None:
        load_adapter_weights(peft_model, init_adapter)
    pad_id = filler_token_id(peft_model.config, tokenizer)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = lora_optimizer(peft_model, config, device)
    lengths = [len(t.input_ids) for t in train_set]
    # Every process knows the completion tokens of the whole step without asking the others.
    completion_counts = [sum(label != IGNORE_INDEX for label in t.labels) for t in train_set]
    # The whole schedule is known up front: every epoch has the same number of optimizer steps.
    steps_per_epoch = math.ceil(len(plan_batches(lengths, config, epoch=0)) / config.gradient_accumulation)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    bf16 = uses_bf16(device)

    step, losses, tokens_seen = _resume(output_dir, run, peft_model, optimizer, device)
    resumed_from_step = step
    eval_loss_initial = (
        completion_loss(peft_model, eval_set, config, pad_id=pad_id, device=device)
        if eval_set and step == 0
        else None
    )

    # The step loop.
    peft_model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(
        total=total_steps, initial=step, disable=not progress or rank != 0, desc="LoRA training", unit="step"
    )
    train_start = time.perf_counter()
    tokens_this_run = 0
    planned_epoch, batches = None, []
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if epoch != planned_epoch:
            planned_epoch, batches = epoch, plan_batches(lengths, config, epoch=epoch)
        first = step_in_epoch * config.gradient_accumulation
        step_rows = batches[first : first + config.gradient_accumulation]
        lr = set_learning_rates(optimizer, step, config, total_steps)
        # Sum of token losses over the whole step divided by its completion tokens: a true per-token mean,
        # whatever the split into micro-batches (and processes).
        step_targets = sum(completion_counts[i] for rows in step_rows for row in rows for i in row)
        loss_sum = torch.zeros((), device=device)
        for rows in step_rows:
            share = rows[rank::world]  # this process's rows of the micro-batch: every `world`-th one
            if not share:
                continue
            batch = collate(train_set, share, pad_id=pad_id).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                nll = completion_token_nll(peft_model, batch)
            if weights is not None:
                nll = nll * weights[batch.completion_example_index()]
            loss = nll.sum() / step_targets
            loss.backward()
            loss_sum += loss.detach()
            tokens_this_run += batch.n_tokens
        if world > 1:
            _sum_gradients_across_processes(trainable, loss_sum)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        step_loss = loss_sum.item()  # one device sync per step
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if (
            rank == 0
            and config.save_every_steps
            and step % config.save_every_steps == 0
            and step < total_steps
        ):
            _save_checkpoint(
                output_dir, run, step, losses, tokens_seen + tokens_this_run, peft_model, optimizer, device
            )
        if on_step is not None and rank == 0:
            on_step(step, total_steps, step_loss)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = time.perf_counter() - train_start
    if world > 1:
        counted = torch.tensor([float(tokens_this_run)], device=device)
        _all_reduce_sum([counted])
        tokens_this_run = int(counted.item())

    eval_loss = (
        completion_loss(peft_model, eval_set, config, pad_id=pad_id, device=device) if eval_set else None
    )
    metrics = {
        "train_loss": losses,  # mean completion-token NLL of each optimizer step
        "eval_loss_initial": eval_loss_initial,  # on eval_examples before training (None when resumed)
        "eval_loss": eval_loss,  # on eval_examples after training
        "steps": step,
        "steps_this_run": step - resumed_from_step,
        "epochs": config.epochs,
        "examples": len(train_set),
        "examples_without_completion": len(examples) - len(train_set),  # cut away by max_length
        "train_tokens": tokens_seen + tokens_this_run,  # real (non-padding) tokens, prompt included
        "tokens_per_second": tokens_this_run / train_seconds if train_seconds > 0 else None,
        "train_seconds": train_seconds,  # the optimisation loop of this call
        "wall_seconds": time.perf_counter() - wall_start,  # this call, loading and saving included
        "device": device.type,
        "dtype": "bfloat16" if bf16 else "float32",
        "peak_memory_bytes": _peak_memory_bytes(device),  # CUDA allocations, or the process's peak RSS on CPU
        "processes": world,  # data-parallel processes (torchrun), each with its share of every batch
    }
    return _finish(output_dir, run, metrics, peft_model, tokenizer, config, rank=rank, world=world)


def _describe_run(model, examples, config, eval_examples, init_adapter, example_weights) -> dict:
    """What makes two runs the same run: recorded in checkpoints and training_config.json."""
    return {
        "base_model": str(model),
        "config": dataclasses.asdict(config),
        "dataset_sha256": dataset_sha256(examples, example_weights),
        "n_examples": len(examples),
        "n_eval_examples": len(eval_examples),
        "init_adapter_sha256": adapter_checksum(init_adapter) if init_adapter is not None else None,
    }


def _examples_with_completion_tokens(
    tokenizer, examples: Sequence[SFTExample], config: LoRATrainingConfig
) -> tuple[list[int], list[TokenizedExample]]:
    """The examples tokenized, less those that `max_length` left without a completion token; the kept
    examples' positions in `examples`, and the examples."""
    tokenized = tokenize_examples(
        tokenizer, examples, max_length=config.max_length, append_eos=config.append_eos
    )
    kept = [i for i, t in enumerate(tokenized) if has_completion_tokens(t)]
    return kept, [tokenized[i] for i in kept]


def lora_optimizer(peft_model, config: LoRATrainingConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; added tokens' rows in a group of their own, with their own
    peak rate (`peak_lr` None: the config's `learning_rate`)."""
    import torch

    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    token_rows = [p for n, p in peft_model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    groups = [{"params": [p for p in trainable if all(p is not q for q in token_rows)], "peak_lr": None}]
    if token_rows:
        groups.append({"params": token_rows, "peak_lr": config.added_tokens_learning_rate})
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )


def set_learning_rates(optimizer, step: int, config: LoRATrainingConfig, total_steps: int) -> float:
    """Set each parameter group's rate for `step` (`learning_rate_at` of its peak); the main group's rate."""
    lr = learning_rate_at(step, config, total_steps)
    for group in optimizer.param_groups:
        peak = group["peak_lr"]
        group["lr"] = (
            lr
            if peak is None
            else learning_rate_at(step, dataclasses.replace(config, learning_rate=peak), total_steps)
        )
    return lr


def _sum_gradients_across_processes(trainable: Sequence[torch.Tensor], loss_sum: torch.Tensor) -> None:
    """The sum of every process's share is the whole step's gradient: the same update everywhere."""
    import torch

    for p in trainable:
        if p.grad is None:  # this process had no row in the step
            p.grad = torch.zeros_like(p)
    _all_reduce_sum([p.grad for p in trainable] + [loss_sum])


def _resume(output_dir: Path, run: dict, peft_model, optimizer, device) -> tuple[int, list[float], int]:
    """Load the latest checkpoint into the model, optimizer and RNGs; (step, losses, tokens seen) so far,
    (0, [], 0) when there is none."""
    import torch
    from peft import set_peft_model_state_dict

    checkpoint = _latest_checkpoint(output_dir)
    if checkpoint is None:
        return 0, [], 0
    # RNG states must stay on the CPU; the optimizer moves its own state to the parameters' device.
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
    if not _same_run(state["run"], run):
        raise ValueError(
            f"the checkpoint in {checkpoint} comes from other data or settings; use a new folder"
        )
    set_peft_model_state_dict(peft_model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"], device)
    return state["step"], state["losses"], state["tokens_seen"]


def _finish(
    output_dir: Path,
    run: dict,
    metrics: dict,
    peft_model,
    tokenizer,
    config: LoRATrainingConfig,
    *,
    rank,
    world,
) -> TrainingResult:
    """Process 0 writes the adapter, training_config.json, metrics.json and adapter.sha256 into a
    staging folder inside `output_dir` (the same filesystem), then moves them into place, the
    checksum last (its presence marks the run finished), and drops the checkpoints; the other
    processes wait for it. A write that fails (a full disk) removes the staging folder and leaves
    `output_dir` as it was: the checkpoints are kept, and no adapter file is half-written."""
    if rank != 0:
        _wait_for_rank_zero()
        return TrainingResult(adapter_dir=output_dir, metrics=metrics, checksum=adapter_checksum(output_dir))
    staging = output_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # left by a process killed while saving
    try:
        staging.mkdir()
        # Trainable tokens save their own rows; the whole grown embedding need not be saved with them.
        peft_model.save_pretrained(staging, save_embedding_layers=False if config.added_tokens else "auto")
        if config.added_tokens:
            tokenizer.save_pretrained(staging)
        described = {
            "run": run,
            "target_modules": sorted(
                {name.split(".")[-1] for name in peft_model.peft_config["default"].target_modules}
            ),
            "versions": _library_versions(),
        }
        _write_json_atomically(staging / "training_config.json", described)
        _write_json_atomically(staging / "metrics.json", metrics)
        checksum = adapter_checksum(staging)
        (staging / CHECKSUM_FILE).write_text(f"{checksum}  adapter\n", encoding="utf-8")
        # Renames within one folder take no space: once every file is written, nothing can fail here.
        for written in sorted(staging.iterdir(), key=lambda path: path.name == CHECKSUM_FILE):
            target = output_dir / written.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(written, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
    if world > 1:
        _wait_for_rank_zero()
    return TrainingResult(adapter_dir=output_dir, metrics=metrics, checksum=checksum)


def _wait_for_rank_zero() -> None:
    """Every process waits here until process 0 has written the adapter's files."""
    import torch.distributed as dist

    dist.barrier()


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft")}


# --------------------------------------------------------------------------------------------------
# Command line: python -m feedback_loop.engine.train --model DIR --train data.jsonl --output-dir OUT
# (also `python -m feedback_loop.engine train ...`, and torchrun -m feedback_loop.engine.train for DDP)

TRAIN_DESCRIPTION = "Train a LoRA adapter on prompt/completion JSON lines."


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `train`: the data and output folder, then one flag per `LoRATrainingConfig` field."""
    parser.add_argument("--model", required=True, help="base model folder (or id in the local HF cache)")
    parser.add_argument("--train", required=True, help="JSON lines with 'prompt' and 'completion'")
    parser.add_argument("--eval", help="held-out JSON lines, same format")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-progress", action="store_true")
    for f in dataclasses.fields(LoRATrainingConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.name in ("target_modules", "added_tokens"):
            parser.add_argument(flag, nargs="+", default=None)
        elif f.name == "max_steps":
            parser.add_argument(flag, type=int, default=None)
        elif f.name == "added_tokens_learning_rate":
            parser.add_argument(flag, type=float, default=None)
        else:
            parser.add_argument(
                flag, type=type(f.default) if f.default is not None else str, default=f.default
            )


def run_training(args: argparse.Namespace) -> None:
    """Train as the parsed flags say and print the metrics (process 0 of a torchrun job alone)."""
    settings = vars(args)
    fields = {f.name for f in dataclasses.fields(LoRATrainingConfig)}
    config = LoRATrainingConfig(**{k: v for k, v in settings.items() if k in fields})
    if config.target_modules:
        config.target_modules = tuple(config.target_modules)
    config.added_tokens = tuple(config.added_tokens or ())
    result = train_lora(
        settings["model"],
        load_sft_jsonl(settings["train"]),
        settings["output_dir"],
        config,
        eval_examples=load_sft_jsonl(settings["eval"]) if settings["eval"] else (),
        progress=not settings["no_progress"],
    )
    summary = {k: v for k, v in result.metrics.items() if k != "train_loss"}
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return  # process 0 speaks for a torchrun job
    print(
        json.dumps({"adapter_dir": str(result.adapter_dir), "checksum": result.checksum, **summary}, indent=2)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=TRAIN_DESCRIPTION)
    add_training_arguments(parser)
    run_training(parser.parse_args(argv))


if __name__ == "__main__":
    main()
