"""The feature encoding: request columns -> the float matrix a model reads, with numpy and the standard library only.

Training fits it (``app.contract.features.FeatureTransformer``, the scikit-learn estimator that wraps it and that a
bundle's ``transformer.skops`` holds) and serving reads it from the bundle's serving form
(``app.contract.serving_form``), where it is stored as data: so the server encodes a request without scikit-learn.
It works on any column mapping (a pandas DataFrame in training, a dict of lists in serving), so the prediction path
needs no DataFrame at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

DATE_PARTS: Final[tuple[str, ...]] = ("year", "month", "day", "dayofweek", "dayofyear")
# Up to this many rows, per-row Python beats numpy's per-call cost (single records and their micro-batches).
FEW_ROWS: Final = 64


class Columns(Protocol):
    """Column name -> 1-D sequence of values: a DataFrame, or a dict of lists or arrays."""

    def __getitem__(self, key: str, /) -> Any: ...


def date_parts(values: Sequence[str] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """ISO dates (``YYYY-MM-DD``) -> columns ``DATE_PARTS`` as floats, vectorised with numpy (up to ``FEW_ROWS``
    days, read one by one by ``datetime.date``: the same numbers, without numpy's per-call cost)."""
    if 0 < len(values) <= FEW_ROWS:
        return np.array(_day_parts(values), dtype=np.float64)
    days = np.asarray(values, dtype="datetime64[D]")
    years = days.astype("datetime64[Y]")
    months = days.astype("datetime64[M]")
    out = np.empty((days.shape[0], len(DATE_PARTS)), dtype=np.float64)
    out[:, 0] = years.astype(np.int64) + 1970
    out[:, 1] = months.astype(np.int64) % 12 + 1
    out[:, 2] = (days - months).astype(np.int64) + 1
    out[:, 3] = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    out[:, 4] = (days - years).astype(np.int64) + 1
    return out


def _day_parts(values: Sequence[str] | npt.NDArray[Any]) -> list[tuple[int, int, int, int, int]]:
    """Each ISO date's ``DATE_PARTS``, read by ``datetime.date`` (for a few rows)."""
    days_read = [date.fromisoformat(str(value)) for value in values]
    return [(d.year, d.month, d.day, d.weekday(), d.timetuple().tm_yday) for d in days_read]


class FeatureEncoding:
    """Numeric columns as floats, categoricals as their position in a vocabulary (unknown -> NaN), dates as their
    ``DATE_PARTS``; output columns numeric, then categorical, then the parts of each date column."""

    def __init__(self, numeric: Sequence[str], vocabularies: Mapping[str, Sequence[str]], dates: Sequence[str]) -> None:
        self.numeric = list(numeric)
        self.categorical = list(vocabularies)
        self.vocabularies = {name: list(words) for name, words in vocabularies.items()}
        self.dates = list(dates)
        self._index = {name: {v: float(i) for i, v in enumerate(words)} for name, words in vocabularies.items()}

    @property
    def width(self) -> int:
        return len(self.numeric) + len(self.categorical) + len(DATE_PARTS) * len(self.dates)

    def feature_names_out(self) -> list[str]:
        return [*self.numeric, *self.categorical, *(f"{name}_{part}" for name in self.dates for part in DATE_PARTS)]

    def categorical_mask(self) -> list[bool]:
        parts = len(DATE_PARTS) * len(self.dates)
        return [False] * len(self.numeric) + [True] * len(self.categorical) + [False] * parts

    def transform(self, X: Columns) -> npt.NDArray[np.float64]:
        """Columns -> a float matrix in ``feature_names_out()`` order."""
        first = next(iter([*self.numeric, *self.categorical, *self.dates]))
        n_rows = len(X[first])
        if 0 < n_rows <= FEW_ROWS:  # every column as a Python sequence, then one numpy call for them all
            columns: list[Any] = [X[name] for name in self.numeric]
            columns += [self.codes(name, X[name]) for name in self.categorical]
            for name in self.dates:
                columns += zip(*_day_parts(X[name]), strict=True)  # one column per part
            return np.ascontiguousarray(np.array(columns, dtype=np.float64).T)
        out = np.empty((n_rows, self.width), dtype=np.float64)
        col = 0
        for name in self.numeric:
            out[:, col] = np.asarray(X[name], dtype=np.float64)
            col += 1
        for name in self.categorical:
            out[:, col] = self.codes(name, X[name])
            col += 1
        for name in self.dates:
            out[:, col : col + len(DATE_PARTS)] = date_parts(X[name])  # strings straight to days: 2x faster
            col += len(DATE_PARTS)
        return out

    def codes(self, name: str, values: Any) -> list[float]:
        """Each value's position in the column's vocabulary, NaN if not in it: a dict look-up per value (3x faster
        than numpy's sorted search on text for 1,000 rows, and than its set-up cost for a few)."""
        index = self._index[name]
        return [index.get(str(v), math.nan) for v in values]
