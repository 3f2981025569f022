"""The (QA)² project template: answers to questions with questionable assumptions.

After Kim et al., "(QA)²: Question Answering with Questionable Assumptions" (ACL 2023). Some
questions rest on an assumption that is false or cannot be verified ("When did Marie Curie
discover uranium?"). A good answer to such a question says so instead of answering as asked; an
answer to a question without one must simply be correct. For each (question, answer) pair the
rater:

1. marks whether the question holds a false or unverifiable assumption, and writes it down
   (`assumption`: a rubric flag with a required note);
2. judges whether the answer is acceptable (`acceptable`: 0 = no, 1 = yes; a two-point likert,
   so the dashboard's agreement table and score plots cover it like any other score);
3. when it is not, writes why and what it should have said (`explanation`: written feedback, so
   the loop refines the answer from it like any other feedback).

Only existing question kinds are used: the rating page, validation, the Answer rows and the loop
need nothing new. Prompts are the questions and a task's single output is the answer.
"""

from __future__ import annotations

from typing import Any

from annotation.questions import QuestionsConfigError, validate_questions_config

NAME = "qa2"
LABEL = "(QA)²: answers to questions with questionable assumptions"
ASSUMPTION_QUESTION = "assumption"
ASSUMPTION_FLAG = "questionable_assumption"
ACCEPTABLE_QUESTION = "acceptable"
EXPLANATION_QUESTION = "explanation"

QUESTIONS: list[dict[str, Any]] = [
    {
        "name": ASSUMPTION_QUESTION,
        "kind": "rubric",
        "label": "Does the question hold a false or unverifiable assumption?",
        "flags": [
            {
                "name": ASSUMPTION_FLAG,
                "label": "Yes: the question assumes something false or unverifiable (write it)",
                "needs_text": True,
            }
        ],
    },
    {
        "name": ACCEPTABLE_QUESTION,
        "kind": "likert",
        "label": "Is the answer acceptable?",
        "scale": [0, 1],
        "criteria": [ACCEPTABLE_QUESTION],
        "hint": "0 = not acceptable, 1 = acceptable",
    },
    {
        "name": EXPLANATION_QUESTION,
        "kind": "feedback",
        "label": "If it is not acceptable: why, and what should the answer say?",
        "required": False,
        "min_length": 10,
    },
]

GUIDELINES = """\
**Questions with questionable assumptions.** Each task shows a question and an answer.

1. **Assumption.** Does the question take for granted something that is *false* (“When did
   Marie Curie discover uranium?”: she did not) or that *cannot be verified* (“Why did the
   author's sister quit?”: nothing says she did)? If so, tick the box and write the assumption
   in a few words. Leave it unticked when every assumption of the question holds.
2. **Acceptable?** When the question holds a questionable assumption, the answer is acceptable
   only if it *challenges* it (says it is false or unverifiable, and ideally what is true).
   Answering as if the assumption held is not acceptable, however fluent. When the question
   holds no such assumption, the answer is acceptable only if it is *correct*, and not if it
   wrongly rejects the question.
3. **Explanation.** When the answer is not acceptable, write why and what it should have said:
   this is what the model learns from. Be specific.
"""


def template_fields() -> dict[str, Any]:
    """The project fields the template sets (the questions with their defaults filled in)."""
    return {"questions": validate_questions_config(QUESTIONS), "guidelines": GUIDELINES}


def is_qa2_project(questions: Any) -> bool:
    """Whether a project's questions include the template's three, as the template asks them.

    Checked by shape, not by name alone: another project may well ask a question named
    "assumption" that means something else.
    """
    try:
        by_name = {question["name"]: question for question in validate_questions_config(questions)}
    except QuestionsConfigError:
        return False
    assumption = by_name.get(ASSUMPTION_QUESTION)
    acceptable = by_name.get(ACCEPTABLE_QUESTION)
    explanation = by_name.get(EXPLANATION_QUESTION)
    return (
        assumption is not None
        and assumption["kind"] == "rubric"
        and "single" in assumption["on"]
        and any(flag["name"] == ASSUMPTION_FLAG for flag in assumption["flags"])
        and acceptable is not None
        and acceptable["kind"] == "likert"
        and "single" in acceptable["on"]
        and acceptable["scale"] == [0, 1]
        and ACCEPTABLE_QUESTION in acceptable["criteria"]
        and explanation is not None
        and explanation["kind"] == "feedback"
    )
