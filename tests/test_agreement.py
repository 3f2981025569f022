"""Agreement statistics: published worked examples through our code path, and judgments → matrix layout.

- Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4 coders × 12 units example:
  nominal α = 0.743, ordinal α = 0.815, interval α = 0.849 (the same matrix and values are in the
  krippendorff package's docstring).
- Fleiss (1971), as on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5 categories → κ = 0.210
  (statsmodels' own tests use the same table).
- Cohen's kappa worked by hand (below).
"""

import re

import numpy as np
import pytest
from django.test import Client

from annotation import agreement, plots, quality
from annotation.models import Membership, Project
from tests.curation_data import judge, krippendorff_judgments, likert_project, output_ids
from tests.factories import make_tasks

NAN = np.nan
# Krippendorff 2011, p. 8: rows are coders A–D, columns units 1–12, NaN where a coder gave no value.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]
# Fleiss 1971 / Wikipedia: per subject, how many of the 14 raters chose each of 5 categories.
FLEISS_1971 = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def fleiss_as_reliability_data() -> np.ndarray:
    """14 raters × 10 subjects: rater i gives subject j the i-th category of its sorted ratings."""
    columns = [np.repeat(np.arange(1, 6), counts) for counts in FLEISS_1971]
    return np.array(columns, dtype=float).T


def dashboard_stats(client, project) -> dict[str, dict[str, str]]:
    """{variable label: {stat name: shown text}} from the dashboard's agreement table."""
    html = client.get(f"/projects/{project.pk}/dashboard/").content.decode()
    rows = re.findall(r'<tr data-variable="([^"]+)">(.*?)</tr>', html, re.S)
    return {
        label: {stat: text.strip() for stat, text in re.findall(r'data-stat="(\w+)">([^<]*)', body)}
        for label, body in rows
    }


def curator_client(project, user) -> Client:
    Membership.objects.get_or_create(user=user, project=project, defaults={"role": Membership.Role.CURATOR})
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def coders(django_user_model):
    return [django_user_model.objects.create_user(f"coder{i}") for i in range(14)]


# ---------------------------------------------------------------- the statistics themselves


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_reproduces_krippendorff_2011(level, expected):
    assert agreement.krippendorff_alpha(KRIPPENDORFF_2011, level) == pytest.approx(expected, abs=5e-4)
    # The full scale as value domain changes nothing (unused values have no weight).
    assert agreement.krippendorff_alpha(
        KRIPPENDORFF_2011, level, value_domain=[1, 2, 3, 4, 5]
    ) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_is_undefined_without_pairable_values_or_variation():
    assert agreement.krippendorff_alpha([[1, NAN], [NAN, 2]], "nominal") is None  # no unit judged twice
    assert agreement.krippendorff_alpha([[3, 3], [3, 3]], "interval", value_domain=[1, 2, 3]) is None
    assert agreement.krippendorff_alpha(np.zeros((0, 0)), "nominal") is None


def test_fleiss_kappa_reproduces_fleiss_1971():
    matrix = fleiss_as_reliability_data()
    table, units = agreement.fleiss_table(matrix)
    assert units == 10
    np.testing.assert_array_equal(table, FLEISS_1971)
    kappa, units = agreement.fleiss_kappa(matrix)
    assert kappa == pytest.approx(0.210, abs=5e-4)
    assert units == 10


def test_fleiss_kappa_takes_the_units_judged_by_the_usual_number_of_raters():
    # Krippendorff's data: units 2–9 have all 4 coders; units 1, 10 have 3; unit 11 has 2; unit 12 one.
    _kappa, units = agreement.fleiss_kappa(KRIPPENDORFF_2011)
    assert units == 8


def test_cohen_kappa_of_a_two_by_two_table_worked_by_hand():
    # 50 items: both yes 20, first yes & second no 5, first no & second yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; kappa = (0.7 − 0.5)/(1 − 0.5) = 0.4.
    first = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    second = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert agreement.cohen_kappa(first, second) == pytest.approx(0.4)


