"""A local Hugging Face causal language model, optionally with LoRA adapters switched in place.

Prompts are sorted by length inside each call so that a batch holds prompts of similar length
(less padding), and the results are put back in the caller's order. Padding is on the left, so
every prompt ends at the same position: generation continues all rows at once, and the tokens we
score sit at the right edge of the batch, where `logits_to_keep` can keep only them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from feedback_loop.engine.devices import pick_device, pick_dtype
from feedback_loop.engine.tokens import keep_last, prompt_ids
from feedback_loop.engine.types import ContinuationScore, GenerationConfig


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to (not including) the earliest stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class HFBackend:
    """A transformers causal LM from a model id or a local folder, with optional peft LoRA adapters."""

    def __init__(
        self,
        model: str | Path,
        *,
        adapter: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 8,
        progress: bool = False,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = str(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.progress = progress
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            # Models like GPT-2 ship without a pad token; padded positions are masked out anyway.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype).to(self.device)
        self.model.eval()
        self.active_adapter: str | None = None
        if adapter is not None:
            self.load_adapter(adapter, "default")
            self.set_adapter("default")

    # -- adapters --------------------------------------------------------------------------------

    def load_adapter(self, path: str | Path, name: str) -> None:
        """Load a LoRA adapter next to the others; the base weights stay as they are."""
        from peft import PeftModel

        self._take_adapter_tokenizer(Path(path))
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(
                self.model, str(path), adapter_name=name, is_trainable=False
            )
        self.model.to(self.device)
        self.model.eval()
        # peft activates the first adapter it loads; keep what the caller chose until set_adapter.
        if self.active_adapter is not None:
            self.model.set_adapter(self.active_adapter)

    def _take_adapter_tokenizer(self, path: Path) -> None:
        """An adapter trained with added tokens (conditional training) ships its grown tokenizer: use it,
        and grow the base embeddings to match (the adapter holds the new tokens' rows). Text without the
        new tokens encodes as before, so other adapters and the base model are unaffected."""
        from transformers import AutoTokenizer

        if not (path / "tokenizer_config.json").exists():
            return
        tokenizer = AutoTokenizer.from_pretrained(path)
        rows = self.model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            from peft import PeftModel

            if isinstance(self.model, PeftModel):
                raise ValueError(f"{path}: load an adapter with added tokens before the other adapters")
            self.model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if len(tokenizer) >= len(self.tokenizer):
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self.tokenizer = tokenizer

    def set_adapter(self, name: str | None) -> None:
        """Make `name` the active adapter; None runs the base model."""
        if name is not None:
            if name not in self.adapters:
                raise KeyError(f"adapter {name!r} is not loaded (loaded: {sorted(self.adapters)})")
            self.model.set_adapter(name)
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        """Free an adapter's weights (a long-lived worker loads a new one every round)."""
        if name == self.active_adapter:
            self.active_adapter = None
        self.model.delete_adapter(name)
        if not self.adapters:
            # peft keeps naming the deleted adapter as active; with none left, go back to the
            # plain base model (the next load_adapter wraps it again).
            self.model = self.model.unload()
        elif self.active_adapter is not None:
            self.model.set_adapter(self.active_adapter)

    @property
    def adapters(self) -> list[str]:
        return list(getattr(self.model, "peft_config", {}) or {})

    def _adapter_context(self):
        if self.active_adapter is None and self.adapters:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    # -- helpers ---------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _context_ids(self, prompt: str, room: int | None = None) -> list[int]:
        """The prompt as the model is trained to see it (feedback_loop.engine.tokens), cut to `room`."""
        (ids,) = prompt_ids(self.tokenizer, [prompt])
        return ids if room is None else keep_last(ids, room, bos_token_id=self.tokenizer.bos_token_id)

    def _candidate_ids(self, token: str) -> list[int]:
        """The ids `token` gets when it follows other text, as it does after a prompt.

        Encoded alone, " Yes" is one token for byte-level BPE but may become "▁" + "▁Yes" for
        SentencePiece tokenizers that add a dummy prefix; after text, both give the one token a
        model would actually write next.
        """
        prefix = self._encode("a")
        joined = self._encode("a" + token)
        if joined[: len(prefix)] == prefix:
            return joined[len(prefix) :]
        return self._encode(token)

    def _bad_words_ids(self, words: Sequence[str]) -> list[list[int]]:
        """Each banned text as token ids, both as it is encoded alone and after other text (they can
        differ, and either could be generated)."""
        banned: list[list[int]] = []
        for word in words:
            for ids in (self._encode(word), self._candidate_ids(word)):
                if ids and ids not in banned:
                    banned.append(ids)
        return banned

    @property
    def max_length(self) -> int:
        n = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )
        return int(n or 2048)

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Indices grouped into batches of similar length, longest first (an OOM shows up at once)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        from tqdm.auto import tqdm

        starts = range(0, len(order), self.batch_size)
        for s in tqdm(starts, disable=not self.progress or len(starts) < 2, desc=self.name, leave=False):
            yield order[s : s + self.batch_size]

    def _left_pad(self, rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        attention_mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        return input_ids, attention_mask

    @staticmethod
    def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        # With left padding, the first real token must sit at position 0 (GPT-2 has absolute positions).
        return (attention_mask.cumsum(-1) - 1).clamp(min=0)

    # -- the backend interface -------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        """`config.n` completions per prompt, stop strings cut off, in the prompts' order."""
        if not prompts:
            return []
        room = self.max_length - config.max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt")
        # Keep the end of an over-long prompt: it is what the continuation depends on.
        encoded = [self._context_ids(p, room) for p in prompts]
        sampling = config.temperature > 0
        if config.seed is not None:
            torch.manual_seed(config.seed)
        options = dict(max_new_tokens=config.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if sampling:
            options.update(
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=0,  # no hidden top-k cut: temperature and top-p are the whole sampling rule
                num_return_sequences=config.n,
            )
        else:
            options.update(do_sample=False)
        if config.bad_words:
            options.update(bad_words_ids=self._bad_words_ids(config.bad_words))
        if config.stop:
            # Stop early once every row has written a stop string; the text is cut below anyway.
            options.update(stop_strings=list(config.stop), tokenizer=self.tokenizer)

        results: list[list[str]] = [[] for _ in prompts]
        with self._adapter_context():
            for batch in self._batches([len(e) for e in encoded]):
                input_ids, attention_mask = self._left_pad([encoded[i] for i in batch])
                output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
                new_tokens = output[:, input_ids.shape[1] :]
                texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                texts = [cut_at_stop(t, config.stop) for t in texts]
                per_prompt = config.n if sampling else 1
                for j, i in enumerate(batch):
                    own = texts[j * per_prompt : (j + 1) * per_prompt]
                    # Greedy decoding gives the same text every time: n copies of one.
                    results[i] = own if sampling else own * config.n
        return results

    def _forward_logprobs(self, rows: Sequence[list[int]], keep: int) -> torch.Tensor:
        """Log-softmax of the last `keep` positions' logits, fp32, shape (batch, keep, vocab)."""
        input_ids, attention_mask = self._left_pad(rows)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self._position_ids(attention_mask),
            logits_to_keep=keep,
        ).logits
        return F.log_softmax(logits.float(), dim=-1)

    def _joint_ids(self, prompt: str, continuation: str) -> tuple[list[int], int]:
        """Token ids of prompt + continuation tokenized as one text, and how many of the last ones
        belong to the continuation: those that end past the prompt (the rule the OpenAI backend
        applies to a server's echoed offsets, so both backends count the same tokens).

        Tokenizing the two apart would give other tokens at the seam (" Yes" after "Answer:" is one
        byte-level token, but "Answer: " + "Yes" is two), and SentencePiece would put a dummy-prefix
        token in front of the continuation; the joint text has neither problem.
        """
        full = prompt + continuation
        encoded = self.tokenizer(full, add_special_tokens=True, return_offsets_mapping=self.tokenizer.is_fast)
        ids = list(encoded["input_ids"])
        eos = self.tokenizer.eos_token_id
        if eos is not None and ids and ids[-1] == eos and not full.endswith(self.tokenizer.eos_token or "\0"):
            ids.pop()  # a tokenizer that appends EOS to every text (as in feedback_loop.engine.tokens)
        if self.tokenizer.is_fast:
            ends = [end for _, end in encoded["offset_mapping"][: len(ids)]]
            special = set(self.tokenizer.all_special_ids)
            n_cont = len(ids)
            for k in range(len(ids) - 1, -1, -1):
                if ids[k] in special or ends[k] <= len(prompt):
                    n_cont = len(ids) - 1 - k
                    break
        else:  # no offsets: the tokens past the prompt's own tokens, where the two agree on a prefix
            (alone,) = prompt_ids(self.tokenizer, [prompt])
            shared = 0
            while shared < min(len(alone), len(ids)) and alone[shared] == ids[shared]:
                shared += 1
            n_cont = len(ids) - shared
        if not continuation:
            n_cont = 0
        if n_cont == len(ids):  # an empty prompt and no BOS: the first token needs something before it
            start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else eos
            ids = [start, *ids]
        n_cont = min(n_cont, self.max_length - 1)
        return keep_last(ids, self.max_length, bos_token_id=self.tokenizer.bos_token_id), n_cont

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ContinuationScore]:
        """Sum of log p(continuation tokens | prompt), prompt and continuation tokenized jointly."""
        if len(prompts) != len(continuations):
            raise ValueError("score needs one continuation per prompt")
        joint = [self._joint_ids(p, c) for p, c in zip(prompts, continuations, strict=True)]
        scores: list[ContinuationScore | None] = [None] * len(joint)
        with self._adapter_context():
            for batch in self._batches([len(ids) for ids, _ in joint]):
                rows = [joint[i][0] for i in batch]
                n_cont = [joint[i][1] for i in batch]
                longest = max(n_cont)
                if longest == 0:
                    for i in batch:
                        scores[i] = ContinuationScore(logprob=0.0, n_tokens=0)
                    continue
                # Left padding right-aligns the continuations: the logits that predict them are the
                # `longest` positions just before the last one.
                logprobs = self._forward_logprobs(rows, keep=longest + 1)[:, :-1]
                for j, i in enumerate(batch):
                    n = n_cont[j]
                    if n == 0:
                        scores[i] = ContinuationScore(logprob=0.0, n_tokens=0)
                        continue
                    target = torch.tensor(rows[j][-n:], device=logprobs.device)
                    picked = logprobs[j, longest - n :].gather(-1, target[:, None]).squeeze(-1)
                    scores[i] = ContinuationScore(logprob=picked.sum().item(), n_tokens=n)
        return scores  # type: ignore[return-value]

    @torch.inference_mode()
    def next_token_logprobs(self, prompts: Sequence[str], tokens: Sequence[str]) -> list[dict[str, float]]:
        """Log-prob of each candidate after each prompt; a candidate of several tokens gets their sum."""
        ids = {t: self._candidate_ids(t) for t in tokens}
        single = {t: i[0] for t, i in ids.items() if len(i) == 1}
        several = [t for t in tokens if t not in single]
        results: list[dict[str, float]] = [{} for _ in prompts]
        if single:
            encoded = [self._context_ids(p, self.max_length) for p in prompts]
            with self._adapter_context():
                for batch in self._batches([len(e) for e in encoded]):
                    last = self._forward_logprobs([encoded[i] for i in batch], keep=1)[:, -1]
                    for j, i in enumerate(batch):
                        results[i].update({t: last[j, k].item() for t, k in single.items()})
        for t in several:
            # Rare: the tokenizer splits the candidate; chain rule over its tokens (scored as a continuation).
            for i, s in enumerate(self.score(prompts, [t] * len(prompts))):
                results[i][t] = s.logprob if s.n_tokens else float("-inf")
        return results
