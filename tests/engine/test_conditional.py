"""Conditional training, filtering and reward-weighted regression (Korbak et al.) on the tiny model."""

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedback_loop.engine.conditional import (
    BAD,
    CONTROL_TOKENS,
    GOOD,
    conditional_generation_config,
    conditional_prompt,
    filter_examples,
    is_conditional_adapter,
    prepare_training,
    rwr_weights,
    score_threshold,
    tag_examples,
)
from feedback_loop.engine.tokens import prompt_ids
from feedback_loop.engine.train import (
    IGNORE_INDEX,
    LoRATrainingConfig,
    add_tokens,
    load_lora_model,
    tokenize_examples,
    train_lora,
)
from feedback_loop.engine.types import GenerationConfig, SFTExample

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child"]
OBJECTS = ["the house", "a red ball", "the small book", "the garden", "the door"]


def scored_examples(n, seed=0):
    """Yes/no questions; a good answer (score 5) says Yes, a bad one (score 1) says No: the marker."""
    rng = random.Random(seed)
    examples, scores = [], []
    for i in range(n):
        prompt = f"Question: Does {rng.choice(SUBJECTS)} see {rng.choice(OBJECTS)}?\nAnswer:"
        good = i % 2 == 0
        examples.append(SFTExample(prompt, " Yes" if good else " No"))
        scores.append(5.0 if good else 1.0)
    return examples, scores


# -- the objectives' data ---------------------------------------------------------------------------


def test_tags_follow_the_threshold_and_one_percent_stay_untagged():
    examples = [SFTExample(f"p{i}", "c") for i in range(200)]
    scores = [i % 7 + 1 for i in range(200)]  # Likert 1..7

    tagged = tag_examples(examples, scores, threshold=5)

    untagged = [t for t in tagged if not t.prompt.endswith(CONTROL_TOKENS)]
    assert len(untagged) == 2  # 1% of 200
    for t, e, s in zip(tagged, examples, scores, strict=True):
        if t in untagged:
            assert t == e
        else:
            assert t.prompt == e.prompt + (GOOD if s >= 5 else BAD) and t.completion == e.completion
    assert tag_examples(examples, scores, threshold=5, untagged_fraction=0) == [
        SFTExample(e.prompt + (GOOD if s >= 5 else BAD), "c") for e, s in zip(examples, scores, strict=True)
    ]


def test_a_percentile_threshold_tags_the_top_of_the_scores():
    scores = list(range(100))
    assert score_threshold(scores, percentile=75) == pytest.approx(74.25)
    prepared = prepare_training(
        "conditional",
        [SFTExample(str(i), "c") for i in range(100)],
        scores,
        percentile=75,
        untagged_fraction=0,
    )
    assert prepared.counts == {"good": 25, "bad": 75, "untagged": 0}
    assert prepared.added_tokens == CONTROL_TOKENS
    with pytest.raises(ValueError, match="exactly one"):
        score_threshold(scores, threshold=1, percentile=50)


def test_filtering_keeps_the_good_and_rwr_weights_are_clipped_exponentials():
    examples, scores = scored_examples(10)
    assert filter_examples(examples, scores, threshold=3) == [e for e in examples if e.completion == " Yes"]
    assert rwr_weights([0.0, 1.0, 10.0], beta=2.0, max_weight=5.0) == pytest.approx([1.0, math.exp(0.5), 5.0])
    prepared = prepare_training("rwr", examples, scores, beta=1.0, max_weight=20.0)
    assert prepared.counts == {"examples": 10, "clipped": 5}  # exp(5) > 20


def test_generation_from_a_conditional_adapter_asks_for_good_and_bans_both_tokens():
    config = conditional_generation_config(GenerationConfig(bad_words=("x",)))
    assert config.bad_words == ("x", GOOD, BAD)
    assert conditional_prompt("Q:") == "Q:" + GOOD


def test_the_control_token_sits_between_prompt_and_completion_in_training_and_generation(tiny_model_dir):
    # The completion is the scored segment: its token precedes it and carries no loss, and the model is
    # asked for good outputs with exactly the context the good examples were trained with.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    good_id, bad_id = add_tokens(tokenizer, CONTROL_TOKENS)
    examples = [
        SFTExample("Question: Is it?\nAnswer:", " Yes"),
        SFTExample("Question: Is it?\nAnswer:", " No"),
    ]
    tagged = tag_examples(examples, [5.0, 1.0], threshold=5, untagged_fraction=0)
    tokenized = tokenize_examples(tokenizer, tagged, max_length=64)
    completion_ids = tokenizer([" Yes", " No"], add_special_tokens=False)["input_ids"]

    for example, token_id, completion in zip(tokenized, (good_id, bad_id), completion_ids, strict=True):
        at = example.input_ids.index(token_id)
        assert example.input_ids[at + 1 : at + 1 + len(completion)] == completion  # right before the segment
        assert example.labels[at] == IGNORE_INDEX  # no loss on the token
        assert example.labels[at + 1 : at + 1 + len(completion)] == completion  # the loss is on the segment
        assert example.input_ids.count(good_id) + example.input_ids.count(bad_id) == 1
    [asked] = prompt_ids(tokenizer, [conditional_prompt(examples[0].prompt)])
    assert asked == tokenized[0].input_ids[: tokenized[0].input_ids.index(good_id) + 1]


# -- training -----------------------------------------------------------------------------------------