def test_linearly_weighted_cohen_kappa_worked_by_hand():
    # A = 1 2 3 1 2 3, B = 1 2 3 2 3 2. Unweighted: p_o = 3/6, p_e = (2·1 + 2·3 + 2·2)/36 = 1/3,
    # kappa = (1/2 − 1/3)/(2/3) = 0.25. Linear weights |i − j|: observed disagreement 3/6 = 0.5;
    # expected = Σ p_i q_j |i − j| = 1/3 · (1/6·3 + 1/2·2 + 1/3·3) = 5/6; kappa = 1 − 0.5/(5/6) = 0.4.
    first, second = [1, 2, 3, 1, 2, 3], [1, 2, 3, 2, 3, 2]
    assert agreement.cohen_kappa(first, second) == pytest.approx(0.25)
    assert agreement.cohen_kappa(first, second, labels=[1, 2, 3], weights="linear") == pytest.approx(0.4)
    # Unused scale points change nothing: the weights only scale.
    assert agreement.cohen_kappa(first, second, labels=list(range(1, 8)), weights="linear") == pytest.approx(
        0.4
    )


def test_cohen_kappa_is_undefined_when_both_raters_never_vary():
    assert agreement.cohen_kappa([2, 2, 2], [2, 2, 2]) is None


# ---------------------------------------------------------------- judgments in the database → matrix


@pytest.fixture
def krippendorff_project(db, coders):
    """Krippendorff's example as judgments: coder i scored task j (scale 1–5) where the matrix has a value."""
    return krippendorff_judgments(coders, KRIPPENDORFF_2011)


def test_judgments_become_a_raters_by_tasks_matrix_in_id_order(krippendorff_project, coders):
    project, tasks = krippendorff_project
    [data] = quality.reliability_data(project)
    assert data.variable.label == "score · clarity"
    assert data.raters == [coder.pk for coder in coders[:4]]
    assert data.units == [task.pk for task in tasks]
    np.testing.assert_array_equal(data.matrix, np.array(KRIPPENDORFF_2011))


def test_project_agreement_of_krippendorffs_example(krippendorff_project):
    project, _ = krippendorff_project
    [row] = quality.project_agreement(project)
    assert row.alpha_ordinal == pytest.approx(0.815, abs=5e-4)
    assert row.alpha_interval == pytest.approx(0.849, abs=5e-4)
    assert row.raters == 4
    assert row.units == 11  # unit 12 was coded once
    assert row.fleiss_units == 8


def test_dashboard_shows_krippendorffs_alphas(krippendorff_project, alice):
    project, _ = krippendorff_project
    stats = dashboard_stats(curator_client(project, alice), project)
    assert stats["score · clarity"]["alpha_ordinal"] == "0.815"
    assert stats["score · clarity"]["alpha_interval"] == "0.849"
    assert stats["score · clarity"]["alpha_nominal"] == "—"  # likert scores are not nominal data


def test_rejected_and_excluded_judgments_are_left_out_of_project_agreement(krippendorff_project, coders):
    project, tasks = krippendorff_project
    # Coder D's disagreement on unit 6 (value 4) goes: alpha moves, as if the cell were empty.
    project.judgments.filter(rater=coders[3], task=tasks[5]).update(status="rejected")
    expected = np.array(KRIPPENDORFF_2011)
    expected[3, 5] = NAN
    [row] = quality.project_agreement(project)
    assert row.alpha_interval == pytest.approx(agreement.krippendorff_alpha(expected, "interval"))
    assert row.alpha_interval != pytest.approx(0.849, abs=5e-4)


def test_gold_tasks_are_left_out_of_agreement(krippendorff_project, coders):
    project, _ = krippendorff_project
    [gold] = make_tasks(project, 1, gold=True, prefix="gold")
    for coder, value in zip(coders[:4], [1, 5, 1, 5], strict=True):
        judge(gold, coder, {"score": {"clarity": value}})
    [row] = quality.project_agreement(project)
    assert row.alpha_interval == pytest.approx(0.849, abs=5e-4)


def test_dashboard_shows_fleiss_kappa_of_fleiss_1971(db, coders, alice):
    project = likert_project("Fleiss 1971", overlap=14)
    tasks = make_tasks(project, 10)
    matrix = fleiss_as_reliability_data()
    for i, coder in enumerate(coders):
        for j, task in enumerate(tasks):
            judge(task, coder, {"score": {"clarity": int(matrix[i, j])}})
    [row] = quality.project_agreement(project)
    assert row.fleiss == pytest.approx(0.210, abs=5e-4)
    assert row.fleiss_units == 10
    stats = dashboard_stats(curator_client(project, alice), project)
    assert stats["score · clarity"]["fleiss"] == "0.210"


