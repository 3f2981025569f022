import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import torch
import torch.nn.functional as F

from feedback_loop.engine.backends import load_backend
from feedback_loop.engine.backends.hf import HFBackend
from feedback_loop.engine.backends.openai import BackendError, OpenAIBackend, ScoringNotSupported
from feedback_loop.engine.types import GenerationConfig

# Prompts of very different lengths, so a batch needs real left padding.
PROMPTS = [
    "The cat",
    "Question: Does the dog see the house?\nAnswer:",
    "Output: The dog likes a red ball today.\nFeedback: Please be more concise.\nImproved output:",
    "A",
    "Summary: My friend reads the small book",
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return HFBackend(tiny_model_dir, batch_size=4)


# -- HF backend -------------------------------------------------------------------------------------


def test_hf_backend_defaults_to_cpu_and_fp32_without_a_gpu(backend):
    assert backend.device == "cpu"
    assert backend.model.dtype == torch.float32


def test_sampling_is_reproducible_under_a_seed(backend):
    config = GenerationConfig(max_new_tokens=12, temperature=1.0, n=3, seed=7)
    first = backend.generate(PROMPTS[:2], config)
    assert first == backend.generate(PROMPTS[:2], config)
    assert all(len(samples) == 3 for samples in first)
    other_seed = backend.generate(
        PROMPTS[:2], GenerationConfig(max_new_tokens=12, temperature=1.0, n=3, seed=8)
    )
    assert other_seed != first


def test_batched_greedy_generation_matches_one_by_one(backend):
    config = GenerationConfig(max_new_tokens=16)
    batched = backend.generate(PROMPTS, config)
    one_by_one = [backend.generate([p], config)[0] for p in PROMPTS]
    assert batched == one_by_one
    assert any(text[0].strip() for text in batched)


def test_greedy_generation_with_n_returns_n_copies(backend):
    [texts] = backend.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=8, n=3))
    assert len(texts) == 3 and len(set(texts)) == 1


def test_stop_strings_cut_the_output(backend):
    [[free]] = backend.generate(["The cat"], GenerationConfig(max_new_tokens=24))
    assert "." in free
    [[stopped]] = backend.generate(["The cat"], GenerationConfig(max_new_tokens=24, stop=(".",)))
    assert stopped == free[: free.index(".")]


def test_score_equals_the_sum_of_token_logprobs_from_an_unpadded_forward(backend):
    prompt, continuation = PROMPTS[1], " Yes it does."
    tok = backend.tokenizer
    context = tok(prompt)["input_ids"]
    target = tok(continuation)["input_ids"]
    with torch.no_grad():
        logits = backend.model(input_ids=torch.tensor([context + target])).logits[0]
    logprobs = F.log_softmax(logits, -1)
    expected = sum(logprobs[len(context) - 1 + k, t].item() for k, t in enumerate(target))

    # Scored in a batch with longer and shorter rows, so the row is padded.
    scores = backend.score([PROMPTS[2], prompt, "A"], [" The cat.", continuation, " cat"])
    assert scores[1].n_tokens == len(target)
    assert scores[1].logprob == pytest.approx(expected, abs=1e-4)


def test_batched_scores_match_one_by_one(backend):
    continuations = [" sees the house.", " No", "", " The dog walks to the garden.", " is happy."]
    batched = backend.score(PROMPTS, continuations)
    for prompt, cont, got in zip(PROMPTS, continuations, batched, strict=True):
        [alone] = backend.score([prompt], [cont])
        assert got.n_tokens == alone.n_tokens
        assert got.logprob == pytest.approx(alone.logprob, abs=1e-4)
    assert batched[2].n_tokens == 0 and batched[2].logprob == 0.0


def test_next_token_logprobs_agree_with_score(backend):
    got = backend.next_token_logprobs(PROMPTS, [" Yes", " No"])
    for prompt, row in zip(PROMPTS, got, strict=True):
        for token in (" Yes", " No"):
            assert row[token] == pytest.approx(backend.score([prompt], [token])[0].logprob, abs=1e-4)
    # The tiny model learned that a yes/no question is answered with Yes or No.
    assert math.exp(got[1][" Yes"]) + math.exp(got[1][" No"]) > 0.5


