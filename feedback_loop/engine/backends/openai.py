"""Any OpenAI-compatible completions server (vLLM, TGI, OpenAI) over HTTP.

Everything goes through `/v1/completions`, the one endpoint that offers all three operations:
sampling (`n`, `temperature`, `top_p`, `seed`, `stop`), scoring (`echo=True` with `logprobs`
returns the prompt's own token log-probs, where the server supports it) and next-token log-probs
(`logprobs=k` returns the top k). Rate limits (429), server errors (5xx), dropped connections and
timeouts are retried with exponential backoff.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import httpx

from feedback_loop.engine.types import ContinuationScore, GenerationConfig

logger = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """The server refused a request or kept failing after every retry."""


class ScoringNotSupported(BackendError):
    """The server does not return prompt log-probs (`echo=True` with `logprobs`)."""


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s and (i := text.find(s)) != -1:
            cut = min(cut, i)
    return text[:cut]


class OpenAIBackend:
    """A model served behind an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60,
        max_retries: int = 5,
        batch_size: int = 16,
        top_logprobs: int = 20,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        token_ids: Mapping[str, int] | Literal["server"] | None = None,
        answer_bias: float = 100.0,
        tokenizer: str | None = None,
    ):
        base_url = base_url.rstrip("/")
        if not base_url.endswith("/v1"):
            base_url += "/v1"
        self.name = model
        self.model = model
        self.max_retries = max_retries
        self.batch_size = batch_size  # prompts per request
        self.top_logprobs = top_logprobs  # OpenAI allows 5, vLLM 20 by default
        self.backoff_s = backoff_s
        # The served model's id of each answer token (" Yes": 7010, ...): with them, next-token
        # questions put `answer_bias` on every candidate, so all of them are among the top log-probs.
        # "server": ask the server's /tokenize (vLLM's) for them, once per token.
        self._lookup = token_ids == "server"
        self.token_ids: dict[str, int] = {} if token_ids in (None, "server") else dict(token_ids)  # type: ignore[arg-type]
        # Answers the server's tokenizer splits into several tokens (" True" in a small vocabulary):
        # logit_bias and the top log-probs of one generated token cannot read them.
        self.multi_token_answers: set[str] = set()
        self.answer_bias = answer_bias
        self._warned: set[tuple[str, ...]] = set()
        self._sleep = sleep
        # Banned words go out as token ids in `logit_bias` too: known ids (`token_ids`), else the
        # served model's tokenizer (a local folder or HF id; for a conditionally trained adapter,
        # the adapter's folder).
        self.tokenizer_path = tokenizer
        self._tokenizer = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    # -- HTTP with retries -----------------------------------------------------------------------

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._client.post(path, json=payload)
            except httpx.TransportError as error:  # connection refused or reset, timeouts
                if last:
                    raise BackendError(f"POST {path} failed after {attempt + 1} tries: {error!r}") from error
                self._sleep(self.backoff_s * 2**attempt)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if last:
                    raise BackendError(
                        f"POST {path} failed after {attempt + 1} tries: {response.status_code} {response.text[:500]}"
                    )
                self._sleep(self._retry_delay(response, attempt))
                continue
            if response.status_code >= 400:
                raise BackendError(f"POST {path}: {response.status_code} {response.text[:500]}")
            return response.json()
        raise AssertionError("unreachable")

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        # A server that says when to come back knows better than our backoff schedule.
        retry_after = response.headers.get("retry-after")
        try:
            seconds = float(retry_after) if retry_after is not None else math.nan
        except ValueError:  # an HTTP date, or garbage
            seconds = math.nan
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), 60.0)
        return self.backoff_s * 2**attempt

    def _complete(self, prompts: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        """One choice per (prompt, sample), ordered by prompt then sample, batched by `batch_size`."""
        n = options.get("n", 1)
        choices: list[dict[str, Any]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            body = self._post("/completions", {"model": self.model, "prompt": chunk, **options})
            got = sorted(body.get("choices", []), key=lambda c: c.get("index", 0))
            if len(got) != len(chunk) * n:
                raise BackendError(f"expected {len(chunk) * n} choices, the server returned {len(got)}")
            choices.extend(got)
        return choices

    # -- the backend interface -------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        sampling = config.temperature > 0
        n = config.n if sampling else 1  # greedy decoding gives one text; we copy it n times
        options: dict[str, Any] = {
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p if sampling else 1.0,
            "n": n,
        }
        if config.seed is not None:
            options["seed"] = config.seed
        if config.stop:
            options["stop"] = list(config.stop)
        if config.bad_words:
            # -100 is the floor of OpenAI's logit_bias and, in vLLM too, means "never sample this token".
            options["logit_bias"] = {str(self._token_id(w)): -100 for w in config.bad_words}
        choices = self._complete(prompts, **options)
        texts = [_cut_at_stop(c.get("text", ""), config.stop) for c in choices]
        return [texts[i * n : (i + 1) * n] * (1 if sampling else config.n) for i in range(len(prompts))]

    def _token_id(self, word: str) -> int:
        """The one token id of a banned word; logit_bias cannot ban a sequence of tokens."""
        if word in self.token_ids:
            return self.token_ids[word]
        if self.tokenizer_path is None:
            raise ValueError(
                f"{self.model}: banning {word!r} needs its token id: pass token_ids or tokenizer to the backend"
            )
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        ids = self._tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{word!r} is {len(ids)} tokens; logit_bias can only ban single tokens")
        self.token_ids[word] = ids[0]
        return ids[0]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ContinuationScore]:
        """Prompt log-probs echoed back by the server, for prompt + continuation sent as one text.

        A token belongs to the continuation when it ends past the prompt (by its character offset):
        the same rule as the local backend's joint tokenization, so both count the same tokens.
        """
        if len(prompts) != len(continuations):
            raise ValueError("score needs one continuation per prompt")
        full = [p + c for p, c in zip(prompts, continuations, strict=True)]
        try:
            # max_tokens=1, not 0: some servers reject 0; the generated token is dropped below.
            choices = self._complete(full, max_tokens=1, temperature=0.0, echo=True, logprobs=1)
        except BackendError as error:
            if "echo" in str(error) or "logprobs" in str(error):
                raise ScoringNotSupported(
                    f"{self.model}: the server cannot score text (echo=True with logprobs): {error}"
                ) from error
            raise
        scores = []
        for prompt, text, choice in zip(prompts, full, choices, strict=True):
            logprobs = choice.get("logprobs") or {}
            offsets, token_logprobs = logprobs.get("text_offset"), logprobs.get("token_logprobs")
            if not offsets or token_logprobs is None:
                raise ScoringNotSupported(
                    f"{self.model}: the server returned no prompt log-probs for echo=True; it cannot score text"
                )
            total, count = 0.0, 0
            for k, (start, lp) in enumerate(zip(offsets, token_logprobs, strict=False)):
                end = offsets[k + 1] if k + 1 < len(offsets) else len(text)
                # A token belongs to the continuation if it ends past the prompt; tokens starting at the
                # end of the echoed text are the generated one we asked for, not part of the input.
                if start >= len(text) or end <= len(prompt):
                    continue
                if lp is None:  # the text's first token, with nothing before it to condition on
                    raise ValueError(
                        f"{self.model}: the server gives the first token of {text[:40]!r} no log-prob; "
                        "a continuation needs a non-empty prompt to be scored whole"
                    )
                total += lp
                count += 1
            scores.append(ContinuationScore(logprob=total, n_tokens=count))
        return scores

    def _look_up_token_ids(self, tokens: Sequence[str]) -> None:
        """Learn each token's id from the server's /tokenize (vLLM): the ids of "a" + token past
        those of "a", so that " Yes" is the token a model writes after text. A token that is not one
        token, or a server without the endpoint, leaves the ids unknown (and the bias off)."""
        root = str(self._client.base_url).rstrip("/").removesuffix("/v1")

        def ids(text: str) -> list[int]:
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
            response = self._client.post(f"{root}/tokenize", json=body)
            response.raise_for_status()
            return list(response.json()["tokens"])

        for token in tokens:
            if token in self.token_ids:
                continue
            try:
                prefix, joined = ids("a"), ids("a" + token)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                self._lookup = False  # no such endpoint: do not ask again
                return
            if joined[: len(prefix)] == prefix and len(joined) == len(prefix) + 1:
                self.token_ids[token] = joined[-1]
            elif joined[: len(prefix)] == prefix and len(joined) > len(prefix) + 1:
                self.multi_token_answers.add(token)

    def next_token_logprobs(self, prompts: Sequence[str], tokens: Sequence[str]) -> list[dict[str, float]]:
        """Read from the top log-probs of the first generated token; a token not among them gets -inf.

        When every candidate's id is known (`token_ids`), each gets the same `logit_bias`, so all of
        them are among the top log-probs whatever the model prefers: a " No" that would have fallen
        out of the top k can no longer make P(Yes) / (P(Yes) + P(No)) read 1.0. The same bias on
        every candidate leaves their differences (all that ratio reads) as the model has them.

        logit_bias moves single tokens only. When an answer is known to be several tokens (from the
        server's /tokenize), no bias is sent: every answer is scored as a continuation of its prompt
        (`score`, echo=True), the sum of its tokens' log-probs as the local backend scores it, so all
        answers of a question are read on one scale.
        """
        if self._lookup:
            self._look_up_token_ids(tokens)
        several = sorted(t for t in tokens if t in self.multi_token_answers)
        if several:
            return self._answer_logprobs_by_scoring(prompts, tokens, several)
        options: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "logprobs": self.top_logprobs}
        if tokens and all(t in self.token_ids for t in tokens):
            options["logit_bias"] = {str(self.token_ids[t]): self.answer_bias for t in tokens}
            options["logprobs"] = max(self.top_logprobs, len(set(tokens)))
        choices = self._complete(prompts, **options)
        results = []
        for choice in choices:
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [{}])[0] or {}
            results.append({t: float(top.get(t, -math.inf)) for t in tokens})
        return results

    def _answer_logprobs_by_scoring(
        self, prompts: Sequence[str], tokens: Sequence[str], several: Sequence[str]
    ) -> list[dict[str, float]]:
        """Each answer's log-prob after each prompt, scored whole (echo=True), without logit_bias."""
        if tuple(several) not in self._warned:
            self._warned.add(tuple(several))
            logger.warning(
                "%s: the answers %s are several tokens each, and logit_bias can only move single tokens; "
                "no bias is sent and every answer is scored as a continuation (echo=True with logprobs)",
                self.model,
                list(several),
            )
        pairs = [(p, t) for p in prompts for t in tokens]
        try:
            scores = self.score([p for p, _ in pairs], [t for _, t in pairs])
        except ScoringNotSupported as error:
            raise ScoringNotSupported(
                f"{self.model}: the answers {list(several)} are several tokens; reading them needs a server "
                f"that scores text (echo=True with logprobs), or single-token answers: {error}"
            ) from error
        flat = [s.logprob if s.n_tokens else -math.inf for s in scores]
        return [
            dict(zip(tokens, flat[i * len(tokens) : (i + 1) * len(tokens)], strict=True))
            for i in range(len(prompts))
        ]