def test_pairwise_preferences_are_laid_out_by_position_in_the_task_not_by_side(db, users):
    """Two raters, four comparisons. The sides were shuffled per rater; positions must not be.

    By position: first rater 0, 1, 0, tie; second rater 0, 1, 1, tie. Worked by hand:
    nominal alpha: o(0,0) = o(1,1) = o(tie,tie) = 2, o(0,1) = o(1,0) = 1; n = 8, n_0 = n_1 = 3, n_tie = 2;
    D_o = 2/8; D_e = (2·3·3 + 2·3·2 + 2·3·2)/(8·7) = 42/56; alpha = 1 − (1/4)/(3/4) = 2/3.
    Cohen: p_o = 3/4; p_e = (2·1 + 1·2 + 1·1)/16 = 5/16; kappa = (3/4 − 5/16)/(11/16) = 7/11.
    """
    project = Project.objects.create(
        name="Comparisons",
        overlap=2,
        questions=[{"name": "preference", "kind": "pairwise", "allow_ties": True}],
    )
    first, second = users["bob"], users["dave"]
    tasks = make_tasks(project, 4, kind="pairwise")
    ids = [output_ids(task) for task in tasks]  # [position 0, position 1] per task

    def prefer(task_index, rater, position, *, swapped):
        shown = list(reversed(ids[task_index])) if swapped else ids[task_index]
        preferred = None if position is None else ids[task_index][position]
        judge(
            tasks[task_index],
            rater,
            {"preference": {"preferred": preferred, "strength": "better" if preferred else "about_the_same"}},
            display_order=shown,
        )

    for index, (a, b) in enumerate([(0, 0), (1, 1), (0, 1), (None, None)]):
        prefer(index, first, a, swapped=index % 2 == 0)  # the first rater saw tasks 0 and 2 swapped
        prefer(index, second, b, swapped=index % 2 == 1)

    [data] = quality.reliability_data(project)
    tie = agreement.TIE
    np.testing.assert_array_equal(data.matrix, [[0, 1, 0, tie], [0, 1, 1, tie]])
    [row] = quality.project_agreement(project)
    assert row.alpha_nominal == pytest.approx(2 / 3)
    assert row.mean_cohen == pytest.approx(7 / 11)
    assert row.percent_agreement == pytest.approx(3 / 4)
    assert row.alpha_ordinal is None and row.alpha_interval is None


def test_pair_agreements_use_only_the_tasks_both_raters_judged(krippendorff_project, coders):
    project, _ = krippendorff_project
    [data] = quality.reliability_data(project)
    pairs = {(p.rater_a, p.rater_b): p for p in agreement.pair_agreements(data)}
    # Coders A and B share units 1–9 (A has nothing on 10–12) and agree on all but unit 6.
    a_b = pairs[(coders[0].pk, coders[1].pk)]
    assert (a_b.shared, a_b.matches) == (9, 8)
    first = [1, 2, 3, 3, 2, 1, 4, 1, 2]
    second = [1, 2, 3, 3, 2, 2, 4, 1, 2]
    assert a_b.kappa == pytest.approx(
        agreement.cohen_kappa(first, second, labels=[1, 2, 3, 4, 5], weights="linear")
    )
    assert len(pairs) == 6


def test_score_distribution_plot_is_an_inline_png(krippendorff_project):
    project, _ = krippendorff_project
    [(variable, counts)] = quality.score_distributions(project)
    # Every value of the matrix, counted; scale points nobody used are listed with 0.
    expected = {v: int(np.sum(np.array(KRIPPENDORFF_2011) == v)) for v in range(1, 6)}
    assert counts == expected
    [(plotted, plot)] = plots.distribution_plots([(variable, counts)])
    assert plotted == variable
    assert plot.startswith("data:image/png;base64,")
    assert plots.distribution_plots([(variable, dict.fromkeys(counts, 0))]) == []
