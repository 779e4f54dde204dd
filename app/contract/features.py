"""The feature transformer: the scikit-learn estimator training fits and a bundle's ``transformer.skops`` holds.

It lives in ``app/`` because a saved bundle references it by this module's name. What it computes is
``app.contract.encoding.FeatureEncoding``, which the bundle's serving form stores as data: the server encodes
requests without scikit-learn, so it never loads this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, TransformerMixin

from app.contract.encoding import DATE_PARTS, FEW_ROWS, Columns, FeatureEncoding, date_parts

__all__ = ["DATE_PARTS", "FEW_ROWS", "Columns", "FeatureEncoding", "FeatureTransformer", "date_parts"]


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
        encoding = self.encoding()
        self.feature_names_out_: list[str] = encoding.feature_names_out()
        self.categorical_mask_: list[bool] = encoding.categorical_mask()
        return self

    def transform(self, X: Columns) -> npt.NDArray[np.float64]:
        """Columns -> a float matrix in ``feature_names_out_`` order (``FeatureEncoding.transform``)."""
        return self.encoding().transform(X)

    def encoding(self) -> FeatureEncoding:
        """What this fitted transformer does, as data: the form a bundle's serving form stores."""
        return FeatureEncoding(self.numeric, self.categories_, self.dates)

    def get_feature_names_out(self, input_features: object = None) -> npt.NDArray[np.str_]:
        return np.asarray(self.feature_names_out_, dtype=str)
