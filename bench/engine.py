"""Benchmark of the engine: LoRA training throughput against a bare PyTorch loop and TRL, and batched
generation.

    .venv/bin/python -m bench.engine                                    # CPU, a minute or two on 2 cores
    .venv/bin/python -m bench.engine --device cuda --model-size 0.5b    # GPU: ~0.5B Qwen2-shaped model, MFU
    .venv/bin/python -m bench.engine --examples 512 --batch-size 16 --rank 8 \
        --target-modules c_attn c_proj --repeat 5 --no-trl             # ours against the bare loop alone

The bare loop (`measure_bare`) is the floor for our trainer: forty lines of PyTorch over the very
batches `train_lora` plans, with the same LoRA matrices, optimizer and schedule; the ratio of the
two compares their loops from the end of the first step to the end of the last, in wall time and
in CPU time (what other load on a shared machine disturbs least).

All trainers get the same model (built from a config with random weights: no download), the same
synthetic prompt/completion examples, and the same hyperparameters: LoRA rank, alpha, dropout and
targets (`--target-modules`; by default every linear layer but the output head), learning rate,
linear schedule, batch size in sequences, epochs, max length, loss on completion tokens only, no
gradient checkpointing. TRL is run as a plain `SFTTrainer` (padded batches in dataset order, no
packing). Throughput counts the same thing for all: real (non-padding) tokens of every example
processed, over the time of the training loop (`trainer.train()` for TRL, the optimisation loop of
`train_lora` for ours, the loop itself for the bare one), model loading and tokenization excluded.
Each measurement runs in its own process, so its peak memory is its own; with `--repeat`, the runs
are interleaved and the medians reported.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/engine.py` works too

from feedback_loop.engine.types import GenerationConfig, SFTExample

H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA H200 SXM, bf16 tensor cores, dense (no sparsity)

# Defaults per model size; any flag given on the command line wins.
SIZES = {
    "small": dict(
        examples=500,
        min_tokens=20,
        max_tokens=256,
        batch_size=8,
        gen_prompts=32,
        gen_batch=16,
        max_new_tokens=32,
    ),
    "0.5b": dict(
        examples=2000,
        min_tokens=64,
        max_tokens=1024,
        batch_size=16,
        gen_prompts=128,
        gen_batch=64,
        max_new_tokens=64,
    ),
}


# --------------------------------------------------------------------------------------------------
# Model and data


def build_model(folder: Path, args) -> Path:
    """A model with random weights, saved with the tiny model's tokenizer (its ids fit any vocabulary)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from feedback_loop.engine.tiny import build_tiny_model

    tokenizer_dir = build_tiny_model(folder / "tokenizer", seed=0, pretrain_steps=0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    if args.model_size == "small":
        # No dropout inside the base model, as in Llama and Qwen (GPT-2's 0.1 would make both trainers spend
        # a fifth of their time drawing dropout masks); LoRA dropout stays on in both.
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max(512, args.max_tokens),
            n_embd=args.n_embd,
            n_layer=args.n_layer,
            n_head=args.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
        model = GPT2LMHeadModel(config)
    else:
        # The shape of Qwen2.5-0.5B: 24 layers, width 896, GQA 14/2 heads, 152k vocabulary, tied embeddings.
        config = Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            **special,
        )
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    # Random weights rarely pick EOS, but never stopping early makes every generation exactly max_new_tokens.
    model.generation_config.eos_token_id = None
    path = folder / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def synthetic_examples(model_dir: Path, args) -> list[SFTExample]:
    """Prompt/completion pairs whose total lengths spread evenly over [min_tokens, max_tokens]."""
    from transformers import AutoTokenizer

    from feedback_loop.engine.tiny import synthetic_corpus

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stream = tokenizer("\n".join(synthetic_corpus(4000, seed=1)), add_special_tokens=False)["input_ids"]
    rng = random.Random(0)
    examples = []
    for _ in range(args.examples):
        total = rng.randint(args.min_tokens, args.max_tokens - 1)  # leave room for EOS
        n_prompt = max(1, int(total * rng.uniform(0.3, 0.7)))
        start = rng.randrange(len(stream) - total)
        window = stream[start : start + total]
        examples.append(
            SFTExample(
                prompt=tokenizer.decode(window[:n_prompt]), completion=tokenizer.decode(window[n_prompt:])
            )
        )
    return examples


# --------------------------------------------------------------------------------------------------
# Measurements (each in a fresh process)


