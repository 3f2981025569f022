"""Prompt templates: refinement (text and code) and the InstructRM ensemble.

Templates are plain `str.format` strings with named fields, so a researcher can print, compare and
swap them. The refinement prompts follow ILF: the model sees the input, its earlier output and the
feedback, and is asked for an improved output (for code, as in ILF for code: OLD CODE, FEEDBACK,
REFINEMENT). The InstructRM templates ask an instruction-following model a yes/no question whose
answer is read from the next-token distribution after "Answer:".
"""

from __future__ import annotations

from feedback_loop.engine.types import FeedbackItem

TEXT_REFINEMENT_TEMPLATE = (
    "Write an improved output that incorporates the feedback on the given output.\n\n"
    "Input: {prompt}\n\n"
    "Output: {output}\n\n"
    "Feedback: {feedback}\n\n"
    "Improved output:"
)

# ILF for code (Chen et al., 2023): the task's description sits above the old code as a docstring.
CODE_REFINEMENT_TEMPLATE = 'OLD CODE:\n"""\n{prompt}\n"""\n{output}\n\nFEEDBACK:\n{feedback}\n\nREFINEMENT:\n'

# InstructRM (Scheurer et al., 2023): each template shows the whole case, the input with its context,
# the original output, the feedback on it and the refinement, and asks whether the refinement
# incorporates the feedback. Some ask for Yes/No, some for True/False (the answer pair is read from
# the template by `instruct_rm_answers`); every one ends with "Answer:" so the next token is the
# answer. Averaging over several phrasings makes the score less sensitive to any one wording.
INSTRUCT_RM_TEMPLATES: tuple[str, ...] = (
    "Input: {prompt}\n"
    "Original output: {output}\n"
    "Feedback on the original output: {feedback}\n"
    "Refinement: {refinement}\n"
    "Question: Does the refinement incorporate the feedback? Answer Yes or No.\n"
    "Answer:",
    "Here is an input: {prompt}\n"
    "A model wrote this output: {output}\n"
    "Someone gave this feedback on it: {feedback}\n"
    "Here is a new output: {refinement}\n"
    "Question: Does the new output fix the problems that the feedback points out? Answer Yes or No.\n"
    "Answer:",
    "Input: {prompt}\n"
    "Output: {output}\n"
    "Feedback: {feedback}\n"
    "Revised output: {refinement}\n"
    "Statement: The revised output takes the feedback into account. Is the statement True or False?\n"
    "Answer:",
    "Task: {prompt}\n"
    "First attempt: {output}\n"
    "What was wrong with it: {feedback}\n"
    "Second attempt: {refinement}\n"
    "Question: Is the second attempt better than the first, in the way the feedback asks? "
    "Answer Yes or No.\n"
    "Answer:",
    "Input: {prompt}\n"
    "Original output: {output}\n"
    "Feedback: {feedback}\n"
    "Improved output: {refinement}\n"
    "Statement: The improved output does what the feedback asks and still answers the input. "
    "Is the statement True or False?\n"
    "Answer:",
)

YES_TOKEN = " Yes"
NO_TOKEN = " No"
TRUE_TOKEN = " True"
FALSE_TOKEN = " False"


def instruct_rm_answers(template: str, yes: str = YES_TOKEN, no: str = NO_TOKEN) -> tuple[str, str]:
    """The (positive, negative) answer tokens a template asks for: True/False or Yes/No."""
    if "True or False" in template:
        return TRUE_TOKEN, FALSE_TOKEN
    return yes, no


def refinement_prompt(item: FeedbackItem) -> str:
    """The prompt that asks a refiner for an improved output, by the item's kind."""
    if item.kind == "code":
        return CODE_REFINEMENT_TEMPLATE.format(
            prompt=item.prompt.strip(), output=item.output.rstrip(), feedback=item.feedback.strip()
        )
    if item.kind == "text":
        return TEXT_REFINEMENT_TEMPLATE.format(
            prompt=item.prompt.strip(), output=item.output.strip(), feedback=item.feedback.strip()
        )
    raise ValueError(f"unknown feedback kind {item.kind!r}; expected 'text' or 'code'")


def instruct_rm_prompts(
    item: FeedbackItem, refinement: str, templates: tuple[str, ...] = INSTRUCT_RM_TEMPLATES
) -> list[str]:
    """One yes/no question per template about whether `refinement` incorporates the feedback."""
    fields = dict(
        prompt=item.prompt.strip(),
        output=item.output.strip(),
        feedback=item.feedback.strip(),
        refinement=refinement.strip(),
    )
    return [template.format(**fields) for template in templates]
