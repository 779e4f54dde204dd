"""Deterministic train/validation/test split."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from orchestration.config import SplitConfig


class Splits(NamedTuple):
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def split(frame: pd.DataFrame, config: SplitConfig) -> Splits:
    """Shuffle with the configured seed and cut into train/validation/test; same input, same split."""
    order = np.random.default_rng(config.seed).permutation(len(frame))
    n_test = max(1, round(len(frame) * config.test))
    n_val = max(1, round(len(frame) * config.validation))
    if len(frame) - n_test - n_val < 1:
        raise ValueError(f"{len(frame)} rows are too few to split into train/validation/test")
    test, val, train = np.split(order, [n_test, n_test + n_val])
    take = frame.iloc
    return Splits(
        train=take[np.sort(train)].reset_index(drop=True),
        validation=take[np.sort(val)].reset_index(drop=True),
        test=take[np.sort(test)].reset_index(drop=True),
    )
