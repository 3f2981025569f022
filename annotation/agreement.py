"""Agreement statistics over raters' values, and gold checks: pure functions, no database.

Fleiss' kappa comes from statsmodels (its count table built here with numpy). Krippendorff's
alpha is the `krippendorff` library's computation and Cohen's kappa scikit-learn's, made with
np.bincount over all units and all rater pairs at once (a project has hundreds of thousands of
units and hundreds of rater pairs per variable); tests/test_agreement_vectorised.py holds the
figures to the libraries' own to 1e-9. Values are a raters × units matrix (ReliabilityData),
held as its cells with a value (`Cells`): a project's matrix is almost all empty (each unit is
judged by a few of its hundreds of raters), so the statistics are computed from the cells, in
time and memory that grow with the judgments, never with raters × units. annotation.quality
reads the values from the judgments and says what is measured.
"""

from __future__ import annotations

import warnings
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotation.questions import ranking_groups

TIE = -1  # the value of a pairwise answer that prefers neither output
MIN_SHARED = 2  # tasks two raters must share before their Cohen's kappa is worth computing
GOLD_LIKERT_TOLERANCE = 1


@dataclass(frozen=True)
class Variable:
    """One thing raters give a value for: a likert criterion, or a pairwise preference."""

    question: str
    kind: str  # "likert", "pairwise", or "flag" (a rubric flag raised or not: 1 or 0)
    criterion: str | None = None
    scale: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return f"{self.question} · {self.criterion}" if self.criterion else self.question

    @property
    def domain(self) -> list[int]:
        """Every value the variable can take, in order."""
        if self.kind == "likert":
            low, high = self.scale
            return list(range(low, high + 1))
        if self.kind == "flag":
            return [0, 1]
        return [0, 1, TIE]

    def value_name(self, value: int) -> str:
        if self.kind == "likert":
            return str(value)
        if self.kind == "flag":
            return {0: "not raised", 1: "raised"}[value]
        return {0: "first", 1: "second", TIE: "tie"}[value]


@dataclass(frozen=True)
class Cells:
    """The cells with a value of a raters × units matrix, by unit then rater (the order of
    `np.nonzero(present.T)`): their column (unit) and row (rater) indices and values."""

    units: np.ndarray  # int64 column indices, ascending
    raters: np.ndarray  # int64 row indices, ascending within a unit
    values: np.ndarray  # float
    n_units: int
    n_raters: int

    @classmethod
    def from_matrix(cls, matrix: Any) -> Cells:
        matrix = np.asarray(matrix, dtype=float)
        if matrix.ndim != 2:
            matrix = np.zeros((0, 0))
        units, raters = np.nonzero(~np.isnan(matrix.T))
        return cls(units, raters, matrix.T[units, raters], matrix.shape[1], matrix.shape[0])

    @classmethod
    def from_indices(
        cls, raters: np.ndarray, units: np.ndarray, values: np.ndarray, n_raters: int, n_units: int
    ) -> Cells:
        """From a value per (row, column), in any order; of two for the same cell the later counts
        (as assigning them into a matrix in turn would), and NaN values are no values."""
        values = np.asarray(values, dtype=float)
        order = np.lexsort((raters, units))  # stable: equal cells keep their order
        raters, units, values = raters[order], units[order], values[order]
        last = np.ones(len(units), dtype=bool)
        last[:-1] = (units[1:] != units[:-1]) | (raters[1:] != raters[:-1])
        keep = last & ~np.isnan(values)
        return cls(units[keep], raters[keep], values[keep], n_units, n_raters)

    def matrix(self) -> np.ndarray:
        matrix = np.full((self.n_raters, self.n_units), np.nan)
        matrix[self.raters, self.units] = self.values
        return matrix

    def judged(self) -> np.ndarray:
        """The number of values of each unit."""
        return np.bincount(self.units, minlength=self.n_units)


def _cells(matrix: Any) -> Cells:
    return matrix if isinstance(matrix, Cells) else Cells.from_matrix(matrix)


