"""The questions a project asks, and the validation of raters' answers against them.

A project's `questions` is a list of question specs, for example::

    [
      {"name": "quality", "kind": "likert", "scale": [1, 7], "criteria": ["helpful", "accurate"]},
      {"name": "acceptable", "kind": "likert", "scale": [0, 1], "hint": "0 = no, 1 = yes"},
      {"name": "feedback", "kind": "feedback", "min_length": 10},
      {"name": "fix", "kind": "fix", "required": false},
      {"name": "assumptions", "kind": "rubric", "flags": [
          {"name": "questionable_assumption", "label": "The question holds a questionable assumption",
           "needs_text": true}]},
      {"name": "preference", "kind": "pairwise", "allow_ties": true},
      {"name": "order", "kind": "ranking", "allow_ties": false},
    ]

Single-output tasks are asked the likert, feedback, fix and rubric questions; pairwise tasks the
pairwise ones; ranking tasks the ranking ones. A question may say otherwise with `"on": [...]`
(feedback and rubric questions can also be asked on comparisons).
"""

from __future__ import annotations

import re
from typing import Any

from annotation.errors import ApplicationError

KINDS = ("likert", "pairwise", "ranking", "feedback", "fix", "rubric")
TASK_KINDS = ("single", "pairwise", "ranking")
DEFAULT_ON = {
    "likert": ["single"],
    "feedback": ["single"],
    "fix": ["single"],
    "rubric": ["single"],
    "pairwise": ["pairwise"],
    "ranking": ["ranking"],
}
ALLOWED_ON = {
    "likert": {"single"},
    "feedback": {"single", "pairwise", "ranking"},
    "fix": {"single"},
    "rubric": {"single", "pairwise", "ranking"},
    "pairwise": {"pairwise"},
    "ranking": {"ranking"},
}
DEFAULT_REQUIRED = {
    "likert": True,
    "pairwise": True,
    "ranking": True,
    "feedback": True,
    "fix": False,
    "rubric": False,
}
STRENGTHS = ("much_better", "better", "slightly_better", "about_the_same")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_TEXT = 20_000
# A fix rewrites a whole output, so its limit follows the output's size (see fix_limit), up to
# the project's `max_fix_chars`; this is that setting's default.
DEFAULT_MAX_FIX_CHARS = 1_000_000


class QuestionsConfigError(ValueError):
    """The project's questions config is not valid."""