def _peak_memory(device: str) -> int:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _start(device: str, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
        torch.cuda.reset_peak_memory_stats()


def _lora_settings(args) -> dict:
    return dict(
        rank=args.rank,
        alpha=2.0 * args.rank,
        dropout=0.05,
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_tokens,
        target_modules=tuple(args.target_modules) if args.target_modules else None,
    )


def measure_ours(model_dir: Path, examples: list[SFTExample], args, packing: str) -> dict:
    from feedback_loop.engine.train import LoRATrainingConfig, train_lora

    _start(args.device, args.threads)
    config = LoRATrainingConfig(**_lora_settings(args), packing=packing, device=args.device, seed=0)
    marks = StepClock(args.device)
    with tempfile.TemporaryDirectory() as out:
        metrics = train_lora(
            model_dir, examples, out, config, progress=False, on_step=marks.step_done
        ).metrics
    if metrics["device"] != args.device:
        raise SystemExit(f"our trainer ran on {metrics['device']}, not {args.device}")
    return dict(
        tokens=metrics["train_tokens"],
        seconds=metrics["train_seconds"],
        steps=metrics["steps"],
        loss=metrics["train_loss"][-1],
        peak_memory=_peak_memory(args.device),
        **marks.after_first_step(),
    )


class StepClock:
    """Wall and CPU time at the end of every optimizer step. From the end of the first step to the end
    of the last, two loops over the same batches do the same work, warm-up excluded; CPU time (of the
    whole process) is what other load on a shared machine disturbs least."""

    def __init__(self, device: str):
        self.device = device
        self.marks: list[tuple[float, float]] = []

    def step_done(self, *_progress) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), time.process_time()))

    def after_first_step(self) -> dict:
        (wall_0, cpu_0), (wall_1, cpu_1) = self.marks[0], self.marks[-1]
        return dict(steady_seconds=wall_1 - wall_0, steady_cpu_seconds=cpu_1 - cpu_0)


def measure_bare(model_dir: Path, examples: list[SFTExample], args) -> dict:
    """The floor: a plain PyTorch loop (nanoGPT's shape) over the batches `train_lora` plans.

    Same model, LoRA matrices (same seed), AdamW, linear schedule, clipping and batches as ours;
    the loss is the mean cross-entropy over every completion token, computed on all logits.
    """
    import torch
    import torch.nn.functional as F
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from feedback_loop.engine.train import IGNORE_INDEX, LoRATrainingConfig, plan_batches, tokenize_examples

    _start(args.device, args.threads)
    settings = _lora_settings(args)
    config = LoRATrainingConfig(**settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = tokenize_examples(tokenizer, examples, max_length=config.max_length)
    lengths = [len(t.input_ids) for t in data]
    cuda = args.device == "cuda"  # then bf16 base weights and autocast, fp32 LoRA matrices, as ours
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32
    ).to(args.device)
    torch.manual_seed(0)
    model = get_peft_model(model, _peft_config(settings, args))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0, fused=cuda)
    total_steps = len(plan_batches(lengths, config, epoch=0)) * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    model.train()
    marks = StepClock(args.device)
    start, tokens, steps = time.perf_counter(), 0, 0
    for epoch in range(config.epochs):
        for rows in plan_batches(lengths, config, epoch=epoch):
            rows = [data[i] for [i] in rows]
            width = max(len(t.input_ids) for t in rows)
            input_ids = torch.tensor([t.input_ids + [0] * (width - len(t.input_ids)) for t in rows])
            labels = torch.tensor([t.labels + [IGNORE_INDEX] * (width - len(t.labels)) for t in rows])
            input_ids, labels = input_ids.to(args.device), labels.to(args.device)
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
                logits = model(input_ids=input_ids).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += sum(len(t.input_ids) for t in rows)
            steps += 1
            marks.step_done()
    return dict(
        tokens=tokens,
        seconds=time.perf_counter() - start,
        steps=steps,
        loss=loss.item(),
        peak_memory=_peak_memory(args.device),
        **marks.after_first_step(),
    )


