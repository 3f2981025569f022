"""A project's questions config, and answers checked against it."""

import pytest

from annotation.questions import AnswerError, QuestionsConfigError, clean_answers, validate_questions_config
from tests.factories import QUESTIONS


def clean(answers, *, task_kind="single", output_ids=(11,)):
    return {
        q["name"]: v
        for q, v in clean_answers(
            validate_questions_config(QUESTIONS),
            task_kind=task_kind,
            output_ids=list(output_ids),
            answers=answers,
        )
    }


@pytest.mark.parametrize(
    ("questions", "message"),
    [
        ([], "non-empty"),
        ([{"name": "Bad Name", "kind": "likert"}], "lowercase"),
        ([{"name": "q", "kind": "stars"}], "kind must be one of"),
        ([{"name": "q", "kind": "likert"}, {"name": "q", "kind": "feedback"}], "used twice"),
        ([{"name": "q", "kind": "likert", "scale": [1, 20]}], "2 to 11 points"),
        ([{"name": "q", "kind": "fix", "on": ["pairwise"]}], "can be asked on single"),
        ([{"name": "q", "kind": "rubric"}], "flags"),
    ],
)
def test_bad_questions_config_is_refused_with_a_reason(questions, message):
    with pytest.raises(QuestionsConfigError, match=message):
        validate_questions_config(questions)


def test_defaults_are_filled_in():
    (likert,) = validate_questions_config([{"name": "overall", "kind": "likert"}])
    assert likert["scale"] == [1, 7] and likert["criteria"] == ["overall"] and likert["required"] is True


def test_likert_scores_must_be_on_the_scale_for_every_criterion():
    assert clean({"quality": {"helpful": 1, "accurate": 7}, "feedback": "Fine."})["quality"] == {
        "helpful": 1,
        "accurate": 7,
    }
    with pytest.raises(AnswerError) as error:
        clean({"quality": {"helpful": 8, "accurate": 7}, "feedback": "Fine."})
    assert error.value.field == "answers.quality.helpful"
    with pytest.raises(AnswerError, match="required"):
        clean({"quality": {"helpful": 3}, "feedback": "Fine."})
    with pytest.raises(AnswerError, match="whole number"):
        clean({"quality": {"helpful": 3.5, "accurate": 2}, "feedback": "Fine."})
    with pytest.raises(AnswerError, match="whole number"):
        clean({"quality": {"helpful": True, "accurate": 2}, "feedback": "Fine."})


def test_feedback_needs_its_minimum_length():
    with pytest.raises(AnswerError, match="at least 3"):
        clean({"quality": {"helpful": 1, "accurate": 1}, "feedback": "ok"})


def test_unknown_questions_are_refused():
    with pytest.raises(AnswerError) as error:
        clean({"quality": {"helpful": 1, "accurate": 1}, "feedback": "Fine.", "mood": 3})
    assert error.value.field == "answers.mood"


def test_rubric_flag_that_needs_text_requires_it():
    base = {"quality": {"helpful": 1, "accurate": 1}, "feedback": "Fine."}
    with pytest.raises(AnswerError) as error:
        clean({**base, "assumptions": {"flags": ["questionable_assumption"]}})
    assert error.value.field == "answers.assumptions.notes.questionable_assumption"
    cleaned = clean({**base, "assumptions": {"flags": ["off_topic"]}})
    assert cleaned["assumptions"] == {"flags": ["off_topic"], "notes": {}}
    with pytest.raises(AnswerError, match="among"):
        clean({**base, "assumptions": {"flags": ["nonsense"]}})


def test_pairwise_preference_names_one_of_the_tasks_outputs():
    ok = clean(
        {"preference": {"preferred": 5, "strength": "much_better"}}, task_kind="pairwise", output_ids=(5, 6)
    )
    assert ok == {"preference": {"preferred": 5, "strength": "much_better"}}
    with pytest.raises(AnswerError, match="one of this task's outputs"):
        clean({"preference": {"preferred": 7, "strength": "better"}}, task_kind="pairwise", output_ids=(5, 6))
    with pytest.raises(AnswerError, match="strength"):
        clean(
            {"preference": {"preferred": 5, "strength": "way_better"}},
            task_kind="pairwise",
            output_ids=(5, 6),
        )


def test_ties_only_where_the_project_allows_them():
    tie = {"preference": {"preferred": None, "strength": "about_the_same"}}
    assert clean(tie, task_kind="pairwise", output_ids=(5, 6))["preference"]["preferred"] is None
    strict = [{"name": "preference", "kind": "pairwise", "allow_ties": False}]
    with pytest.raises(AnswerError, match="does not allow ties"):
        clean_answers(validate_questions_config(strict), task_kind="pairwise", output_ids=[5, 6], answers=tie)


def test_ranking_must_cover_every_output_exactly_once():
    assert clean({"order": [3, 1, 2]}, task_kind="ranking", output_ids=(1, 2, 3)) == {
        "order": {"ranking": [[3], [1], [2]]}
    }
    with pytest.raises(AnswerError, match="exactly once"):
        clean({"order": [3, 1, 1]}, task_kind="ranking", output_ids=(1, 2, 3))
    with pytest.raises(AnswerError, match="does not allow ties"):
        clean({"order": [[3, 1], 2]}, task_kind="ranking", output_ids=(1, 2, 3))
    tied = [{"name": "order", "kind": "ranking", "allow_ties": True}]
    cleaned = clean_answers(
        validate_questions_config(tied),
        task_kind="ranking",
        output_ids=[1, 2, 3],
        answers={"order": [[3, 1], 2]},
    )
    assert cleaned[0][1] == {"ranking": [[3, 1], [2]]}


def test_questions_are_asked_on_their_task_kinds_only():
    with pytest.raises(AnswerError, match="not a question asked"):
        clean(
            {
                "preference": {"preferred": 11, "strength": "better"},
                "quality": {"helpful": 1, "accurate": 1},
                "feedback": "Fine.",
            }
        )


@pytest.mark.django_db
def test_a_project_stores_its_questions_with_their_defaults_and_reads_them_as_stored():
    from annotation.models import Project
    from annotation.questions import questions_for

    project = Project.objects.create(name="Stored", questions=[{"name": "overall", "kind": "likert"}])
    project.refresh_from_db()
    (stored,) = project.questions
    assert stored["on"] == ["single"] and stored["required"] is True and stored["scale"] == [1, 7]
    # Read as stored, not validated again: a question's copy can be changed without touching the project.
    (asked,) = questions_for(project.questions, "single")
    asked["max_length"] = 10
    assert "max_length" not in project.questions[0]
    assert questions_for(project.questions, "pairwise") == []