def test_switching_adapters_changes_outputs_and_switching_back_restores_them(
    tiny_model_dir, tiny_adapter_dir
):
    backend = HFBackend(tiny_model_dir, batch_size=4)
    config = GenerationConfig(max_new_tokens=12)
    base_texts = backend.generate(PROMPTS, config)
    base_scores = backend.score(PROMPTS, [" the house."] * len(PROMPTS))

    backend.load_adapter(tiny_adapter_dir, "random")
    # Loading alone does not switch: the base model stays active until set_adapter.
    assert backend.generate(PROMPTS, config) == base_texts
    backend.set_adapter("random")
    adapted_scores = backend.score(PROMPTS, [" the house."] * len(PROMPTS))
    assert backend.generate(PROMPTS, config) != base_texts
    assert all(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(adapted_scores, base_scores, strict=True))

    backend.set_adapter(None)
    assert backend.generate(PROMPTS, config) == base_texts
    restored = backend.score(PROMPTS, [" the house."] * len(PROMPTS))
    assert [s.logprob for s in restored] == pytest.approx([s.logprob for s in base_scores], abs=1e-5)

    with pytest.raises(KeyError):
        backend.set_adapter("missing")


def test_load_backend_builds_an_hf_backend_with_its_adapter(tiny_model_dir, tiny_adapter_dir):
    backend = load_backend({"kind": "hf", "model": str(tiny_model_dir), "adapter": str(tiny_adapter_dir)})
    assert isinstance(backend, HFBackend)
    assert backend.active_adapter == "default"
    with pytest.raises(ValueError, match="unknown backend kind"):
        load_backend({"kind": "carrier-pigeon"})


# -- OpenAI-compatible backend ----------------------------------------------------------------------


