"""Fit the feature transformer on the training split, and describe the features for the bundle's schema."""

from __future__ import annotations

from typing import Any

import pandas as pd

from app.contract.bundle import DATE_FORMAT, Feature, Target
from app.contract.features import FeatureTransformer
from orchestration.config import DataConfig


def fit_transformer(train: pd.DataFrame, config: DataConfig) -> FeatureTransformer:
    """A FeatureTransformer fitted on the training split only."""
    transformer = FeatureTransformer(numeric=config.numeric, categorical=config.categorical, dates=config.dates)
    return transformer.fit(train)


def feature_schema(train: pd.DataFrame, config: DataConfig, transformer: FeatureTransformer) -> list[Feature]:
    """Names, types, allowed categories, limits and the ranges seen in training, for the bundle's schema.

    A numeric feature's type is the one ``data.dtypes`` declares, else ``int`` when the training split holds only
    whole numbers (``59.0`` included) and ``float`` otherwise.

    A numeric or date feature's limits (``minimum``/``maximum``, which the server enforces) are its configured
    bound, or none; with ``enforce_observed_ranges`` a feature without a configured bound takes the range seen in
    the training split as its limits. That range is always recorded (``observed_minimum``/``observed_maximum``),
    to be reported, never enforced on its own: a row of the training file outside the train split's range is a
    valid request.
    """
    features: list[Feature] = []
    for name in config.numeric:
        column = train[name]
        # Declared in data.dtypes, or inferred: only whole numbers in the training split (59.0 too) is an integer.
        dtype = config.declared_dtype(name) or ("int" if bool((column == column.round()).all()) else "float")
        observed = (float(column.min()), float(column.max()))
        low, high = config.numeric_bound(name) or (observed if config.enforce_observed_ranges else (None, None))
        features.append(
            Feature(
                name=name,
                kind="numeric",
                dtype=dtype,
                minimum=low,
                maximum=high,
                observed_minimum=observed[0],
                observed_maximum=observed[1],
            )
        )
    for name in config.categorical:
        categories = config.categories.get(name, transformer.categories_[name])
        features.append(Feature(name=name, kind="categorical", dtype="str", categories=list(categories)))
    for name in config.dates:
        column = train[name]
        seen = (str(column.min()), str(column.max()))
        first, last = config.date_bound(name) or (seen if config.enforce_observed_ranges else (None, None))
        features.append(
            Feature(
                name=name,
                kind="date",
                dtype="date",
                minimum=first,
                maximum=last,
                observed_minimum=seen[0],
                observed_maximum=seen[1],
                format=DATE_FORMAT,
            )
        )
    return features


def example_from_schema(train: pd.DataFrame, features: list[Feature]) -> dict[str, Any]:
    """The API's example record, built from the training split feature by feature, never copied from a row
    (with a user's own data a row can be personal data): each numeric feature's median (a whole number for an
    integral one), each categorical feature's most frequent category, each date feature's median day."""
    example: dict[str, Any] = {}
    for feature in features:
        column = train[feature.name]
        if feature.kind == "numeric":
            median = float(column.median())
            example[feature.name] = round(median) if feature.dtype == "int" else median
        elif feature.kind == "categorical":
            counts = column.astype(str).value_counts()
            example[feature.name] = str(min(counts.index[counts == counts.max()]))  # ties: the first by name
        else:
            days = column.astype(str).sort_values(ignore_index=True)
            example[feature.name] = str(days[(len(days) - 1) // 2])
    return example


def target_summary(train: pd.DataFrame, config: DataConfig) -> Target:
    column = train[config.target]
    return Target(
        name=config.target, minimum=float(column.min()), maximum=float(column.max()), mean=float(column.mean())
    )