class ReliabilityData:
    """The values of one variable: a raters × units matrix (NaN where the rater did not judge the
    unit), held as its `cells`; `matrix` is made from them when asked for."""

    def __init__(
        self,
        variable: Variable,
        raters: list[int],
        units: list[int],
        matrix: np.ndarray | None = None,
        *,
        cells: Cells | None = None,
    ):
        self.variable = variable
        self.raters = raters  # user ids, ascending: the matrix's rows
        self.units = units  # task ids, ascending: the matrix's columns
        self.cells = Cells.from_matrix(matrix) if cells is None else cells
        self._matrix = None if matrix is None else np.asarray(matrix, dtype=float)

    @property
    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = self.cells.matrix()
        return self._matrix

    def column(self, unit: int) -> list[float]:
        """The values of one unit, by rater."""
        index = bisect_left(self.units, unit)
        if index == len(self.units) or self.units[index] != unit:
            raise ValueError(f"no unit {unit}")
        start, stop = np.searchsorted(self.cells.units, [index, index + 1])
        return [float(v) for v in self.cells.values[start:stop]]


def as_reliability_data(variable: Variable, values: dict[tuple[int, int], int]) -> ReliabilityData:
    """From {(rater id, unit id): value}."""
    keys = list(values)
    return reliability_from_arrays(
        variable,
        np.fromiter((rater for rater, _ in keys), dtype=np.int64, count=len(keys)),
        np.fromiter((unit for _, unit in keys), dtype=np.int64, count=len(keys)),
        np.fromiter(values.values(), dtype=float, count=len(keys)),
    )


