"""A pretraining corpus of small Python functions and of fixes to them, generated from templates.

The ILF paper starts from a code model (CodeGen-Mono) that has read a great deal of code, including
programs next to their descriptions and edits of programs next to the review that asked for them.
The tiny model is randomly initialised, so `bench.ilf_code` first pretrains it on this stand-in:

- *programs*: a description, one test line and the function, in the docstring form the policy is
  prompted with (`generation_prompt`);
- *edits*: a wrong version of a function, a one-line review of what is wrong, and the fixed
  version, in a "before / review / after" form unlike π_Refine's OLD CODE / FEEDBACK / REFINEMENT
  prompt (which π_Refine learns from the human refinements alone).

Every function comes from a template family (arithmetic, list maps and filters, loops with an
accumulator, string methods, indexing) with generated names and constants; its test is computed by
running the correct function. No function shares a name with a task of the ILF fixture
(`check_disjoint` enforces it), so the corpus holds none of the fixture's solutions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Function:
    name: str
    text: str  # the description in words
    args: str  # the parameter list
    body: str  # the correct body, indented
    wrong: str  # a wrong body, indented
    review: str  # what is wrong with `wrong`, as a rater would say it
    example: tuple  # arguments for the test line

    def program(self, body: str | None = None) -> str:
        return f"def {self.name}({self.args}):\n{body or self.body}"

    def test_line(self) -> str:
        namespace: dict = {}
        exec(self.program(), namespace)  # our own template code
        result = namespace[self.name](*self.example)
        return f"assert {self.name}({', '.join(map(repr, self.example))}) == {result!r}"


_VERBS = ["get", "make", "compute", "find", "calc", "build", "take", "give", "apply", "keep"]
_NOUNS = ["value", "result", "total", "amount", "score", "number", "item", "entry", "count", "size"]
_OPS = {
    "+": "the sum",
    "-": "the difference",
    "*": "the product",
    "//": "the floor quotient",
    "%": "the remainder",
}
_MAPS = {
    "x + 1": "one more than each number",
    "x - 1": "one less than each number",
    "x * 3": "three times each number",
    "x * x": "the square of each number",
    "-x": "the negation of each number",
    "abs(x)": "the absolute value of each number",
    "x // 2": "half of each number, rounded down",
    "x % 3": "each number modulo 3",
}
_CONDS = {
    "x > {k}": "greater than {k}",
    "x < {k}": "less than {k}",
    "x >= {k}": "at least {k}",
    "x <= {k}": "at most {k}",
    "x != {k}": "different from {k}",
    "x % 2 == 0": "even",
    "x % 2 == 1": "odd",
}
_STRINGS = {
    "s.upper()": "the string in uppercase",
    "s.lower()": "the string in lowercase",
    "s.strip()": "the string without surrounding spaces",
    "s[::-1]": "the string reversed",
    "s[1:]": "the string without its first character",
    "s[:-1]": "the string without its last character",
    "s + s": "the string repeated twice",
    "len(s)": "the length of the string",
    "s.count('a')": "how often 'a' occurs in the string",
}
_INDEX = {
    "xs[0]": "the first element",
    "xs[-1]": "the last element",
    "xs[1]": "the second element",
    "len(xs)": "the number of elements",
    "xs[::-1]": "the list reversed",
    "sorted(xs)": "the list sorted",
    "max(xs)": "the largest element",
    "min(xs)": "the smallest element",
    "sum(xs)": "the sum of the elements",
}


def _name(rng: random.Random, hint: str) -> str:
    """A name the model cannot guess, only copy: a verb or noun and a made-up word."""
    made_up = "".join(rng.choice("abcdefghiklmnoprstuvwyz") for _ in range(rng.randint(2, 5)))
    return f"{rng.choice(_VERBS + _NOUNS)}_{made_up}" if rng.random() < 0.8 else f"{hint}_{made_up}"


def _other(rng: random.Random, options: Iterable[str], right: str) -> str:
    return rng.choice([o for o in options if o != right])


def _ints(rng: random.Random, n: int) -> list[int]:
    return [rng.randint(-5, 9) for _ in range(n)]


def _arithmetic(rng: random.Random) -> Function:
    op = rng.choice(list(_OPS))
    wrong = _other(rng, _OPS, op)
    a, b = rng.choice(["a", "x", "m"]), rng.choice(["b", "y", "n"])
    return Function(
        _name(rng, "op"),
        f"Write a function to return {_OPS[op]} of two numbers.",
        f"{a}, {b}",
        f"    return {a} {op} {b}\n",
        f"    return {a} {wrong} {b}\n",
        rng.choice([f"use {a} {op} {b}.", f"It computes {a} {wrong} {b}; it should be {a} {op} {b}."]),
        (rng.randint(1, 9), rng.randint(1, 9)),
    )


def _list_map(rng: random.Random) -> Function:
    expr = rng.choice(list(_MAPS))
    wrong = _other(rng, _MAPS, expr)
    return Function(
        _name(rng, "map"),
        f"Write a function to return a list of {_MAPS[expr]} of a list.",
        "xs",
        f"    return [{expr} for x in xs]\n",
        f"    return [{wrong} for x in xs]\n",
        rng.choice([f"use {expr} for each element.", f"It computes {wrong}; it should compute {expr}."]),
        (_ints(rng, 3),),
    )


def _list_filter(rng: random.Random) -> Function:
    k = rng.randint(0, 5)
    cond = rng.choice(list(_CONDS))
    wrong = _other(rng, _CONDS, cond)
    right_code, wrong_code = cond.format(k=k), wrong.format(k=k)
    return Function(
        _name(rng, "filter"),
        f"Write a function to keep the numbers of a list that are {_CONDS[cond].format(k=k)}.",
        "xs",
        f"    return [x for x in xs if {right_code}]\n",
        f"    return [x for x in xs if {wrong_code}]\n",
        rng.choice([f"use {right_code}.", f"The condition {wrong_code} is wrong; keep x when {right_code}."]),
        (_ints(rng, 5),),
    )


def _accumulate(rng: random.Random) -> Function:
    op, start, what = rng.choice([("+", 0, "sum"), ("*", 1, "product")])
    skip = rng.random() < 0.5
    wrong_start = 1 - start
    wrong_loop = "xs[1:]" if skip else "xs"
    wrong_init = start if skip else wrong_start
    review = (
        "The first element is skipped; loop over xs."
        if skip
        else f"The {what} must start at {start}, not {wrong_start}."
    )
    var = rng.choice(["total", "acc", "result"])
    return Function(
        _name(rng, what),
        f"Write a function to compute the {what} of a list of numbers with a loop.",
        "xs",
        f"    {var} = {start}\n    for x in xs:\n        {var} = {var} {op} x\n    return {var}\n",
        f"    {var} = {wrong_init}\n    for x in {wrong_loop}:\n        {var} = {var} {op} x\n    return {var}\n",
        review,
        (_ints(rng, 3),),
    )


def _string(rng: random.Random) -> Function:
    expr = rng.choice(list(_STRINGS))
    wrong = _other(rng, _STRINGS, expr)
    word = rng.choice(["apple", " banana ", "Cat", "data", "level", "Moon"])
    return Function(
        _name(rng, "text"),
        f"Write a function to return {_STRINGS[expr]}.",
        "s",
        f"    return {expr}\n",
        f"    return {wrong}\n",
        rng.choice([f"use {expr}.", f"{wrong} gives the wrong result; return {expr}."]),
        (word,),
    )


def _index(rng: random.Random) -> Function:
    expr = rng.choice(list(_INDEX))
    wrong = _other(rng, _INDEX, expr)
    return Function(
        _name(rng, "list"),
        f"Write a function to return {_INDEX[expr]} of a list.",
        "xs",
        f"    return {expr}\n",
        f"    return {wrong}\n",
        rng.choice([f"use {expr}.", f"This returns {wrong}; it should return {expr}."]),
        (_ints(rng, 4),),
    )


FAMILIES = (_arithmetic, _list_map, _list_filter, _accumulate, _string, _index)


def program_document(f: Function) -> str:
    """A description and test in the policy's docstring form, then the function."""
    return f'"""\n{f.text}\n{f.test_line()}\n"""\n{f.program()}'


def edit_document(f: Function) -> str:
    """A wrong version, a review of it, the fixed version."""
    return f"# before\n{f.program(f.wrong)}# review: {f.review}\n# after\n{f.program()}"


def code_corpus(n: int, *, seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """`n` documents, one program to two edits, none defining a function named in `exclude`."""
    rng = random.Random(seed)
    excluded = set(exclude)
    documents: list[str] = []
    while len(documents) < n:
        f = rng.choice(FAMILIES)(rng)
        if f.name in excluded or f.program() == f.program(f.wrong):
            continue
        documents.append(program_document(f) if len(documents) % 3 == 0 else edit_document(f))
    return documents


def check_disjoint(corpus: Iterable[str], names: Iterable[str]) -> None:
    """Refuse a corpus that defines a function of the fixture (its solution would leak)."""
    leaked = sorted(name for name in set(names) if any(f"def {name}(" in doc for doc in corpus))
    if leaked:
        raise ValueError(f"the pretraining corpus defines fixture functions: {leaked}")
