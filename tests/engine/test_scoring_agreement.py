"""The local and the server backend score the same text the same way (one tokenization rule).

The server is a small OpenAI-compatible /v1/completions endpoint on 127.0.0.1, built on the tiny
model the way vLLM answers: the prompt tokenized as one text, echoed token log-probs, and each
token's `text_offset` from the detokenized text before it. It also honours `logit_bias`.
"""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import torch.nn.functional as F

from feedback_loop.engine.backends.hf import HFBackend
from feedback_loop.engine.backends.openai import OpenAIBackend
from feedback_loop.engine.evaluate import MultipleChoiceItem, multiple_choice
from feedback_loop.engine.select import select_by_instruct_rm
from feedback_loop.engine.types import FeedbackItem

ITEMS = [
    # The prompt ends in a space: apart, "Answer: " + "Yes" tokenizes differently from the joint text.
    MultipleChoiceItem("Question: Does the dog see the house?\nAnswer: ", ("Yes", "No"), 0),
    MultipleChoiceItem("Question: Is the cat happy?\nAnswer:", (" Yes", " No", " Maybe"), 1),
    MultipleChoiceItem("The dog walks to the", (" garden.", " house.", "garden"), 0),
    MultipleChoiceItem("Summary: My friend reads the", (" small book", " red ball"), 1),
]


