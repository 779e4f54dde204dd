"""The serving predictor: ``Bundle.predict`` with the per-call overhead taken out, bit-identical to it.

A scikit-learn ``HistGradientBoostingRegressor`` costs milliseconds per ``predict`` call whatever the row
count: input validation, its internal ``_preprocessor`` (a ColumnTransformer that ordinal-encodes the
categorical columns again and reorders them first), and one Python-level call per tree. For a model of
that kind this module does the same arithmetic directly:

- the ordinal re-encoding as one ``searchsorted`` per categorical column (unknown or NaN -> NaN, as the
  OrdinalEncoder's ``use_encoded_value`` does), columns in the ColumnTransformer's order;
- each tree through scikit-learn's own compiled ``_predict_from_raw_data`` (the routine
  ``TreePredictor.predict`` calls), summed in the same order, starting from the same baseline, through
  the same inverse link.

So the predictions are the same floats, not approximately equal ones. That is checked when the predictor
is built: it predicts a probe set (the bundle's example and rows drawn across every feature's range) both
ways and keeps the direct path only if every value is bit-identical; any other model, or any difference,
uses ``Bundle.predict`` itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.contract.bundle import Bundle, Metadata
from app.contract.features import Columns
from app.observability import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

PROBE_ROWS: Final = 512
Matrix = npt.NDArray[np.float64]


class Predictor:
    """Predicts exactly what ``bundle.predict`` predicts; ``direct`` tells whether the fast path is in use."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        self.bundle = bundle
        self.threads = threads
        self._direct = _direct_path(bundle.model, threads)
        if self._direct is not None and not self._agrees(probe_columns(bundle.metadata, PROBE_ROWS)):
            log.warning("direct prediction path differs from Bundle.predict; using Bundle.predict")
            self._direct = None

    @property
    def direct(self) -> bool:
        return self._direct is not None

    def predict_columns(self, columns: Columns) -> npt.NDArray[np.float64]:
        """Column mapping (dict of lists or DataFrame) -> the same predictions as ``Bundle.predict``."""
        if self._direct is None:
            return self.bundle.predict(columns)
        return self._direct(self.bundle.transformer.transform(columns))

    def _agrees(self, columns: dict[str, list[Any]]) -> bool:
        expected = self.bundle.predict(columns)
        for rows in (slice(None), slice(0, 1), slice(1, 33)):  # the vectorised and the small-batch shapes
            part = {name: values[rows] for name, values in columns.items()}
            if not np.array_equal(self.predict_columns(part), expected[rows], equal_nan=True):
                return False
        return True


def _direct_path(model: Any, threads: int) -> Callable[[Matrix], Matrix] | None:
    """The direct predict function for a fitted single-output HistGradientBoostingRegressor, else None."""
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.ensemble._hist_gradient_boosting._predictor import _predict_from_raw_data
    except ImportError:  # scikit-learn moved its internals: stay on the public path
        return None
    if type(model) is not HistGradientBoostingRegressor or getattr(model, "n_trees_per_iteration_", 0) != 1:
        return None
    reorder = _preprocessor(getattr(model, "_preprocessor", None))
    if reorder is None:
        return None
    known_cat_bitsets, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    trees = [
        (predictor.nodes, predictor.raw_left_cat_bitsets)
        for predictors_of_iteration in model._predictors
        for predictor in predictors_of_iteration
    ]
    baseline = model._baseline_prediction
    inverse_link = model._loss.link.inverse

    def predict(features: Matrix) -> Matrix:
        data = reorder(features)
        n_rows = data.shape[0]
        raw = np.zeros((n_rows, 1), dtype=baseline.dtype, order="F")
        raw += baseline
        column = raw[:, 0]
        out = np.empty(n_rows, dtype=np.float64)
        for nodes, raw_left_cat_bitsets in trees:
            _predict_from_raw_data(nodes, data, raw_left_cat_bitsets, known_cat_bitsets, f_idx_map, threads, out)
            column += out
        return np.asarray(inverse_link(raw.ravel()), dtype=np.float64)

    return predict


def _preprocessor(preprocessor: Any) -> Callable[[Matrix], Matrix] | None:
    """The model's internal preprocessing as a plain function, if it has the known shape, else None."""
    if preprocessor is None:
        return lambda features: np.ascontiguousarray(features, dtype=np.float64)
    try:
        (enc_name, encoder, enc_mask), (num_name, _, num_mask), *rest = preprocessor.transformers_
    except (AttributeError, ValueError):
        return None
    if (enc_name, num_name) != ("encoder", "numerical") or any(
        name != "remainder" or t != "drop" for name, t, _ in rest
    ):
        return None
    if type(encoder).__name__ != "OrdinalEncoder" or encoder.handle_unknown != "use_encoded_value":
        return None
    if getattr(encoder, "_missing_indices", {}) or getattr(encoder, "_infrequent_enabled", False):
        return None
    if not np.isnan(encoder.unknown_value):
        return None
    categorical = np.flatnonzero(np.asarray(enc_mask, dtype=bool))
    numeric = np.flatnonzero(np.asarray(num_mask, dtype=bool))
    categories = [np.asarray(c, dtype=np.float64) for c in encoder.categories_]
    if len(categories) != len(categorical) or any(not np.all(np.diff(c) > 0) for c in categories):
        return None
    width = len(categorical) + len(numeric)

    def reorder(features: Matrix) -> Matrix:
        out = np.empty((features.shape[0], width), dtype=np.float64)
        for j, (column, known) in enumerate(zip(categorical, categories, strict=True)):
            values = features[:, column]
            position = np.searchsorted(known, values)
            found = known[np.minimum(position, len(known) - 1)] == values  # NaN never equals: unknown
            out[:, j] = np.where(found, position, np.nan)
        out[:, len(categorical) :] = features[:, numeric]
        return out

    return reorder


def probe_columns(metadata: Metadata, rows: int, seed: int = 0) -> dict[str, list[Any]]:
    """The bundle's example then ``rows - 1`` valid records drawn across every feature's range (its limits, else
    the range seen in training), as columns."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {}
    for feature in metadata.features:
        first = metadata.example[feature.name]
        seen_low, seen_high = feature.training_range()
        lowest = next((v for v in (feature.minimum, seen_low, first) if v is not None), first)
        highest = next((v for v in (feature.maximum, seen_high, first) if v is not None), first)
        drawn: list[Any]
        if feature.kind == "categorical":
            drawn = [str(c) for c in rng.choice(np.asarray(feature.categories or [first]), rows - 1)]
        elif feature.kind == "date":
            first_day = date.fromisoformat(str(lowest))
            span = max((date.fromisoformat(str(highest)) - first_day).days, 1)
            drawn = [(first_day + timedelta(days=int(d))).isoformat() for d in rng.integers(0, span + 1, rows - 1)]
        else:
            low, high = float(lowest), float(highest)
            values = rng.uniform(low, high, rows - 1)
            if feature.dtype == "int":
                drawn = [min(max(round(v), math.ceil(low)), math.floor(high)) for v in values]
            else:
                drawn = [float(v) for v in values]
        columns[feature.name] = [first, *drawn]
    return columns
