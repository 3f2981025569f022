"""A tiny GPT-2-shaped model built on the spot, for tests and the demo.

`build_tiny_model(path)` trains a byte-level BPE tokenizer on a small synthetic corpus (simple
English sentences, feedback phrases, yes/no questions and a little Python), initialises a two-layer
GPT-2 from a seed, optionally pretrains it for a few steps so that it writes words rather than noise,
and saves both with `save_pretrained`, so `AutoModelForCausalLM.from_pretrained(path)` and
`AutoTokenizer.from_pretrained(path)` load it like any other model. No network, seconds on a CPU.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyModelConfig:
    vocab_size: int = 1024  # BPE vocabulary, 256 byte symbols plus merges and special tokens
    n_layer: int = 2  # transformer blocks
    n_head: int = 2  # attention heads per block
    n_embd: int = 64  # width of the residual stream
    n_positions: int = 512  # longest sequence the model accepts (prompt + completion)
    corpus_sentences: int = 3000  # synthetic lines used to train the tokenizer and to pretrain
    block_size: int = 64  # tokens per pretraining sequence
    batch_size: int = 16  # sequences per pretraining step
    learning_rate: float = 3e-3  # AdamW learning rate for pretraining (high: the model is tiny)


EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

_SUBJECTS = [
    "the cat",
    "the dog",
    "a bird",
    "my friend",
    "the teacher",
    "a child",
    "the old man",
    "the model",
    "the river",
    "our team",
    "the farmer",
    "a student",
]
_VERBS = ["sees", "likes", "finds", "walks to", "reads", "writes", "opens", "helps", "makes", "loves"]
_OBJECTS = [
    "the house",
    "a red ball",
    "the small book",
    "a long letter",
    "the garden",
    "the door",
    "a warm cup of tea",
    "the green field",
    "a short story",
    "the summary",
    "the answer",
]
_ENDINGS = ["today", "every morning", "at night", "with care", "in the rain", "again", "quickly", "slowly"]
# Extra words so the tokenizer learns a vocabulary of about a thousand pieces.
_WORD_TEXT = (
    "apple water window mountain village market kitchen morning evening summer winter question "
    "problem reason answer number letter picture music weather people family country program "
    "function variable computer language feedback improvement summary article report review "
    "simple careful bright quiet happy strong gentle clever honest useful correct wrong better "
    "because however although therefore finally usually often never always sometimes "
    "explain describe compare mention include remove return change improve shorten clarify "
    "yellow purple orange silver golden wooden frozen sudden distant ancient modern private "
    "bicycle elephant giraffe penguin dolphin tiger rabbit turtle spider monkey zebra camel "
    "history science physics biology chemistry geometry algebra grammar poetry theatre cinema "
    "journey holiday birthday wedding festival concert meeting lesson exercise breakfast dinner "
    "travelled listened borrowed promised whispered laughed wondered answered carried finished"
)
_WORDS = _WORD_TEXT.split()
_FEEDBACK = [
    "The summary should mention {obj}.",
    "Please be more concise.",
    "The answer is too long; cut the last sentence.",
    "It misses that {subj} {verb} {obj}.",
    "Good, but say why {subj} {verb} {obj}.",
    "Do not repeat yourself.",
    "The output should be polite.",
    "Fix the bug: the function must return the sum.",
    "Handle the empty list.",
    "Use a clearer name for the variable.",
]
_FUNCS = [
    ("add", "a, b", "return a + b"),
    ("total", "xs", "return sum(xs)"),
    ("first", "xs", "return xs[0] if xs else None"),
    ("double", "x", "return 2 * x"),
    ("is_even", "n", "return n % 2 == 0"),
    ("greet", "name", "return 'hello ' + name"),
    ("largest", "xs", "return max(xs)"),
    ("count_words", "text", "return len(text.split())"),
]


def synthetic_corpus(n_sentences: int, *, seed: int = 0) -> list[str]:
    """Deterministic lines of English-ish text, feedback, yes/no questions and Python."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_sentences):
        subj, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
        sentence = f"{subj.capitalize()} {verb} {obj} {rng.choice(_ENDINGS)}."
        kind = i % 6
        if kind in (0, 1):
            lines.append(sentence)
        elif kind == 2:
            feedback = rng.choice(_FEEDBACK).format(subj=subj, verb=verb, obj=obj)
            lines.append(f"Output: {sentence}\nFeedback: {feedback}\nImproved output: {sentence}")
        elif kind == 3:
            answer = rng.choice(["Yes", "No"])
            lines.append(f"Question: Does {subj} {verb.split()[0][:-1]} {obj}?\nAnswer: {answer}")
        elif kind == 4:
            name, args, body = rng.choice(_FUNCS)
            lines.append(f"def {name}({args}):\n    {body}\n")
        else:
            words = " ".join(rng.sample(_WORDS, 6))
            lines.append(
                f"Summary: {sentence} {rng.choice(_SUBJECTS).capitalize()} is happy. Words: {words}."
            )
    return lines


def _train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",  # decoder-only generation pads on the left
    )


def _pretrain(model, tokenizer, corpus: list[str], steps: int, config: TinyModelConfig, seed: int) -> float:
    """A few AdamW steps of next-token prediction on the corpus; returns the last loss."""
    import torch

    ids: list[int] = []
    for line in corpus:
        ids.extend(tokenizer(line)["input_ids"] + [tokenizer.eos_token_id])
    data = torch.tensor(ids, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(
            0, len(data) - config.block_size - 1, (config.batch_size,), generator=generator
        )
        batch = torch.stack([data[s : s + config.block_size] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.item()


def build_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    pretrain_steps: int = 0,
    config: TinyModelConfig | None = None,
    extra_corpus: Sequence[str] = (),
) -> Path:
    """Build, optionally pretrain, and save a tiny GPT-2 with its tokenizer into `path`.

    `extra_corpus` (documents such as small programs) joins the synthetic corpus for both the
    tokenizer and pretraining."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    config = config or TinyModelConfig()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = synthetic_corpus(config.corpus_sentences, seed=seed) + list(extra_corpus)
    tokenizer = _train_tokenizer(corpus, config.vocab_size)

    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(model_config)
    if pretrain_steps > 0:
        _pretrain(model, tokenizer, corpus, pretrain_steps, config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