class _FakeServer:
    """What a vLLM server returns for the requests the OpenAI backend makes, from an HF model."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.requests = []
        self.tokenized = []  # texts asked of /tokenize

    @torch.inference_mode()
    def complete(self, body: dict) -> dict:
        self.requests.append(body)
        choices = []
        for index, text in enumerate(body["prompt"]):
            ids = self.tokenizer(text)["input_ids"] or [self.tokenizer.eos_token_id]
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
            for token, bias in (body.get("logit_bias") or {}).items():
                logits[:, int(token)] += bias
            logprobs = F.log_softmax(logits, -1)
            # Offsets as vLLM computes them: the length of the text detokenized so far.
            offsets = [len(self.tokenizer.decode(ids[:k])) for k in range(len(ids))]
            token_logprobs = [None] + [logprobs[k - 1, ids[k]].item() for k in range(1, len(ids))]
            last = logprobs[-1]
            top = torch.topk(last, body.get("logprobs") or 1)
            top_logprobs = {
                self.tokenizer.decode([i]): v
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            }
            generated = int(top.indices[0])
            entry = {
                "tokens": [self.tokenizer.decode([generated])],
                "token_logprobs": [top.values[0].item()],
                "top_logprobs": [top_logprobs],
                "text_offset": [len(text)],
            }
            if body.get("echo"):
                entry = {
                    "tokens": [self.tokenizer.decode([i]) for i in ids] + entry["tokens"],
                    "token_logprobs": token_logprobs + entry["token_logprobs"],
                    "top_logprobs": [None] * len(ids) + entry["top_logprobs"],
                    "text_offset": offsets + entry["text_offset"],
                }
            choices.append({"index": index, "text": entry["tokens"][-1], "logprobs": entry})
        return {"choices": choices}


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    local = HFBackend(tiny_model_dir, batch_size=3)
    fake = _FakeServer(local.model, local.tokenizer)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize":  # vLLM's, at the server's root
                fake.tokenized.append(body["prompt"])
                ids = fake.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
                payload = json.dumps({"tokens": ids["input_ids"]}).encode()
            else:
                payload = json.dumps(fake.complete(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    remote = OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}", "tiny", max_retries=0)
    try:
        yield local, remote, fake
    finally:
        remote.close()
        server.shutdown()
        server.server_close()


def test_both_backends_give_the_same_multiple_choice_logprobs(backends):
    local, remote, _ = backends
    here, there = multiple_choice(local, ITEMS), multiple_choice(remote, ITEMS)
    for a, b in zip(here.per_item, there.per_item, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert here.accuracy == there.accuracy


def test_both_backends_count_the_same_continuation_tokens(backends):
    local, remote, _ = backends
    prompts = [item.prompt for item in ITEMS for _ in item.classes]
    continuations = [c for item in ITEMS for c in item.classes]
    assert [s.n_tokens for s in local.score(prompts, continuations)] == [
        s.n_tokens for s in remote.score(prompts, continuations)
    ]


def test_the_seam_token_is_scored_as_the_joint_text_tokenizes(backends):
    local, _, _ = backends
    prompt, continuation = ITEMS[0].prompt, "Yes"
    ids = local.tokenizer(prompt + continuation)["input_ids"]
    with torch.no_grad():
        logprobs = F.log_softmax(local.model(input_ids=torch.tensor([ids])).logits[0], -1)
    [score] = local.score([prompt], [continuation])
    assert score.n_tokens == 1  # " Yes": the prompt's trailing space and the word are one token
    assert score.logprob == pytest.approx(logprobs[-2, ids[-1]].item(), abs=1e-5)
    assert math.isfinite(score.logprob)


def test_the_server_backend_refuses_a_continuation_it_cannot_score_whole(backends):
    # With no prompt and no BOS the server gives the first token no log-prob; the local backend
    # conditions it on the start token. A silently shorter sum would not be the same number.
    local, remote, _ = backends
    with pytest.raises(ValueError, match="first token"):
        remote.score([""], ["The cat"])
    assert local.score([""], ["The cat"])[0].n_tokens == 2


def test_logit_bias_keeps_both_answers_in_the_top_logprobs(backends, tiny_model_dir):
    from feedback_loop.engine.scoring import yes_probability

    local, remote, fake = backends
    prompts = ["The cat", "Question: Does the dog see the house?\nAnswer:"]
    tokens = [" Yes", " No"]
    narrow = OpenAIBackend(str(remote._client.base_url), "tiny", top_logprobs=1)
    unbiased = narrow.next_token_logprobs(prompts, tokens)
    # With only the top token returned, one answer is missing and the ratio would read 0 or 1.
    assert any(math.isinf(row[" Yes"]) or math.isinf(row[" No"]) for row in unbiased)
    ids = {t: local.tokenizer(t)["input_ids"][0] for t in tokens}
    biased_backend = OpenAIBackend(str(remote._client.base_url), "tiny", top_logprobs=1, token_ids=ids)
    biased = biased_backend.next_token_logprobs(prompts, tokens)
    assert fake.requests[-1]["logit_bias"] == {str(ids[" Yes"]): 100.0, str(ids[" No"]): 100.0}
    for here, there in zip(local.next_token_logprobs(prompts, tokens), biased, strict=True):
        assert yes_probability(there[" Yes"], there[" No"]) == pytest.approx(
            yes_probability(here[" Yes"], here[" No"]), abs=1e-4
        )
    narrow.close()
    biased_backend.close()


def test_answer_token_ids_can_come_from_the_servers_tokenize(backends):
    local, remote, fake = backends
    backend = OpenAIBackend(str(remote._client.base_url), "tiny", top_logprobs=1, token_ids="server")
    [row] = backend.next_token_logprobs(["The cat"], [" Yes", " No"])
    ids = {t: local.tokenizer(t)["input_ids"][0] for t in (" Yes", " No")}
    assert backend.token_ids == ids
    assert fake.requests[-1]["logit_bias"] == {str(i): 100.0 for i in ids.values()}
    assert all(math.isfinite(v) for v in row.values())
    backend.close()


def test_multi_token_answers_are_scored_whole_without_logit_bias(backends, caplog):
    local, remote, fake = backends
    prompts = ["The cat", "Statement: The cat sees the house. Is the statement True or False?\nAnswer:"]
    tokens = [" Yes", " No", " True", " False"]
    assert len(local.tokenizer(" True")["input_ids"]) > 1  # the tiny vocabulary splits it
    backend = OpenAIBackend(str(remote._client.base_url), "tiny", top_logprobs=1, token_ids="server")
    fake.requests.clear()
    with caplog.at_level("WARNING", logger="feedback_loop.engine.backends.openai"):
        there = backend.next_token_logprobs(prompts, tokens)
        backend.next_token_logprobs(prompts, tokens)
    # Said once per backend, and no request carried a bias that would have moved only " Tr".
    [warning] = [r.message for r in caplog.records if "logit_bias" in r.message]
    assert "' True'" in warning
    assert fake.requests and all("logit_bias" not in r and r.get("echo") for r in fake.requests)
    assert " True" in backend.multi_token_answers and " Yes" in backend.token_ids
    # Every answer has a finite log-prob, the same number the local backend reads (chain rule).
    for here, row in zip(local.next_token_logprobs(prompts, tokens), there, strict=True):
        assert all(math.isfinite(v) for v in row.values())
        assert row == pytest.approx(here, abs=1e-4)
    backend.close()


def test_single_token_answers_still_get_logit_bias_after_a_multi_token_question(backends):
    local, remote, fake = backends
    backend = OpenAIBackend(str(remote._client.base_url), "tiny", top_logprobs=1, token_ids="server")
    backend.next_token_logprobs(["The cat"], [" True", " False"])
    [row] = backend.next_token_logprobs(["The cat"], [" Yes", " No"])
    ids = {t: local.tokenizer(t)["input_ids"][0] for t in (" Yes", " No")}
    assert fake.requests[-1]["logit_bias"] == {str(i): 100.0 for i in ids.values()}
    assert not fake.requests[-1].get("echo") and all(math.isfinite(v) for v in row.values())
    backend.close()


def test_the_command_line_puts_logit_bias_on_instruct_rm_answers_against_a_server(backends, tmp_path):
    from feedback_loop.engine.cli import main, read_jsonl, write_jsonl

    local, remote, fake = backends
    row = {
        "prompt": "Describe the cat.",
        "output": "A cat.",
        "feedback": "Say more.",
        "refinements": ["The cat sees."],
    }
    write_jsonl(tmp_path / "in.jsonl", [row])
    fake.requests.clear()
    main(
        [
            "select",
            "--method",
            "instruct_rm",
            "--model",
            "tiny",
            "--base-url",
            str(remote._client.base_url),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
        ]
    )
    # The command line's server backend looks the answer tokens up for logit_bias. The tiny
    # vocabulary has no single " True" token, so with True/False templates asked the bias stays off
    # and every answer is scored whole, as the local backend scores it.
    [out] = read_jsonl(tmp_path / "out.jsonl")
    assert out["selected_index"] == 0
    assert {"a Yes", "a No", "a True"} <= set(fake.tokenized)
    assert all("logit_bias" not in r and r.get("echo") for r in fake.requests)
    [here] = select_by_instruct_rm(
        local, [FeedbackItem(row["prompt"], row["output"], row["feedback"])], [row["refinements"]]
    )
    assert out["scores"] == pytest.approx(here.scores, abs=1e-4)