def reliability_from_arrays(
    variable: Variable, raters: np.ndarray, units: np.ndarray, values: np.ndarray
) -> ReliabilityData:
    """From parallel arrays of rater ids, unit ids and values (one value per rater and unit)."""
    rater_ids, row = np.unique(np.asarray(raters, dtype=np.int64), return_inverse=True)
    unit_ids, column = np.unique(np.asarray(units, dtype=np.int64), return_inverse=True)
    cells = Cells.from_indices(row.reshape(-1), column.reshape(-1), values, len(rater_ids), len(unit_ids))
    return ReliabilityData(variable, rater_ids.tolist(), unit_ids.tolist(), cells=cells)


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def krippendorff_alpha(matrix: Any, level: str, *, value_domain: list | None = None) -> float | None:
    """Krippendorff's alpha of a raters × units matrix (NaN = missing), or of its `Cells`; None when undefined
    (no unit judged twice, or a single value in the data: there is no disagreement to expect; or
    a value outside `value_domain`).

    The `krippendorff` library's computation (nominal, ordinal, interval), with its coincidence
    matrix made from per-unit value counts by np.bincount and one matrix product rather than a
    units × values × values array: a project's hundreds of thousands of units fit in a page view.
    """
    cells = _cells(matrix)
    if not len(cells.values):
        return None
    judged = cells.judged()
    pairable = cells.values[judged[cells.units] >= 2]
    if pairable.size == 0 or len(np.unique(pairable)) < 2:
        return None
    given = np.unique(cells.values)
    domain = given if value_domain is None else np.asarray(value_domain, dtype=float)
    if len(domain) <= 1 or not np.isin(given, domain).all():
        return None
    labels = len(domain)
    order = np.argsort(domain, kind="stable")
    index = order[np.searchsorted(domain[order], cells.values)]
    counts = np.bincount(cells.units * labels + index, minlength=cells.n_units * labels).reshape(-1, labels)
    weighted = counts / (np.maximum(counts.sum(axis=1), 2) - 1)[:, None]
    coincidences = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_v = coincidences.sum(axis=0)
    expected = (np.outer(n_v, n_v) - np.diag(n_v)) / (n_v.sum() - 1)
    if level == "nominal":
        distances = (domain[:, None] != domain[None, :]).astype(float)
    elif level == "interval":
        distances = (domain[:, None] - domain[None, :]) ** 2
    elif level == "ordinal":
        cumulative = np.concatenate([[0.0], np.cumsum(n_v)])
        i = np.arange(labels)
        low, high = np.minimum(i[:, None], i[None, :]), np.maximum(i[:, None], i[None, :])
        distances = (cumulative[high + 1] - cumulative[low] - (n_v[low] + n_v[high]) / 2) ** 2
    else:
        raise ValueError(f"unknown level of measurement: {level}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _finite(1 - (coincidences * distances).sum() / (expected * distances).sum())


def fleiss_table(matrix: Any) -> tuple[np.ndarray | None, int]:
    """Fleiss' units × categories count table, from the units judged by the modal number (≥ 2) of
    raters, and that number of units. The table statsmodels' aggregate_raters makes (categories:
    the values present, ascending), counted with one np.bincount. `matrix`: raters × units, or
    its `Cells`."""
    cells = _cells(matrix)
    judged = cells.judged()
    sizes, units = np.unique(judged[judged >= 2], return_counts=True)
    if not len(sizes):
        return None, 0
    # Most units first, then the larger number of raters.
    raters = int(sizes[np.lexsort((sizes, units))[-1]])
    values = cells.values[judged[cells.units] == raters]  # unit by unit: `raters` values per unit
    categories, index = np.unique(values, return_inverse=True)
    n = len(values) // raters
    rows = np.repeat(np.arange(n), raters)
    table = np.bincount(rows * len(categories) + index.reshape(-1), minlength=n * len(categories))
    return table.reshape(n, len(categories)), n


def fleiss_kappa(matrix: Any) -> tuple[float | None, int]:
    """Fleiss' kappa (statsmodels) of a raters × units matrix (or its `Cells`), and how many units it used."""
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

    table, units = fleiss_table(matrix)
    if table is None or table.shape[1] < 2:
        return None, units
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _finite(statsmodels_fleiss_kappa(table, method="fleiss")), units


def cohen_kappa(
    first: Iterable[Any], second: Iterable[Any], *, labels: list | None = None, weights: str | None = None
) -> float | None:
    """Cohen's kappa (scikit-learn) of two raters' values on the same units; None when undefined."""
    from sklearn.metrics import cohen_kappa_score

    first, second = list(first), list(second)
    if len(first) < 1 or len(first) != len(second):
        return None
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _finite(cohen_kappa_score(first, second, labels=labels, weights=weights))


@dataclass
class PairAgreement:
    variable: Variable
    rater_a: int
    rater_b: int
    shared: int  # units both judged
    matches: int  # of those, units where they gave the same value
    kappa: float | None  # None below MIN_SHARED shared units, or when undefined


def _indicator(cells: Cells, chosen: np.ndarray) -> Any:
    """Units × raters, 1 where the cell is among `chosen` (a boolean mask over the cells)."""
    from scipy import sparse

    return sparse.csr_matrix(
        (np.ones(int(chosen.sum())), (cells.units[chosen], cells.raters[chosen])),
        shape=(cells.n_units, cells.n_raters),
    )


def _pair_counts(left: Any, right: Any, n_raters: int) -> tuple[np.ndarray, np.ndarray]:
    """For every two raters a < b: the units where a has a cell of `left` and b one of `right`,
    as (a × n_raters + b, count) arrays, the pairs with none left out."""
    product = (left.T @ right).tocoo()
    upper = (product.row < product.col) & (product.data > 0)
    return product.row[upper].astype(np.int64) * n_raters + product.col[upper], product.data[upper]


def cohen_kappas(confusion: np.ndarray, weights: str | None) -> np.ndarray:
    """scikit-learn's cohen_kappa_score of each confusion matrix (pairs × labels × labels),
    NaN where it is undefined."""
    confusion = confusion.astype(float)
    labels = confusion.shape[-1]
    sum0, sum1 = confusion.sum(axis=1), confusion.sum(axis=2)
    total = sum0.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = sum0[:, :, None] * sum1[:, None, :] / total[:, None, None]
        if weights is None:
            w = np.ones((labels, labels))
            np.fill_diagonal(w, 0)
        else:
            w = np.zeros((labels, labels)) + np.arange(labels)
            w = np.abs(w - w.T) if weights == "linear" else (w - w.T) ** 2
        numerator = (w * confusion).sum(axis=(1, 2))
        denominator = (w * expected).sum(axis=(1, 2))
        kappa = 1 - numerator / denominator
    kappa[(total == 0) | (denominator == 0) | ~np.isfinite(kappa)] = np.nan
    return kappa


def pair_agreements(data: ReliabilityData) -> list[PairAgreement]:
    """Every pair of raters who judged a unit in common, with their Cohen's kappa on those units
    (linearly weighted for likert variables), ordered by the pair's rows.

    Counted by sparse products of units × raters indicator matrices (shared units, equal values,
    and a confusion matrix per pair): the work grows with the pairs of ratings of a unit, in C,
    and memory with the pairs of raters, never with their ratings' pairs (a unit judged by 500
    raters is 124,750 of them).

    The kappas are scikit-learn's: values outside the variable's domain count as shared units but
    not in the kappa (its `labels`), and a pair whose values leave it undefined has None.
    """
    variable, cells = data.variable, data.cells
    weights = "linear" if variable.kind == "likert" else None
    everything = np.ones(len(cells.values), dtype=bool)
    raters = cells.n_raters
    presence = _indicator(cells, everything)
    pair_ids, shared = _pair_counts(presence, presence, raters)
    if not len(pair_ids):
        return []
    order = np.argsort(pair_ids)
    pair_ids, shared = pair_ids[order], shared[order]
    pairs = len(pair_ids)

    def add(counts: np.ndarray, found: tuple[np.ndarray, np.ndarray], at=()) -> None:
        keys, n = found
        counts[(np.searchsorted(pair_ids, keys), *at)] += n

    matches = np.zeros(pairs)
    for value in np.unique(cells.values):  # the same value, inside the domain or not
        same = _indicator(cells, cells.values == value)
        add(matches, _pair_counts(same, same, raters))
    domain = np.asarray(variable.domain, dtype=float)
    labels = len(domain)
    confusion = np.zeros((pairs, labels, labels))
    by_label = [_indicator(cells, cells.values == label) for label in domain]
    for a_label, a_cells in enumerate(by_label):
        for b_label, b_cells in enumerate(by_label):
            add(confusion, _pair_counts(a_cells, b_cells, raters), (a_label, b_label))
    kappas = cohen_kappas(confusion, weights)
    return [
        PairAgreement(
            variable=variable,
            rater_a=data.raters[pair_id // raters],
            rater_b=data.raters[pair_id % raters],
            shared=int(n),
            matches=int(m),
            kappa=float(k) if n >= MIN_SHARED and np.isfinite(k) else None,
        )
        for pair_id, n, m, k in zip(pair_ids.tolist(), shared, matches, kappas, strict=True)
    ]


def mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclass
class VariableAgreement:
    variable: Variable
    raters: int
    units: int  # units judged by at least two raters
    alpha_nominal: float | None = None
    alpha_ordinal: float | None = None
    alpha_interval: float | None = None
    fleiss: float | None = None
    fleiss_units: int = 0
    mean_cohen: float | None = None
    cohen_pairs: int = 0  # rater pairs with a defined kappa
    percent_agreement: float | None = None  # over every pair of ratings of a unit


def variable_agreement(data: ReliabilityData) -> VariableAgreement:
    variable, cells = data.variable, data.cells
    judged = cells.judged()
    result = VariableAgreement(variable=variable, raters=len(data.raters), units=int((judged >= 2).sum()))
    if variable.kind == "likert":
        result.alpha_ordinal = krippendorff_alpha(cells, "ordinal", value_domain=variable.domain)
        result.alpha_interval = krippendorff_alpha(cells, "interval", value_domain=variable.domain)
    else:
        result.alpha_nominal = krippendorff_alpha(cells, "nominal", value_domain=variable.domain)
    result.fleiss, result.fleiss_units = fleiss_kappa(cells)
    pairs = pair_agreements(data)
    kappas = [pair.kappa for pair in pairs if pair.kappa is not None]
    result.mean_cohen, result.cohen_pairs = mean(kappas), len(kappas)
    shared = sum(pair.shared for pair in pairs)
    result.percent_agreement = sum(pair.matches for pair in pairs) / shared if shared else None
    return result


def gold_checks(
    kind: str, answer: Any, expected: Any, *, scale_criteria: list[str] | None = None
) -> list[bool]:
    """Pass/fail of each check of one answer against its gold answer (see annotation.quality's docstring)."""
    if kind == "likert":
        criteria = scale_criteria or []
        if not isinstance(expected, dict):
            expected = {criteria[0]: expected} if len(criteria) == 1 else {}
        given = answer if isinstance(answer, dict) else {}
        checks = []
        for criterion, score in expected.items():
            value = given.get(criterion)
            checks.append(
                isinstance(value, int)
                and isinstance(score, int | float)
                and abs(value - score) <= GOLD_LIKERT_TOLERANCE
            )
        return checks
    if kind == "pairwise":
        expected = expected.get("preferred") if isinstance(expected, dict) else expected
        if not isinstance(answer, dict):
            return [False]
        return [answer.get("preferred") == expected]
    if kind == "rubric":
        expected = expected.get("flags", []) if isinstance(expected, dict) else expected or []
        given = answer.get("flags", []) if isinstance(answer, dict) else []
        return [set(given) == set(expected)]
    if kind == "ranking":
        given = answer.get("ranking") if isinstance(answer, dict) else None
        return [
            given is not None
            and [sorted(g) for g in ranking_groups(given)] == [sorted(g) for g in ranking_groups(expected)]
        ]
    return []  # feedback and fixes have no right answer