class _ScriptedServer(BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, body) pairs and records the requests."""

    script: list[tuple[int, dict]] = []
    requests: list[tuple[str, dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        status, answer = type(self).script.pop(0)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    handler = type("Handler", (_ScriptedServer,), {"script": [], "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_backend_retries_a_rate_limit_then_succeeds(fake_server):
    handler, url = fake_server
    handler.script = [
        (429, {"error": {"message": "slow down"}}),
        (503, {"error": {"message": "overloaded"}}),
        (200, {"choices": [{"index": 0, "text": " hello."}]}),
    ]
    sleeps = []
    backend = OpenAIBackend(url, "m", max_retries=3, backoff_s=0.5, sleep=sleeps.append)
    assert backend.generate(["Hi"], GenerationConfig(max_new_tokens=5)) == [[" hello."]]
    assert [path for path, _ in handler.requests] == ["/v1/completions"] * 3
    assert sleeps == [0.5, 1.0]  # exponential backoff


def test_openai_backend_gives_up_after_max_retries(fake_server):
    handler, url = fake_server
    handler.script = [(500, {"error": "boom"})] * 3
    backend = OpenAIBackend(url, "m", max_retries=2, backoff_s=0, sleep=lambda s: None)
    with pytest.raises(BackendError, match="after 3 tries"):
        backend.generate(["Hi"], GenerationConfig())


def _mock(handler):
    requests = []

    def respond(request):
        body = json.loads(request.content)
        requests.append(body)
        return handler(body)

    return httpx.MockTransport(respond), requests


def test_openai_backend_retries_connection_errors_but_not_bad_requests():
    calls = []

    def respond(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(400, json={"error": {"message": "bad model"}})

    backend = OpenAIBackend(
        "http://x", "m", backoff_s=0, sleep=lambda s: None, transport=httpx.MockTransport(respond)
    )
    with pytest.raises(BackendError, match="400"):
        backend.generate(["Hi"], GenerationConfig())
    assert len(calls) == 2


def test_openai_generate_sends_sampling_options_and_keeps_prompt_order():
    def answer(body):
        n = body["n"]
        choices = [
            {"index": i * n + k, "text": f"{p}-{k}STOP tail"}
            for i, p in enumerate(body["prompt"])
            for k in range(n)
        ]
        return httpx.Response(200, json={"choices": list(reversed(choices))})

    transport, requests = _mock(answer)
    backend = OpenAIBackend("http://x/v1/", "m", batch_size=2, transport=transport)
    config = GenerationConfig(max_new_tokens=7, temperature=0.8, top_p=0.9, n=2, seed=3, stop=("STOP",))
    assert backend.generate(["a", "b", "c"], config) == [["a-0", "a-1"], ["b-0", "b-1"], ["c-0", "c-1"]]
    assert [r["prompt"] for r in requests] == [["a", "b"], ["c"]]
    assert requests[0] | {"prompt": None} == {
        "model": "m",
        "prompt": None,
        "max_tokens": 7,
        "temperature": 0.8,
        "top_p": 0.9,
        "n": 2,
        "seed": 3,
        "stop": ["STOP"],
    }


def test_openai_score_sums_the_echoed_logprobs_of_the_continuation_only():
    # "Q:" + " Yes" tokenized as ["Q", ":", " Yes"] plus one generated token after the text.
    def answer(body):
        assert body["echo"] is True and body["prompt"] == ["Q: Yes"]
        logprobs = {
            "tokens": ["Q", ":", " Yes", "!"],
            "token_logprobs": [None, -1.0, -0.5, -3.0],
            "text_offset": [0, 1, 2, 6],
        }
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "Q: Yes!", "logprobs": logprobs}]})

    transport, _ = _mock(answer)
    [score] = OpenAIBackend("http://x", "m", transport=transport).score(["Q:"], [" Yes"])
    assert score.logprob == pytest.approx(-0.5)
    assert score.n_tokens == 1


def test_openai_score_says_clearly_when_the_server_cannot_echo():
    transport, _ = _mock(
        lambda body: httpx.Response(400, json={"error": "echo is not supported with logprobs"})
    )
    with pytest.raises(ScoringNotSupported, match="cannot score"):
        OpenAIBackend("http://x", "m", transport=transport).score(["Q:"], [" Yes"])


def test_openai_next_token_logprobs_read_the_top_logprobs():
    def answer(body):
        assert body["max_tokens"] == 1 and body["logprobs"] == 5
        top = [{" Yes": -0.2, " No": -1.9, " Maybe": -4.0}]
        return httpx.Response(
            200, json={"choices": [{"index": 0, "text": " Yes", "logprobs": {"top_logprobs": top}}]}
        )

    transport, _ = _mock(answer)
    backend = OpenAIBackend("http://x", "m", top_logprobs=5, transport=transport)
    [row] = backend.next_token_logprobs(["Q:"], [" Yes", " No", " Never"])
    assert row == {" Yes": -0.2, " No": -1.9, " Never": -math.inf}


# -- banned words -----------------------------------------------------------------------------------


def test_hf_generation_never_writes_a_banned_word(backend):
    config = GenerationConfig(max_new_tokens=12, temperature=1.0, n=8, seed=0)
    free = backend.generate(["The cat"], config)[0]
    word = " the"
    assert any(word in t for t in free)  # the tiny model writes it unprompted

    banned = backend.generate(["The cat"], GenerationConfig(**{**config.__dict__, "bad_words": (word,)}))[0]
    ids = backend.tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    for text in banned:
        assert ids[0] not in backend.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_openai_generation_bans_words_with_logit_bias(tiny_model_dir):
    transport, requests = _mock(
        lambda body: httpx.Response(200, json={"choices": [{"index": 0, "text": "x"}]})
    )
    backend = OpenAIBackend(
        "http://x", "m", transport=transport, token_ids={"<|good|>": 1024}, tokenizer=str(tiny_model_dir)
    )
    backend.generate(["a"], GenerationConfig(bad_words=("<|good|>", "<|endoftext|>")))
    assert requests[0]["logit_bias"] == {"1024": -100, "0": -100}

    with pytest.raises(ValueError, match="single tokens"):
        backend.generate(["a"], GenerationConfig(bad_words=("several words here",)))
    without_ids = OpenAIBackend("http://x", "m", transport=transport)
    with pytest.raises(ValueError, match="token id"):
        without_ids.generate(["a"], GenerationConfig(bad_words=("<|good|>",)))
