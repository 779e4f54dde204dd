"""The feature transformer shared by training and serving.

It lives in ``app/`` because a saved bundle references it and the serving image has no ``orchestration/``.
It works on any column mapping (a pandas DataFrame in training, a dict of lists in serving), so the
prediction path needs no DataFrame at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, TransformerMixin

DATE_PARTS: tuple[str, ...] = ("year", "month", "day", "dayofweek", "dayofyear")
# Up to this many rows, per-row Python beats numpy's per-call cost (single records and their micro-batches).
FEW_ROWS = 64


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


class FeatureTransformer(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):  # type: ignore[misc,call-arg]
    """Numeric columns as floats, categoricals as ordinal codes (unknown -> NaN), dates as their parts.

    Output columns are numeric, then categorical, then the parts of each date column; ``categorical_mask_``
    tells the model which are categorical. The output is always the float matrix: scikit-learn's ``set_output``
    wrapping is off (it cost more per serving call than a one-record transform, and a global
    ``transform_output="pandas"`` would hand the model a DataFrame).
    """

    def __init__(
        self,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        dates: Sequence[str] = (),
    ) -> None:
        self.numeric = numeric
        self.categorical = categorical
        self.dates = dates

    def fit(self, X: Columns, y: object = None) -> Self:
        """Learn each categorical column's vocabulary (sorted) from the training data only."""
        self.categories_: dict[str, list[str]] = {
            name: sorted({str(v) for v in np.unique(np.asarray(X[name], dtype=str))}) for name in self.categorical
        }
        self.feature_names_out_: list[str] = [
            *self.numeric,
            *self.categorical,
            *(f"{name}_{part}" for name in self.dates for part in DATE_PARTS),
        ]
        self.categorical_mask_: list[bool] = [
            *(False for _ in self.numeric),
            *(True for _ in self.categorical),
            *(False for _ in self.dates for _ in DATE_PARTS),
        ]
        return self

    def transform(self, X: Columns) -> npt.NDArray[np.float64]:
        """Columns -> a float matrix in ``feature_names_out_`` order."""
        first = next(iter([*self.numeric, *self.categorical, *self.dates]))
        n_rows = len(X[first])
        if 0 < n_rows <= FEW_ROWS:  # every column as a Python sequence, then one numpy call for them all
            columns: list[Any] = [X[name] for name in self.numeric]
            columns += [self._codes(name, X[name]) for name in self.categorical]
            for name in self.dates:
                columns += zip(*_day_parts(X[name]), strict=True)  # one column per part
            return np.ascontiguousarray(np.array(columns, dtype=np.float64).T)
        out = np.empty((n_rows, len(self.feature_names_out_)), dtype=np.float64)
        col = 0
        for name in self.numeric:
            out[:, col] = np.asarray(X[name], dtype=np.float64)
            col += 1
        for name in self.categorical:
            out[:, col] = self._codes(name, X[name])
            col += 1
        for name in self.dates:
            out[:, col : col + len(DATE_PARTS)] = date_parts(X[name])  # strings straight to days: 2x faster
            col += len(DATE_PARTS)
        return out

    def _codes(self, name: str, values: Any) -> list[float]:
        """Each value's position in the column's vocabulary, NaN if not in it: a dict look-up per value (3x faster
        than numpy's sorted search on text for 1,000 rows, and than its set-up cost for a few)."""
        index = {v: float(i) for i, v in enumerate(self.categories_[name])}
        return [index.get(str(v), math.nan) for v in values]

    def get_feature_names_out(self, input_features: object = None) -> npt.NDArray[np.str_]:
        return np.asarray(self.feature_names_out_, dtype=str)
