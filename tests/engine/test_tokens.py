"""Prompts are tokenized one way for generation, scoring and training, BOS included where a tokenizer adds one."""

import pytest
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from feedback_loop.engine.tokens import keep_last, prompt_ids
from feedback_loop.engine.train import IGNORE_INDEX, tokenize_examples
from feedback_loop.engine.types import SFTExample


@pytest.fixture
def gpt2_style(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def llama_style(tiny_model_dir):
    """The tiny tokenizer made to put BOS in front of every text, as Llama's does."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    return tokenizer


def test_a_tokenizer_without_leading_tokens_encodes_prompts_plainly(gpt2_style):
    plain = gpt2_style("The cat sat.", add_special_tokens=False)["input_ids"]
    assert prompt_ids(gpt2_style, ["The cat sat."]) == [plain]


def test_an_empty_prompt_still_gives_the_model_a_token(gpt2_style):
    assert prompt_ids(gpt2_style, [""]) == [[gpt2_style.bos_token_id]]


def test_bos_leads_prompts_in_training_exactly_as_in_generation(llama_style, tiny_model_dir):
    from feedback_loop.engine.backends.hf import HFBackend

    (ids,) = prompt_ids(llama_style, ["The cat sat."])
    assert ids[0] == llama_style.bos_token_id
    (example,) = tokenize_examples(llama_style, [SFTExample("The cat sat.", " On the mat.")], max_length=64)
    assert example.input_ids[: len(ids)] == ids
    assert example.labels[: len(ids)] == [IGNORE_INDEX] * len(ids)
    assert example.labels[len(ids)] != IGNORE_INDEX
    backend = HFBackend(tiny_model_dir)
    backend.tokenizer = llama_style
    assert backend._context_ids("The cat sat.") == ids


def test_cutting_a_long_prompt_keeps_its_bos():
    assert keep_last([1, 5, 6, 7, 8], 3, bos_token_id=1) == [1, 7, 8]
    assert keep_last([5, 6, 7, 8], 3, bos_token_id=1) == [6, 7, 8]
    assert keep_last([1, 5], 3, bos_token_id=1) == [1, 5]