def _peft_config(settings: dict, args):
    from peft import LoraConfig

    return LoraConfig(
        r=settings["rank"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=list(settings["target_modules"]) if settings["target_modules"] else "all-linear",
        fan_in_fan_out=args.model_size == "small",  # GPT-2's Conv1D layers, as in our trainer
        bias="none",
        task_type="CAUSAL_LM",
    )


def measure_trl(model_dir: Path, examples: list[SFTExample], args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _start(args.device, args.threads)
    cuda = args.device == "cuda"
    settings = _lora_settings(args)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    with tempfile.TemporaryDirectory() as out:
        sft_config = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=settings["batch_size"],
            gradient_accumulation_steps=1,
            num_train_epochs=settings["epochs"],
            learning_rate=settings["learning_rate"],
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_length=settings["max_length"],
            completion_only_loss=True,
            packing=False,
            padding_free=False,
            # TRL defaults to both; a CPU without bf16 units runs bf16 many times slower, and our trainer
            # checkpoints only when asked. bf16 stays on for the GPU run, as in ours.
            gradient_checkpointing=False,
            bf16=cuda,
            use_cpu=not cuda,
            report_to="none",
            save_strategy="no",
            logging_steps=10**9,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=sft_config,
            train_dataset=Dataset.from_list(
                [{"prompt": e.prompt, "completion": e.completion} for e in examples]
            ),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=_peft_config(settings, args),
        )
        start = time.perf_counter()
        output = trainer.train()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if next(trainer.model.parameters()).device.type != args.device:
        raise SystemExit(f"TRL ran on {next(trainer.model.parameters()).device}, not {args.device}")
    return dict(
        tokens=trainer._total_train_tokens,  # TRL's own count: attention-mask ones, i.e. real tokens, as ours
        seconds=seconds,
        steps=output.global_step,
        loss=output.training_loss,
        peak_memory=_peak_memory(args.device),
    )


def measure_generation(model_dir: Path, prompts: list[str], args, batch_size: int) -> dict:
    from feedback_loop.engine.backends.hf import HFBackend

    _start(args.device, args.threads)
    backend = HFBackend(model_dir, device=args.device, batch_size=batch_size)
    if backend.model.device.type != args.device:
        raise SystemExit(f"HFBackend runs on {backend.model.device}, not {args.device}")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    backend.generate(prompts[:2], config)  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    outputs = backend.generate(prompts, config)
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if len(outputs) != len(prompts):
        raise SystemExit(f"{len(outputs)} outputs for {len(prompts)} prompts")
    return dict(
        tokens=len(prompts) * args.max_new_tokens, seconds=seconds, peak_memory=_peak_memory(args.device)
    )


def median_run(runs: list[dict]) -> dict:
    """The run of median throughput (the lower middle one for an even count)."""
    ranked = sorted(runs, key=lambda r: r["tokens"] / r["seconds"])
    return ranked[(len(ranked) - 1) // 2]


def in_fresh_process(function, *args_):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args_).result()


# --------------------------------------------------------------------------------------------------
# Report


def count_parameters(model_dir: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())  # tied embeddings counted once


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--model-size",
        choices=sorted(SIZES),
        default="small",
        help="small: GPT-2 with --n-layer/--n-embd; 0.5b: Qwen2.5-0.5B shape (use with cuda)",
    )
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--examples", type=int, help="training examples")
    parser.add_argument("--min-tokens", type=int, help="shortest example, prompt + completion")
    parser.add_argument("--max-tokens", type=int, help="longest example; also the max_length of training")
    parser.add_argument("--batch-size", type=int, help="sequences per optimizer step, both trainers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--target-modules", nargs="+", help="layers LoRA adapts (default: every linear layer but the head)"
    )
    parser.add_argument("--gen-prompts", type=int, help="prompts for the generation benchmark")
    parser.add_argument("--gen-batch", type=int, help="batch size of batched generation")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads; default 1 on cpu (on a shared machine more threads thrash), "
        "torch's choice on cuda",
    )
    parser.add_argument("--pack", action="store_true", help="also time our trainer's 'pack' mode")
    parser.add_argument(
        "--repeat", type=int, default=1, help="train this many times each, interleaved; report the medians"
    )
    parser.add_argument("--no-trl", action="store_true", help="leave TRL's SFTTrainer out")
    args = parser.parse_args(argv)
    for key, value in SIZES[args.model_size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir = build_model(Path(tmp), args)
        examples = synthetic_examples(model_dir, args)
        n_params = count_parameters(model_dir)
        print(
            f"model: {args.model_size} ({n_params / 1e6:.1f}M parameters, random weights), device: {args.device}"
        )
        print(
            f"data: {len(examples)} examples, {args.min_tokens}..{args.max_tokens} tokens each; batch "
            f"{args.batch_size} sequences, {args.epochs} epoch(s), LoRA rank {args.rank} on "
            + (" and ".join(args.target_modules) if args.target_modules else "every linear layer")
            + (f"; {args.threads} torch thread(s)" if args.threads else "")
        )
        if args.device == "cpu":
            if not args.no_trl:
                print(
                    "TRL: bf16 and gradient checkpointing turned off (its defaults): this CPU has no fast bf16, "
                    "and our trainer uses neither here"
                )
        else:
            print("every trainer: bf16 autocast, no gradient checkpointing")

        trainers = {
            "ours (group_by_length)": (measure_ours, "group_by_length"),
            "bare PyTorch loop": (measure_bare,),
        }
        if not args.no_trl:
            trainers["TRL SFTTrainer"] = (measure_trl,)
        if args.pack:
            trainers["ours (pack)"] = (measure_ours, "pack")
        repeats: dict[str, list[dict]] = {name: [] for name in trainers}
        for _ in range(args.repeat):  # interleaved: other load on the machine hits every trainer alike
            for name, (function, *rest) in trainers.items():
                repeats[name].append(in_fresh_process(function, model_dir, examples, args, *rest))
        runs = {name: median_run(rs) for name, rs in repeats.items()}

        prompts = [e.prompt for e in examples[: args.gen_prompts]]
        generation = {
            f"batched (batch {args.gen_batch})": in_fresh_process(
                measure_generation, model_dir, prompts, args, args.gen_batch
            ),
            "one by one": in_fresh_process(measure_generation, model_dir, prompts, args, 1),
        }
        total = time.perf_counter() - t0

    mib = 1024 * 1024
    memory = "peak CUDA memory" if args.device == "cuda" else "peak RSS"
    print()
    print(
        f"{'LoRA training':<24} {'tokens':>9} {'steps':>6} {'seconds':>8} {'tokens/s':>9} {'final loss':>10} "
        f"{memory + ' MiB':>20}" + (f" {'MFU':>6}" if args.device == "cuda" else "")
    )
    for name, r in runs.items():
        rate = r["tokens"] / r["seconds"]
        line = (
            f"{name:<24} {r['tokens']:>9} {r['steps']:>6} {r['seconds']:>8.1f} {rate:>9.0f} {r['loss']:>10.3f} "
            f"{r['peak_memory'] / mib:>20.0f}"
        )
        if args.device == "cuda":
            line += f" {4 * n_params * rate / H200_BF16_DENSE_FLOPS:>6.1%}"
        print(line)
    ours, bare = repeats["ours (group_by_length)"], repeats["bare PyTorch loop"]
    wall = statistics.median(b["steady_seconds"] for b in bare) / statistics.median(
        o["steady_seconds"] for o in ours
    )
    cpu = statistics.median(b["steady_cpu_seconds"] for b in bare) / statistics.median(
        o["steady_cpu_seconds"] for o in ours
    )
    print(
        f"ratio ours / bare PyTorch loop (same batches, steps 2..{bare[0]['steps']}, medians of {args.repeat}): "
        f"{wall:.2f}x wall time, {cpu:.2f}x CPU time"
    )
    if "TRL SFTTrainer" in runs:
        trl_rate = runs["TRL SFTTrainer"]["tokens"] / runs["TRL SFTTrainer"]["seconds"]
        for name, r in runs.items():
            if name.startswith("ours"):
                print(f"ratio {name} / TRL: {r['tokens'] / r['seconds'] / trl_rate:.2f}x")
    if args.device == "cuda":
        print(
            f"MFU = 4 * N * tokens/s / {H200_BF16_DENSE_FLOPS / 1e12:.0f} TFLOP/s (H200 bf16 dense), N = "
            f"{n_params / 1e6:.0f}M: forward 2N + input-gradient backward 2N per token; the frozen base needs no "
            "weight gradients (the usual 6N would read 1.5x higher); attention FLOPs not counted"
        )

    print()
    print(
        f"{'generation (HFBackend)':<24} {'tokens':>9} {'seconds':>8} {'tokens/s':>9} {memory + ' MiB':>20}"
    )
    for name, r in generation.items():
        print(
            f"{name:<24} {r['tokens']:>9} {r['seconds']:>8.1f} {r['tokens'] / r['seconds']:>9.0f} "
            f"{r['peak_memory'] / mib:>20.0f}"
        )
    batched, single = generation.values()
    print(
        f"ratio batched / one by one: "
        f"{(batched['tokens'] / batched['seconds']) / (single['tokens'] / single['seconds']):.2f}x "
        f"({len(prompts)} prompts, greedy, {args.max_new_tokens} new tokens each)"
    )
    print(f"\nbenchmark wall time: {total:.0f} s")


if __name__ == "__main__":
    main()
