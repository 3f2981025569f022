"""The vectorised agreement figures (annotation.agreement) against the libraries' own, one call per
rater pair or unit as they are made to be used, on random data and on the edge cases: a single
category, raters who share no unit or a single one, ties, values outside the variable's domain."""

from itertools import combinations

import numpy as np
import pytest
from statsmodels.stats.inter_rater import aggregate_raters

from annotation import agreement
from annotation.agreement import TIE, ReliabilityData, Variable

LIKERT = Variable("score", "likert", "clarity", (1, 5))
PAIRWISE = Variable("preference", "pairwise")
FLAG = Variable("assumption", "flag", "questionable")


def reference_pairs(data: ReliabilityData) -> list[tuple]:
    """Each pair's figures with scikit-learn's cohen_kappa_score, pair by pair."""
    variable = data.variable
    weights = "linear" if variable.kind == "likert" else None
    present = ~np.isnan(data.matrix)
    pairs = []
    for a, b in combinations(range(len(data.raters)), 2):
        shared = present[a] & present[b]
        n = int(shared.sum())
        if n == 0:
            continue
        first, second = data.matrix[a, shared].astype(int), data.matrix[b, shared].astype(int)
        kappa = None
        if n >= agreement.MIN_SHARED:
            try:
                kappa = agreement.cohen_kappa(first, second, labels=variable.domain, weights=weights)
            except ValueError:  # no value of the first rater's in the domain: undefined
                kappa = None
        pairs.append((data.raters[a], data.raters[b], n, int((first == second).sum()), kappa))
    return pairs


def reference_fleiss_table(matrix: np.ndarray):
    columns = [matrix[:, j][~np.isnan(matrix[:, j])] for j in range(matrix.shape[1])]
    counts: dict[int, int] = {}
    for column in columns:
        if len(column) >= 2:
            counts[len(column)] = counts.get(len(column), 0) + 1
    if not counts:
        return None, 0
    raters, _ = max(counts.items(), key=lambda item: (item[1], item[0]))
    subjects = np.array([column for column in columns if len(column) == raters])
    table, _ = aggregate_raters(subjects)
    return table, len(subjects)


def assert_same_pairs(data: ReliabilityData) -> None:
    got = [(p.rater_a, p.rater_b, p.shared, p.matches, p.kappa) for p in agreement.pair_agreements(data)]
    expected = reference_pairs(data)
    assert [row[:4] for row in got] == [row[:4] for row in expected]
    for (*_, kappa), (*_, want) in zip(got, expected, strict=True):
        if want is None:
            assert kappa is None
        else:
            assert kappa == pytest.approx(want, abs=1e-9, rel=0)


def assert_same_fleiss(matrix: np.ndarray) -> None:
    table, units = agreement.fleiss_table(matrix)
    want, want_units = reference_fleiss_table(matrix)
    assert units == want_units
    if want is None:
        assert table is None
    else:
        np.testing.assert_array_equal(table, want)


def random_data(
    rng, variable: Variable, raters: int, units: int, overlap: int, values=None
) -> ReliabilityData:
    values = variable.domain if values is None else values
    matrix = np.full((raters, units), np.nan)
    for unit in range(units):
        chosen = rng.choice(raters, size=rng.integers(1, min(overlap, raters) + 1), replace=False)
        matrix[chosen, unit] = rng.choice(values, size=len(chosen))
    return ReliabilityData(variable, list(range(10, 10 + raters)), list(range(units)), matrix)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("variable", [LIKERT, PAIRWISE, FLAG], ids=["likert", "pairwise", "flag"])
def test_pairs_and_fleiss_match_the_libraries_on_random_data(seed, variable):
    rng = np.random.default_rng(seed)
    data = random_data(
        rng, variable, raters=int(rng.integers(2, 12)), units=int(rng.integers(1, 120)), overlap=4
    )
    assert_same_pairs(data)
    assert_same_fleiss(data.matrix)


@pytest.mark.parametrize(
    "variable, values",
    [
        (LIKERT, [3]),  # one category: kappa undefined everywhere
        (PAIRWISE, [TIE]),  # every answer a tie
        (PAIRWISE, [0, TIE]),  # ties among preferences
        (LIKERT, [4, 5]),  # two of the scale's values
        (LIKERT, [1, 5, 9]),  # 9: outside the scale (counted as shared, not in the kappa)
        (LIKERT, [0, 9]),  # nothing inside the scale
    ],
    ids=["one-category", "all-ties", "ties", "two-values", "outside-domain", "none-in-domain"],
)
def test_pairs_and_fleiss_match_the_libraries_on_edge_cases(variable, values):
    rng = np.random.default_rng(7)
    for _ in range(5):
        data = random_data(rng, variable, raters=5, units=30, overlap=3, values=values)
        assert_same_pairs(data)
        assert_same_fleiss(data.matrix)


