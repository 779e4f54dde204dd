"""The pipeline's configuration (``params.yaml``): what the data looks like and how to train on it."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS: Final = Path(__file__).with_name("params.yaml")


class ConfigError(ValueError):
    """The configuration file is missing or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    target: str
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    dates: list[str] = Field(default_factory=list)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    categories: dict[str, list[str]] = Field(default_factory=dict)
    drop_duplicates: bool = True

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical, *self.dates]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.features:
            raise ValueError("data: at least one numeric, categorical or date column is required")
        names = [*self.features, self.target]
        if len(set(names)) != len(names):
            raise ValueError(f"data: a column is listed twice among target and features: {names}")
        for name, (low, high) in self.bounds.items():
            if name not in names:
                raise ValueError(f"data.bounds: {name!r} is not a numeric column or the target")
            if low > high:
                raise ValueError(f"data.bounds: {name!r} has min {low} above max {high}")
        for name in self.categories:
            if name not in self.categorical:
                raise ValueError(f"data.categories: {name!r} is not a categorical column")
        return self


class SplitConfig(_Strict):
    validation: float = Field(0.1, gt=0, lt=0.5)
    test: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 42


class ModelConfig(_Strict):
    """HistGradientBoostingRegressor hyperparameters (early stopping uses the validation split)."""

    learning_rate: float = Field(0.1, gt=0, le=1)
    max_iter: int = Field(300, ge=1)
    max_leaf_nodes: int = Field(31, ge=2)
    max_depth: int | None = Field(None, ge=1)
    min_samples_leaf: int = Field(20, ge=1)
    l2_regularization: float = Field(0.0, ge=0)
    n_iter_no_change: int = Field(10, ge=1)
    random_state: int = 42


class EvaluateConfig(_Strict):
    baseline_margin: float = Field(0.5, ge=0, lt=1)


class PipelineConfig(_Strict):
    data: DataConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


def load_config(path: Path = DEFAULT_PARAMS) -> PipelineConfig:
    """Read and validate a params file; ``ConfigError`` names the file and what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config file {path} is invalid:\n{exc}") from exc
