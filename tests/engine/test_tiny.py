import hashlib

from transformers import AutoModelForCausalLM, AutoTokenizer

from feedback_loop.engine.tiny import build_tiny_model


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_model_loads_with_auto_classes_and_has_a_left_pad_token(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tokenizer.pad_token is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"
    assert model.config.vocab_size == len(tokenizer)
    assert 800 <= len(tokenizer) <= 2048
    # Yes/No are single tokens, so InstructRM reads them from one next-token distribution.
    assert len(tokenizer(" Yes")["input_ids"]) == 1
    assert len(tokenizer(" No")["input_ids"]) == 1


def test_tiny_model_is_deterministic_for_a_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3, pretrain_steps=2)
    b = build_tiny_model(tmp_path / "b", seed=3, pretrain_steps=2)
    c = build_tiny_model(tmp_path / "c", seed=4, pretrain_steps=2)
    assert _digest(a) == _digest(b)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]


def test_pretrained_tiny_model_writes_corpus_words(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    inputs = tokenizer(["The cat"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    words = text.replace(".", " ").split()
    assert words, text
    corpus_words = {
        "the",
        "a",
        "cat",
        "dog",
        "sees",
        "likes",
        "finds",
        "walks",
        "to",
        "reads",
        "writes",
        "opens",
        "helps",
        "makes",
        "loves",
        "house",
        "red",
        "ball",
        "small",
        "book",
        "garden",
    }
    assert sum(w.lower() in corpus_words for w in words) >= len(words) // 2, text
