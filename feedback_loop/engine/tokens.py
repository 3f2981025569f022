"""How prompts become token ids: one rule for generation, scoring and training alike.

A prompt gets the special tokens its tokenizer puts in front of a text (Llama's BOS; nothing for
GPT-2 or Qwen), so that a model sees at training time exactly the context it sees when it
generates. Completions get none: they continue the prompt. A tokenizer that also appends EOS to
every text (some Llama configurations) does not get to end a prompt with it.
"""

from __future__ import annotations

from collections.abc import Sequence


def prompt_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's leading special tokens; never empty."""
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    result = []
    for text, ids in zip(texts, encoded, strict=True):
        ids = list(ids)
        if eos is not None and ids and ids[-1] == eos and not text.endswith(tokenizer.eos_token or "\0"):
            ids.pop()
        # A causal LM needs at least one token to condition on.
        result.append(ids or [start])
    return result


def keep_last(ids: list[int], room: int, *, bos_token_id: int | None) -> list[int]:
    """The last `room` tokens of a prompt that is too long, keeping its leading BOS if it has one."""
    if len(ids) <= room:
        return ids
    if bos_token_id is not None and ids and ids[0] == bos_token_id and room > 1:
        return [ids[0], *ids[len(ids) - room + 1 :]]
    return ids[len(ids) - room :]