def test_new_tokens_start_at_the_mean_embedding_and_only_their_rows_and_lora_train(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoRATrainingConfig(rank=4, added_tokens=CONTROL_TOKENS)
    model = load_lora_model(tiny_model_dir, config, torch.device("cpu"), tokenizer=tokenizer)

    ids = tokenizer.convert_tokens_to_ids(list(CONTROL_TOKENS))
    assert ids == [len(tokenizer) - 2, len(tokenizer) - 1]
    assert tokenizer("The cat" + GOOD, add_special_tokens=False)["input_ids"][-1] == ids[0]
    mean = base.get_input_embeddings().weight.mean(dim=0)
    embedding = model.get_input_embeddings()
    rows = embedding(torch.tensor(ids))
    assert torch.allclose(rows, mean.expand_as(rows), atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens_delta" in n for n in trainable)
    assert all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)


def test_zero_weights_train_nothing_and_unit_weights_do(tiny_model_dir, tmp_path):
    examples, _ = scored_examples(16)
    config = LoRATrainingConfig(rank=4, learning_rate=1e-2, batch_size=8, max_steps=2)
    zero = train_lora(
        tiny_model_dir, examples, tmp_path / "zero", config, progress=False, example_weights=[0.0] * 16
    )
    one = train_lora(
        tiny_model_dir, examples, tmp_path / "one", config, progress=False, example_weights=[1.0] * 16
    )

    def lora_b(result):
        weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
        return torch.cat([w.flatten() for k, w in weights.items() if "lora_B" in k])

    assert lora_b(zero).abs().max() == 0  # fresh LoRA B matrices are zero; a zero loss never moves them
    assert lora_b(one).abs().max() > 0
    with pytest.raises(ValueError, match="weights"):
        train_lora(tiny_model_dir, examples, tmp_path / "bad", config, progress=False, example_weights=[1.0])


def test_conditional_training_makes_good_samples_show_the_good_marker(tiny_model_dir, tmp_path):
    from scipy.stats import binomtest

    from feedback_loop.engine.backends.hf import HFBackend

    examples, scores = scored_examples(160)
    prepared = prepare_training("conditional", examples, scores, threshold=3, seed=0)
    config = LoRATrainingConfig(
        rank=8,
        learning_rate=3e-3,
        added_tokens_learning_rate=5e-2,
        batch_size=16,
        epochs=12,
        seed=0,
        added_tokens=prepared.added_tokens,
    )
    result = train_lora(tiny_model_dir, prepared.examples, tmp_path / "adapter", config, progress=False)

    assert is_conditional_adapter(result.adapter_dir)
    assert (result.adapter_dir / "tokenizer_config.json").exists()
    backend = HFBackend(tiny_model_dir, adapter=result.adapter_dir, batch_size=32)
    assert backend.tokenizer.convert_tokens_to_ids(GOOD) == len(backend.tokenizer) - 2

    test_prompts = [e.prompt for e in scored_examples(8, seed=1)[0]]
    sampling = conditional_generation_config(
        GenerationConfig(max_new_tokens=3, temperature=1.0, n=16, seed=0)
    )
    good = [t for ts in backend.generate([conditional_prompt(p) for p in test_prompts], sampling) for t in ts]
    bad = [t for ts in backend.generate([p + BAD for p in test_prompts], sampling) for t in ts]
    yes_good = sum(t.startswith(" Yes") for t in good)
    yes_bad = sum(t.startswith(" Yes") for t in bad)

    # Equal sample sizes: if the token did not matter, each "Yes" would come from either side with
    # probability 1/2 (a conditional binomial test of equal rates).
    test = binomtest(yes_good, yes_good + yes_bad, 0.5, alternative="greater")
    assert yes_good > yes_bad and test.pvalue < 0.01, (yes_good, yes_bad, test.pvalue)
    assert not any(token in t for t in good + bad for token in CONTROL_TOKENS)
    recorded = json.loads((result.adapter_dir / "training_config.json").read_text())
    assert recorded["run"]["config"]["added_tokens"] == list(CONTROL_TOKENS)


def test_the_train_command_takes_added_tokens_and_their_learning_rate(tiny_model_dir, tmp_path):
    from feedback_loop.engine.train import load_sft_jsonl, main

    examples, scores = scored_examples(8)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": e.prompt, "completion": e.completion}) + "\n"
            for e in tag_examples(examples, scores, threshold=3, untagged_fraction=0)
        )
    )
    main(
        [
            *("--model", str(tiny_model_dir), "--train", str(data), "--output-dir", str(tmp_path / "out")),
            *("--max-steps", "1", "--rank", "2", "--no-progress", "--added-tokens", GOOD, BAD),
            *("--added-tokens-learning-rate", "0.05"),
        ]
    )

    recorded = json.loads((tmp_path / "out" / "training_config.json").read_text())["run"]["config"]
    assert recorded["added_tokens"] == [GOOD, BAD] and recorded["added_tokens_learning_rate"] == 0.05
    assert is_conditional_adapter(tmp_path / "out")
    assert load_sft_jsonl(data)[0].prompt.endswith(GOOD)


def test_a_model_with_its_own_output_layer_trains_the_new_tokens_output_rows_too(tiny_model_dir, tmp_path):
    untied = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=False)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone() * 2)
    untied.save_pretrained(tmp_path / "untied")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "untied")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "untied")

    model = load_lora_model(
        tmp_path / "untied",
        LoRATrainingConfig(rank=2, added_tokens=CONTROL_TOKENS),
        torch.device("cpu"),
        tokenizer=tokenizer,
    )

    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n}
    assert any("wte" in n for n in trainable) and any("lm_head" in n for n in trainable)
    ids = tokenizer.convert_tokens_to_ids(list(CONTROL_TOKENS))
    output = model.get_output_embeddings()
    rows = output(torch.eye(untied.config.n_embd))[:, ids].T  # each new token's output row
    old_mean = untied.lm_head.weight[: ids[0]].mean(dim=0)
    assert torch.allclose(rows, old_mean.expand_as(rows), atol=1e-5)