def test_raters_sharing_no_unit_or_one_unit():
    nan = np.nan
    matrix = np.array(
        [
            [1, 2, nan, nan, nan],
            [nan, nan, 3, 4, nan],  # shares nothing with the first
            [1, nan, 3, nan, 5],  # one unit with each of the others: no kappa
        ]
    )
    data = ReliabilityData(LIKERT, [1, 2, 3], list(range(5)), matrix)
    assert_same_pairs(data)
    assert [(p.rater_a, p.rater_b, p.shared, p.kappa) for p in agreement.pair_agreements(data)] == [
        (1, 3, 1, None),
        (2, 3, 1, None),
    ]
    assert_same_fleiss(matrix)
    empty = ReliabilityData(LIKERT, [], [], np.zeros((0, 0)))
    assert agreement.pair_agreements(empty) == []
    assert agreement.fleiss_table(empty.matrix) == (None, 0)


def test_reliability_data_from_a_dict_lays_out_raters_and_units_in_id_order():
    values = {(7, 30): 2, (3, 30): 4, (7, 10): 5}
    data = agreement.as_reliability_data(LIKERT, values)
    assert data.raters == [3, 7] and data.units == [10, 30]
    np.testing.assert_array_equal(data.matrix, np.array([[np.nan, 4], [5, 2]]))


def library_alpha(matrix, level, domain):
    import krippendorff

    judged = (~np.isnan(matrix)).sum(axis=0)
    pairable = matrix[:, judged >= 2]
    if pairable.size == 0 or len(np.unique(pairable[~np.isnan(pairable)])) < 2:
        return None
    try:
        value = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level, value_domain=domain)
    except ValueError:
        return None
    return float(value) if np.isfinite(value) else None


ALPHA_CASES = [
    (LIKERT, None),
    (PAIRWISE, None),
    (FLAG, None),
    (LIKERT, [3]),
    (LIKERT, [4, 5]),
    (PAIRWISE, [0, TIE]),
    (LIKERT, [1, 5, 9]),  # 9 outside the scale: undefined
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("variable, values", ALPHA_CASES)
def test_alpha_matches_the_krippendorff_library(seed, variable, values):
    rng = np.random.default_rng(seed)
    levels = ["ordinal", "interval"] if variable.kind == "likert" else ["nominal"]
    for _ in range(3):
        data = random_data(
            rng,
            variable,
            raters=int(rng.integers(4, 9)),
            units=int(rng.integers(1, 80)),
            overlap=4,
            values=values,
        )
        for level in levels:
            want = library_alpha(data.matrix, level, variable.domain)
            got = agreement.krippendorff_alpha(data.matrix, level, value_domain=variable.domain)
            if want is None:
                assert got is None
            else:
                assert got == pytest.approx(want, abs=1e-9, rel=0)


def test_cells_from_indices_are_the_matrix_cells_in_unit_then_rater_order():
    rng = np.random.default_rng(5)
    matrix = rng.integers(1, 6, (7, 40)).astype(float)
    matrix[rng.random(matrix.shape) < 0.6] = np.nan
    rows, columns = np.nonzero(~np.isnan(matrix))
    shuffled = rng.permutation(len(rows))
    cells = agreement.Cells.from_indices(
        rows[shuffled], columns[shuffled], matrix[rows, columns][shuffled], *matrix.shape
    )
    expected = agreement.Cells.from_matrix(matrix)
    for name in ("units", "raters", "values"):
        np.testing.assert_array_equal(getattr(cells, name), getattr(expected, name))
    np.testing.assert_array_equal(cells.matrix(), matrix)
    np.testing.assert_array_equal(cells.judged(), (~np.isnan(matrix)).sum(axis=0))


def test_of_two_values_for_one_cell_the_later_counts_and_nan_is_no_value():
    cells = agreement.Cells.from_indices(
        np.array([0, 1, 0, 1]), np.array([2, 0, 2, 1]), np.array([1.0, 4.0, 3.0, np.nan]), 2, 3
    )
    np.testing.assert_array_equal(cells.matrix(), [[np.nan, np.nan, 3.0], [4.0, np.nan, np.nan]])


def test_a_column_is_read_from_the_cells():
    data = agreement.as_reliability_data(LIKERT, {(7, 30): 2, (3, 30): 4, (7, 10): 5, (9, 20): 1})
    assert data.column(30) == [4.0, 2.0] and data.column(10) == [5.0] and data.column(20) == [1.0]
    with pytest.raises(ValueError):
        data.column(15)


def test_a_big_sparse_project_is_measured_without_its_raters_by_units_matrix():
    """2,000 raters and 300,000 units, each judged by three: the dense matrix would be 4.8 GB."""
    rng = np.random.default_rng(11)
    units = np.repeat(np.arange(300_000), 3)
    raters = (np.repeat(rng.integers(0, 2000, 300_000), 3) + np.tile([0, 1, 2], 300_000)) % 2000
    values = rng.integers(1, 6, len(units)).astype(float)
    data = agreement.reliability_from_arrays(LIKERT, raters, units, values)
    result = agreement.variable_agreement(data)
    assert data._matrix is None  # never made
    assert result.units == 300_000 and result.fleiss_units == 300_000 and result.raters == 2000
    assert abs(result.alpha_interval) < 0.01  # random values: no agreement beyond chance
    # A slice small enough to lay out as a matrix: the library's own figure from it.
    small = units < 2000
    part = agreement.reliability_from_arrays(LIKERT, raters[small], units[small], values[small])
    got = agreement.krippendorff_alpha(part.cells, "interval", value_domain=LIKERT.domain)
    assert got == pytest.approx(library_alpha(part.matrix, "interval", LIKERT.domain), abs=1e-9)
