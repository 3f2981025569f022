"""`approx` and `raises` as pytest spells them, in the standard library only (see __init__).

`approx(expected, rel=None, abs=None)` compares numbers, complex numbers, and sequences, sets and
dicts of them, with pytest's defaults: equal within max(rel * |expected|, abs), rel 1e-6 and abs
1e-12 unless given; `nan_ok` makes NaN equal NaN. `raises(Error)` is a context manager (or call form)
that fails unless the block raises `Error`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class _Approx:
    def __init__(self, expected, rel=None, abs=None, nan_ok=False):
        self.expected, self.rel, self.abs, self.nan_ok = expected, rel, abs, nan_ok

    def _close(self, actual, expected) -> bool:
        if isinstance(expected, bool) or not isinstance(expected, int | float | complex):
            return actual == expected
        if isinstance(actual, bool) or not isinstance(actual, int | float | complex):
            return False
        if isinstance(expected, float) and math.isnan(expected):
            return self.nan_ok and isinstance(actual, float) and math.isnan(actual)
        if actual == expected:
            return True
        if math.isinf(abs(expected)) or math.isinf(abs(actual)):
            return False
        rel = 1e-6 if self.rel is None else self.rel
        absolute = 1e-12 if self.abs is None else self.abs
        if self.rel is None and self.abs is not None:
            rel = 0.0  # pytest: an explicit abs alone means no relative tolerance
        return abs(actual - expected) <= max(rel * abs(expected), absolute)

    def _matches(self, actual, expected) -> bool:
        if isinstance(expected, Mapping):
            return (
                isinstance(actual, Mapping)
                and set(actual) == set(expected)
                and all(self._matches(actual[key], value) for key, value in expected.items())
            )
        if isinstance(expected, list | tuple):
            return (
                isinstance(actual, list | tuple)
                and len(actual) == len(expected)
                and all(self._matches(a, e) for a, e in zip(actual, expected, strict=True))
            )
        if isinstance(expected, set | frozenset):
            return (
                isinstance(actual, set | frozenset)
                and len(actual) == len(expected)
                and all(any(self._matches(a, e) for a in actual) for e in expected)
            )
        return self._close(actual, expected)

    def __eq__(self, actual) -> bool:
        return self._matches(actual, self.expected)

    def __ne__(self, actual) -> bool:
        return not self == actual

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"approx({self.expected!r})"


def approx(expected, rel=None, abs=None, nan_ok=False):
    return _Approx(expected, rel=rel, abs=abs, nan_ok=nan_ok)


class _Raises:
    def __init__(self, expected):
        self.expected = expected
        self.value = None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            raise AssertionError(f"DID NOT RAISE {self.expected}")
        if not issubclass(kind, self.expected):
            return False
        self.value = value
        return True


def raises(expected, *args, **kwargs):
    if not args:
        return _Raises(expected)
    with _Raises(expected) as caught:
        args[0](*args[1:], **kwargs)
    return caught
