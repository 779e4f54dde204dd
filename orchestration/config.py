"""The pipeline's configuration (``params.yaml``): what the data looks like and how to train on it."""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS: Final = Path(__file__).with_name("params.yaml")
ISO_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
# The types a numeric column may be declared as (``data.dtypes``), and the bundle's name for each.
NUMERIC_DTYPES: Final = {"integer": "int", "int": "int", "float": "float"}
# A model's name: the V2 routes put it in a URL path and MLflow registers it, so letters, digits, "." "_" "-".
MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ConfigError(ValueError):
    """The configuration file is missing or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _iso_day(value: float | str) -> str | None:
    """``value`` as a ``YYYY-MM-DD`` string if it is one and a real day, else None."""
    if not isinstance(value, str) or not ISO_DAY.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        return None


class DataConfig(_Strict):
    """What the data looks like.

    ``bounds`` are limits: a numeric column's ``[min, max]`` (numbers) or a date column's (``YYYY-MM-DD`` days),
    both ends included. Training refuses data outside them and the server refuses requests outside them (the
    target's bound is checked in training only). A feature without a configured bound has no limit: the range
    seen in the training split is recorded in the bundle and reported, never enforced, unless
    ``enforce_observed_ranges`` asks for it to be the limit of every feature without a configured bound.

    ``dtypes`` declares a numeric column's type, ``integer`` or ``float``. Undeclared, a column holding only whole
    numbers in the training split (``59.0`` as well as ``59``) becomes an integer feature, which the server
    refuses ``59.5`` for; declared ``float`` it takes any number, and declared ``integer`` training refuses a value
    with a fractional part.
    """

    target: str
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    dates: list[str] = Field(default_factory=list)
    bounds: dict[str, tuple[float | str, float | str]] = Field(default_factory=dict)
    enforce_observed_ranges: bool = False
    categories: dict[str, list[str]] = Field(default_factory=dict)
    dtypes: dict[str, Literal["int", "float"]] = Field(default_factory=dict)
    drop_duplicates: bool = True

    @field_validator("dtypes", mode="before")
    @classmethod
    def _known_dtypes(cls, dtypes: Any) -> Any:
        """``integer`` (or ``int``) and ``float`` only, named in the message; kept as the bundle names them."""
        if not isinstance(dtypes, dict):
            return dtypes
        out: dict[Any, Any] = {}
        for name, dtype in dtypes.items():
            if not isinstance(dtype, str) or dtype.lower() not in NUMERIC_DTYPES:
                raise ValueError(f"data.dtypes: {name!r} has type {dtype!r}: a numeric column is integer or float")
            out[name] = NUMERIC_DTYPES[dtype.lower()]
        return out

    @field_validator("bounds", mode="before")
    @classmethod
    def _days_as_text(cls, bounds: Any) -> Any:
        """YAML reads an unquoted ``2019-01-01`` as a date: take it as the ISO day it is. A ``true`` is no number."""
        if not isinstance(bounds, dict):
            return bounds
        out: dict[Any, Any] = {}
        for name, pair in bounds.items():
            if isinstance(pair, list | tuple):
                for value in pair:
                    if isinstance(value, bool | datetime):
                        raise ValueError(f"data.bounds: {name!r} has {value!r}, neither a number nor a YYYY-MM-DD day")
                pair = [value.isoformat() if isinstance(value, date) else value for value in pair]
            out[name] = pair
        return out

    def numeric_bound(self, name: str) -> tuple[float, float] | None:
        """The configured limits of a numeric column or the target, if any."""
        bound = self.bounds.get(name)
        if bound is None or name in self.dates:
            return None
        low, high = bound
        assert isinstance(low, float) and isinstance(high, float)  # checked when the config was read
        return low, high

    def date_bound(self, name: str) -> tuple[str, str] | None:
        """The configured limits of a date column (``YYYY-MM-DD``), if any."""
        bound = self.bounds.get(name)
        if bound is None or name not in self.dates:
            return None
        low, high = bound
        assert isinstance(low, str) and isinstance(high, str)  # checked when the config was read
        return low, high

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
            if name in self.dates:
                first, last = _iso_day(low), _iso_day(high)
                if first is None or last is None:
                    raise ValueError(
                        f"data.bounds: {name!r} is a date column: its bounds must be real YYYY-MM-DD days, "
                        f"got [{low!r}, {high!r}]"
                    )
                if first > last:
                    raise ValueError(f"data.bounds: {name!r} has min {first} above max {last}")
            elif name in (*self.numeric, self.target):
                if not (
                    isinstance(low, float) and isinstance(high, float) and math.isfinite(low) and math.isfinite(high)
                ):
                    raise ValueError(f"data.bounds: {name!r} bounds must be finite numbers, got [{low!r}, {high!r}]")
                if low > high:
                    raise ValueError(f"data.bounds: {name!r} has min {low} above max {high}")
            else:
                raise ValueError(f"data.bounds: {name!r} is not a numeric or date column or the target")
        for name in self.categories:
            if name not in self.categorical:
                raise ValueError(f"data.categories: {name!r} is not a categorical column")
        for name in self.dtypes:
            if name not in self.numeric:
                raise ValueError(
                    f"data.dtypes: {name!r} is not a numeric column (declare types of data.numeric's columns only: "
                    f"{self.numeric})"
                )
        return self

    def declared_dtype(self, name: str) -> Literal["int", "float"] | None:
        """A numeric column's declared type as the bundle names it (``int`` or ``float``), or None if undeclared."""
        return self.dtypes.get(name)


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


# The model's test RMSE must be at least this much (relatively) below the naive baseline's: 10%.
DEFAULT_BASELINE_MARGIN: Final = 0.1


class EvaluateConfig(_Strict):
    """The quality gate of training: the model's test RMSE must be at most ``(1 - baseline_margin)`` times the
    naive baseline's (always predicting the training mean). RMSE ratio ``r`` is about ``sqrt(1 - R2)``: the default
    0.1 asks for R2 of about 0.19 or more, which any model that learnt something real passes, and which a model
    of a target independent of the features (ratio about 1) fails."""

    baseline_margin: float = Field(DEFAULT_BASELINE_MARGIN, ge=0, lt=1)


class PipelineConfig(_Strict):
    """``name`` is the model's name, recorded in the bundle (the server's default ``MODEL_NAME`` when it serves the
    bundle from ``BUNDLE_DIR``); unset, the target column's name."""

    name: str | None = Field(None, pattern=MODEL_NAME.pattern)
    data: DataConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @property
    def bundle_name(self) -> str:
        """``name``, or the target column's name made fit for one (other characters become "-")."""
        if self.name:
            return self.name
        cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", self.data.target).strip("-._")[:100]
        return cleaned or "model"


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
