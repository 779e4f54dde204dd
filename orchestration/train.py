"""Train the regressor on transformed features, early-stopping on the validation split."""

from __future__ import annotations

import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from app.contract.features import FeatureTransformer
from orchestration.config import DataConfig, ModelConfig


def train_model(
    transformer: FeatureTransformer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    data: DataConfig,
    params: ModelConfig,
) -> HistGradientBoostingRegressor:
    """A HistGradientBoostingRegressor with the configured hyperparameters; categoricals handled natively."""
    model = HistGradientBoostingRegressor(
        **params.model_dump(),
        categorical_features=transformer.categorical_mask_ if any(transformer.categorical_mask_) else None,
        early_stopping=True,
    )
    model.fit(
        transformer.transform(train),
        train[data.target].to_numpy(),
        X_val=transformer.transform(validation),
        y_val=validation[data.target].to_numpy(),
    )
    return model