class AnswerError(ApplicationError, ValueError):
    """A rater's answer is not valid: `field` names the question (and part) that is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    @property
    def extra(self) -> dict:
        return {"field": self.field}


def validate_questions_config(questions: Any) -> list[dict]:
    """Return the questions with defaults filled in, or raise QuestionsConfigError."""
    if not isinstance(questions, list) or not questions:
        raise QuestionsConfigError("questions must be a non-empty list of question objects")
    seen: set[str] = set()
    normalised = []
    for index, raw in enumerate(questions):
        where = f"questions[{index}]"
        if not isinstance(raw, dict):
            raise QuestionsConfigError(f"{where} must be an object")
        question = dict(raw)
        name = question.get("name")
        kind = question.get("kind")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise QuestionsConfigError(f"{where}.name must be lowercase letters, digits and _ (got {name!r})")
        if name in seen:
            raise QuestionsConfigError(f"{where}.name {name!r} is used twice")
        seen.add(name)
        if kind not in KINDS:
            raise QuestionsConfigError(f"{where}.kind must be one of {', '.join(KINDS)} (got {kind!r})")
        on = question.setdefault("on", list(DEFAULT_ON[kind]))
        if not isinstance(on, list) or not on or not set(on) <= ALLOWED_ON[kind]:
            raise QuestionsConfigError(
                f"{where}.on: a {kind} question can be asked on {', '.join(sorted(ALLOWED_ON[kind]))}"
            )
        required = question.setdefault("required", DEFAULT_REQUIRED[kind])
        if not isinstance(required, bool):
            raise QuestionsConfigError(f"{where}.required must be true or false")
        question.setdefault("label", name.replace("_", " ").capitalize())
        if kind == "likert":
            scale = question.setdefault("scale", [1, 7])
            if (
                not isinstance(scale, list)
                or len(scale) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in scale)
                or not 2 <= scale[1] - scale[0] + 1 <= 11
            ):
                raise QuestionsConfigError(f"{where}.scale must be [low, high] integers, 2 to 11 points")
            criteria = question.setdefault("criteria", [name])
            if (
                not isinstance(criteria, list)
                or not criteria
                or not all(isinstance(c, str) and NAME_RE.match(c) for c in criteria)
                or len(set(criteria)) != len(criteria)
            ):
                raise QuestionsConfigError(f"{where}.criteria must be distinct lowercase names")
            if not isinstance(question.get("hint", ""), str):
                raise QuestionsConfigError(f"{where}.hint must be text (what the scale's ends mean)")
        elif kind in ("pairwise", "ranking"):
            if not isinstance(question.setdefault("allow_ties", kind == "pairwise"), bool):
                raise QuestionsConfigError(f"{where}.allow_ties must be true or false")
        elif kind == "feedback":
            min_length = question.setdefault("min_length", 1)
            if not isinstance(min_length, int) or min_length < 0:
                raise QuestionsConfigError(f"{where}.min_length must be a non-negative integer")
        elif kind == "rubric":
            flags = question.get("flags")
            if not isinstance(flags, list) or not flags:
                raise QuestionsConfigError(f"{where}.flags must be a non-empty list")
            flag_names = set()
            for flag_index, flag in enumerate(flags):
                if not isinstance(flag, dict) or not NAME_RE.match(str(flag.get("name", ""))):
                    raise QuestionsConfigError(f"{where}.flags[{flag_index}] needs a lowercase name")
                if flag["name"] in flag_names:
                    raise QuestionsConfigError(f"{where}.flags[{flag_index}].name is used twice")
                flag_names.add(flag["name"])
                flag.setdefault("label", flag["name"].replace("_", " ").capitalize())
                flag.setdefault("needs_text", False)
        normalised.append(question)
    return normalised


def normalised_questions(questions: Any) -> Any:
    """The config with its defaults filled in (Project.save stores it so); an invalid one as it is."""
    try:
        return validate_questions_config(questions)
    except QuestionsConfigError:
        return questions


def questions_for(questions: list[dict], task_kind: str) -> list[dict]:
    """The questions asked on tasks of this kind: copies, from a config as Project.save stores it.

    The config is not validated again here (that is done on save); one that is not valid asks nothing.
    """
    if not isinstance(questions, list):
        return []
    return [dict(q) for q in questions if isinstance(q, dict) and task_kind in q.get("on", ())]


def fix_limit(output_chars: int, *, cap: int = DEFAULT_MAX_FIX_CHARS) -> int:
    """The longest fix accepted for an output of `output_chars` characters.

    Twice the output (a fix may add as much again), never less than other answers' MAX_TEXT, and
    never more than the project's cap: a 200,000-character output must stay editable as a whole.
    """
    return min(max(MAX_TEXT, 2 * output_chars), cap)


def _text(
    value: Any, field: str, *, min_length: int = 0, max_length: int = MAX_TEXT, noun: str = "answer"
) -> str:
    if not isinstance(value, str):
        raise AnswerError(field, "must be text")
    value = value.replace("\r\n", "\n")
    if "\x00" in value:
        raise AnswerError(field, "contains a NUL character, which cannot be stored")
    if len(value.strip()) < max(min_length, 1):
        if min_length > 1:
            raise AnswerError(field, f"must be at least {min_length} characters")
        raise AnswerError(field, "must not be empty")
    if len(value) > max_length:
        # Raters read this under the field: say it in their words, with both numbers.
        raise AnswerError(
            field,
            f"Your {noun} is too long: {len(value):,} characters; the limit for this task is {max_length:,}.",
        )
    return value


def _clean_likert(question: dict, value: Any, field: str) -> dict:
    low, high = question["scale"]
    criteria = question["criteria"]
    if len(criteria) == 1 and not isinstance(value, dict):
        value = {criteria[0]: value}
    if not isinstance(value, dict):
        raise AnswerError(field, f"must give a score for each of: {', '.join(criteria)}")
    unknown = set(value) - set(criteria)
    if unknown:
        raise AnswerError(field, f"unknown criterion {sorted(unknown)[0]!r}")
    cleaned = {}
    for criterion in criteria:
        score = value.get(criterion)
        if score is None:
            raise AnswerError(f"{field}.{criterion}", "a score is required")
        if isinstance(score, bool) or not isinstance(score, int):
            raise AnswerError(f"{field}.{criterion}", f"must be a whole number from {low} to {high}")
        if not low <= score <= high:
            raise AnswerError(f"{field}.{criterion}", f"must be from {low} to {high} (got {score})")
        cleaned[criterion] = score
    return cleaned


def _clean_pairwise(question: dict, value: Any, field: str, output_ids: list[int]) -> dict:
    if not isinstance(value, dict):
        raise AnswerError(field, 'must be {"preferred": <output id or null for a tie>, "strength": ...}')
    strength = value.get("strength")
    if strength not in STRENGTHS:
        raise AnswerError(f"{field}.strength", f"must be one of {', '.join(STRENGTHS)}")
    preferred = value.get("preferred")
    if preferred is None or strength == "about_the_same":
        if not question["allow_ties"]:
            raise AnswerError(field, "this project does not allow ties: choose the better output")
        if preferred is not None or strength != "about_the_same":
            raise AnswerError(field, 'a tie has "preferred": null and "strength": "about_the_same"')
        return {"preferred": None, "strength": strength}
    if isinstance(preferred, bool) or preferred not in output_ids:
        raise AnswerError(f"{field}.preferred", f"must be one of this task's outputs {output_ids}")
    return {"preferred": preferred, "strength": strength}


def ranking_groups(value: Any) -> list[list]:
    """A ranking answer (`{"ranking": [...]}` or the bare list) as its rank groups, best first.

    An item of the list is an output id, or a list of ids ranked together (a tie).
    """
    ranking = value.get("ranking") if isinstance(value, dict) else value
    return [item if isinstance(item, list) else [item] for item in ranking or []]


def _clean_ranking(question: dict, value: Any, field: str, output_ids: list[int]) -> dict:
    ranking = value.get("ranking") if isinstance(value, dict) else value
    if not isinstance(ranking, list) or not ranking:
        raise AnswerError(field, "must list the output ids best first (a list inside the list is a tie)")
    groups = ranking_groups(ranking)
    if any(len(group) > 1 for group in groups) and not question["allow_ties"]:
        raise AnswerError(field, "this project does not allow ties in rankings")
    flat = [item for group in groups for item in group]
    if any(isinstance(item, bool) or not isinstance(item, int) for item in flat):
        raise AnswerError(field, "must contain output ids")
    if sorted(flat) != sorted(output_ids):
        raise AnswerError(field, f"must rank each of this task's outputs {sorted(output_ids)} exactly once")
    return {"ranking": groups}


def _clean_rubric(question: dict, value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise AnswerError(field, 'must be {"flags": [names], "notes": {name: text}}')
    flags = value.get("flags", [])
    notes = value.get("notes", {}) or {}
    by_name = {flag["name"]: flag for flag in question["flags"]}
    if not isinstance(flags, list) or any(flag not in by_name for flag in flags):
        raise AnswerError(f"{field}.flags", f"flags must be among {', '.join(by_name)}")
    if not isinstance(notes, dict) or any(name not in flags for name in notes):
        raise AnswerError(f"{field}.notes", "notes can only be given for raised flags")
    cleaned_notes = {}
    for name in flags:
        if by_name[name]["needs_text"]:
            cleaned_notes[name] = _text(notes.get(name, ""), f"{field}.notes.{name}", noun="note")
        elif notes.get(name):
            cleaned_notes[name] = _text(notes[name], f"{field}.notes.{name}", noun="note")
    return {"flags": sorted(set(flags), key=list(by_name).index), "notes": cleaned_notes}


def clean_answers(
    questions: list[dict],
    *,
    task_kind: str,
    output_ids: list[int],
    answers: Any,
    max_fix_chars: int = MAX_TEXT,
) -> list[tuple[dict, Any]]:
    """Validate a submission's answers. Returns (question, cleaned value) pairs or raises AnswerError.

    `questions` is a project's config as saved (validated, its defaults filled in: see questions_for).

    `max_fix_chars` is this task's fix_limit (it depends on the output's length).
    """
    if not isinstance(answers, dict):
        raise AnswerError("answers", "must be an object keyed by question name")
    asked = questions_for(questions, task_kind)
    names = {q["name"] for q in asked}
    unknown = sorted(set(answers) - names)
    if unknown:
        raise AnswerError(f"answers.{unknown[0]}", "is not a question asked on this task")
    cleaned = []
    for question in asked:
        name, kind = question["name"], question["kind"]
        field = f"answers.{name}"
        value = answers.get(name)
        if value in (None, "", [], {}):
            if question["required"]:
                raise AnswerError(field, "this question is required")
            continue
        if kind == "likert":
            value = _clean_likert(question, value, field)
        elif kind == "pairwise":
            value = _clean_pairwise(question, value, field, output_ids)
        elif kind == "ranking":
            value = _clean_ranking(question, value, field, output_ids)
        elif kind == "feedback":
            value = _text(value, field, min_length=question["min_length"], noun="feedback")
        elif kind == "fix":
            value = _text(value, field, max_length=max_fix_chars, noun="fix")
        elif kind == "rubric":
            value = _clean_rubric(question, value, field)
            if not value["flags"] and not question["required"]:
                continue
        cleaned.append((question, value))
    return cleaned
