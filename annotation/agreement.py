"""Agreement statistics over raters' values, and gold checks: pure functions, no database.

The statistics come from maintained libraries, never hand-written formulas: Krippendorff's alpha
from `krippendorff`, Fleiss' kappa from statsmodels, Cohen's kappa from scikit-learn. Values are
laid out as a raters × units matrix (ReliabilityData); annotation.quality reads them from the
judgments and says what is measured.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
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


@dataclass
class ReliabilityData:
    variable: Variable
    raters: list[int]  # user ids, ascending: the matrix's rows
    units: list[int]  # task ids, ascending: the matrix's columns
    matrix: np.ndarray  # float, raters × units, NaN where the rater did not judge the unit

    def column(self, unit: int) -> list[float]:
        values = self.matrix[:, self.units.index(unit)]
        return [float(v) for v in values if not np.isnan(v)]


def as_reliability_data(variable: Variable, values: dict[tuple[int, int], int]) -> ReliabilityData:
    raters = sorted({rater for rater, _ in values})
    units = sorted({unit for _, unit in values})
    row, column = {r: i for i, r in enumerate(raters)}, {u: j for j, u in enumerate(units)}
    matrix = np.full((len(raters), len(units)), np.nan)
    for (rater, unit), value in values.items():
        matrix[row[rater], column[unit]] = value
    return ReliabilityData(variable=variable, raters=raters, units=units, matrix=matrix)


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def krippendorff_alpha(matrix: Any, level: str, *, value_domain: list | None = None) -> float | None:
    """Krippendorff's alpha of a raters × units matrix (NaN = missing); None when undefined
    (no unit judged twice, or a single value in the data: there is no disagreement to expect)."""
    import krippendorff

    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        return None
    judged = (~np.isnan(matrix)).sum(axis=0)
    pairable = matrix[:, judged >= 2]
    if pairable.size == 0 or len(np.unique(pairable[~np.isnan(pairable)])) < 2:
        return None
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return _finite(
                krippendorff.alpha(
                    reliability_data=matrix, level_of_measurement=level, value_domain=value_domain
                )
            )
        except ValueError:
            return None


def fleiss_table(matrix: Any) -> tuple[np.ndarray | None, int]:
    """Fleiss' units × categories count table, from the units judged by the modal number (≥ 2) of
    raters, and that number of units."""
    from statsmodels.stats.inter_rater import aggregate_raters

    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        return None, 0
    columns = [matrix[:, j][~np.isnan(matrix[:, j])] for j in range(matrix.shape[1])]
    counts = Counter(len(column) for column in columns if len(column) >= 2)
    if not counts:
        return None, 0
    # Most units first, then the larger number of raters.
    raters, _ = max(counts.items(), key=lambda item: (item[1], item[0]))
    subjects = np.array([column for column in columns if len(column) == raters])
    table, _categories = aggregate_raters(subjects)
    return table, len(subjects)


def fleiss_kappa(matrix: Any) -> tuple[float | None, int]:
    """Fleiss' kappa (statsmodels) of a raters × units matrix, and how many units it used."""
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


def pair_agreements(data: ReliabilityData) -> list[PairAgreement]:
    """Every pair of raters who judged a unit in common, with their Cohen's kappa on those units."""
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
        kappa = (
            cohen_kappa(first, second, labels=variable.domain, weights=weights) if n >= MIN_SHARED else None
        )
        pairs.append(
            PairAgreement(
                variable=variable,
                rater_a=data.raters[a],
                rater_b=data.raters[b],
                shared=n,
                matches=int((first == second).sum()),
                kappa=kappa,
            )
        )
    return pairs


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
    variable, matrix = data.variable, data.matrix
    judged = (~np.isnan(matrix)).sum(axis=0) if matrix.size else np.zeros(0)
    result = VariableAgreement(variable=variable, raters=len(data.raters), units=int((judged >= 2).sum()))
    if variable.kind == "likert":
        result.alpha_ordinal = krippendorff_alpha(matrix, "ordinal", value_domain=variable.domain)
        result.alpha_interval = krippendorff_alpha(matrix, "interval", value_domain=variable.domain)
    else:
        result.alpha_nominal = krippendorff_alpha(matrix, "nominal", value_domain=variable.domain)
    result.fleiss, result.fleiss_units = fleiss_kappa(matrix)
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
