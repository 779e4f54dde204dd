"""Bounds and observed ranges: configured bounds are limits (numbers or days), the range seen in the training split is
recorded and never enforced unless ``enforce_observed_ranges`` asks for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from app.contract.bundle import Feature
from app.model.schema import RecordSchema, RequestError
from orchestration.config import ConfigError, DataConfig, load_config
from orchestration.data import generate
from orchestration.split import split
from orchestration.transform import feature_schema, fit_transformer
from orchestration.validate import validate
from tests.harness.serving import metadata_for

FLIGHTS = load_config().data
SPLIT = load_config().split
# Values inside the shipped bounds and outside any train split of the generated flights (which has no flight
# shorter than 0.8 h or longer than 4.4 h, nor a day outside 2019-09-26..2023-07-24).
OUTLIERS: tuple[dict[str, Any], ...] = (
    {"time": 23.5, "distance": 4999.0},
    {"time": 0.2, "date": "2019-01-02"},
    {"date": "2030-12-30"},
)


def data_config(**changes: Any) -> DataConfig:
    """The flight data config with some keys changed, validated as a params file would be."""
    return DataConfig.model_validate({**FLIGHTS.model_dump(), **changes})


def by_name(features: list[Feature]) -> dict[str, Feature]:
    return {f.name: f for f in features}


def schema_of(config: DataConfig, frame: pd.DataFrame) -> tuple[list[Feature], pd.DataFrame]:
    """The feature schema training writes for ``frame`` (validated and split as the pipeline does), and the train
    split."""
    clean, report = validate(frame, config)
    assert report.rows_out == len(frame)  # no row dropped: the split below is the pipeline's
    train = split(clean, SPLIT).train
    return feature_schema(train, config, fit_transformer(train, config)), train


def served(features: list[Feature]) -> RecordSchema:
    metadata = metadata_for(features, {})
    return RecordSchema.from_metadata(metadata, 10_000)


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    """Generated flights whose validation and test splits hold ``OUTLIERS``."""
    frame = generate(2000, seed=23).astype({"date": "string"})
    held_out = split(pd.DataFrame({"row": range(len(frame))}), SPLIT)  # the split depends on the row count only
    rows = [*held_out.validation["row"][:2], *held_out.test["row"][:1]]
    for row, values in zip(rows, OUTLIERS, strict=True):
        for name, value in values.items():
            frame.loc[row, name] = value
    return frame


# --- the config ---


def test_the_shipped_params_bound_the_date_and_do_not_enforce_observed_ranges() -> None:
    assert FLIGHTS.date_bound("date") == ("2019-01-01", "2030-12-31")
    assert FLIGHTS.numeric_bound("time") == (0.1, 24.0) and FLIGHTS.numeric_bound("date") is None
    assert FLIGHTS.enforce_observed_ranges is False


def test_generated_flights_fit_the_shipped_date_bound() -> None:
    from orchestration.data import FIRST_DAY, LAST_DAY

    first, last = FLIGHTS.date_bound("date") or ("", "")
    assert first <= str(FIRST_DAY) and str(LAST_DAY) <= last


def test_date_bounds_are_read_quoted_or_as_yaml_dates(tmp_path: Path) -> None:
    for written in ('["2020-01-01", "2020-12-31"]', "[2020-01-01, 2020-12-31]"):
        params = tmp_path / "params.yaml"
        params.write_text(f"data: {{target: y, numeric: [x], dates: [day], bounds: {{day: {written}, x: [0, 1]}}}}\n")
        data = load_config(params).data
        assert data.date_bound("day") == ("2020-01-01", "2020-12-31"), written
        assert data.numeric_bound("x") == (0.0, 1.0)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"date": ["2020-01-01", "soon"]}, "'date' is a date column: its bounds must be real YYYY-MM-DD days"),
        ({"date": ["2020-02-30", "2021-01-01"]}, "must be real YYYY-MM-DD days"),
        ({"date": ["2020-1-1", "2021-01-01"]}, "must be real YYYY-MM-DD days"),
        ({"date": ["20200101", "20210101"]}, "must be real YYYY-MM-DD days"),
        ({"date": [2020, 2021]}, "'date' is a date column"),
        ({"date": ["2021-01-01", "2020-01-01"]}, "'date' has min 2021-01-01 above max 2020-01-01"),
        ({"time": ["0.1", "24"]}, "'time' bounds must be finite numbers"),
        ({"time": ["2020-01-01", "2021-01-01"]}, "'time' bounds must be finite numbers"),
        ({"time": [0.0, float("inf")]}, "'time' bounds must be finite numbers"),
        ({"time": [float("nan"), 1.0]}, "'time' bounds must be finite numbers"),
        ({"time": [True, 2.0]}, "'time' has True, neither a number nor a YYYY-MM-DD day"),
        ({"time": [5.0, 1.0]}, "'time' has min 5.0 above max 1.0"),
        ({"agency": [0.0, 1.0]}, "'agency' is not a numeric or date column or the target"),
        ({"nowhere": [0.0, 1.0]}, "'nowhere' is not a numeric or date column or the target"),
    ],
)
def test_a_bad_bound_names_data_bounds_and_the_column(tmp_path: Path, bounds: dict[str, Any], message: str) -> None:
    raw = yaml.safe_load(Path("orchestration/params.yaml").read_text())
    raw["data"]["bounds"] = bounds
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_config(params)
    assert "data.bounds" in str(caught.value) and message in str(caught.value)


def test_a_datetime_is_not_a_day(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data: {target: y, dates: [day], bounds: {day: [2020-01-01 10:00:00, 2020-12-31]}}\n")
    with pytest.raises(ConfigError, match=r"data\.bounds: 'day' has .*neither a number nor a YYYY-MM-DD day"):
        load_config(params)


# --- the feature schema training writes ---


def test_limits_come_from_the_config_and_the_training_range_is_recorded(flights: pd.DataFrame) -> None:
    unbounded = data_config(bounds={"time": [0.1, 24.0]})
    features, train = schema_of(unbounded, flights)
    time, distance, day = (by_name(features)[name] for name in ("time", "distance", "date"))
    assert (time.minimum, time.maximum) == (0.1, 24.0)
    assert (time.observed_minimum, time.observed_maximum) == (train["time"].min(), train["time"].max())
    assert distance.minimum is None and distance.maximum is None
    assert (distance.observed_minimum, distance.observed_maximum) == (train["distance"].min(), train["distance"].max())
    assert day.minimum is None and day.maximum is None
    assert (day.observed_minimum, day.observed_maximum) == (train["date"].min(), train["date"].max())
    assert all(f.observed_minimum is None for f in features if f.kind == "categorical")

    bounded = data_config(bounds={"date": ["2019-01-01", "2030-12-31"]})
    day = by_name(schema_of(bounded, flights)[0])["date"]
    assert (day.minimum, day.maximum) == ("2019-01-01", "2030-12-31")
    assert (day.observed_minimum, day.observed_maximum) == (train["date"].min(), train["date"].max())


def test_enforce_observed_ranges_makes_the_training_range_the_limit_where_nothing_is_configured(
    flights: pd.DataFrame,
) -> None:
    config = data_config(bounds={"time": [0.1, 24.0]}, enforce_observed_ranges=True)
    features = by_name(schema_of(config, flights)[0])
    assert (features["time"].minimum, features["time"].maximum) == (0.1, 24.0)  # a configured bound wins
    for name in ("distance", "date"):
        feature = features[name]
        assert feature.observed_minimum is not None
        assert (feature.minimum, feature.maximum) == (feature.observed_minimum, feature.observed_maximum)


@pytest.mark.parametrize("bounds", ["none", "shipped"])
def test_rows_of_the_training_file_outside_the_train_split_are_served(flights: pd.DataFrame, bounds: str) -> None:
    """The reported bug: every row of the file training read is a valid request, wherever the split put it."""
    config = data_config(bounds={}) if bounds == "none" else FLIGHTS
    features, _ = schema_of(config, flights)
    schema = served(features)
    clean, _ = validate(flights, config)
    records = clean[list(schema.features)].to_dict(orient="records")
    rows = [schema.parse_record(json.dumps(record).encode()) for record in records]  # none is refused ...
    assert rows == [tuple(record.values()) for record in records]

    def outside(record: dict[Any, Any]) -> set[str]:
        """The features of ``record`` outside the range seen in the train split."""
        names: set[str] = set()
        for feature in features:
            low: Any = feature.observed_minimum
            high: Any = feature.observed_maximum
            if feature.kind != "categorical" and not low <= record[feature.name] <= high:
                names.add(feature.name)
        return names

    beyond = [record for record in records if outside(record)]
    assert len(beyond) == len(OUTLIERS)  # ... though validation and test rows lie outside the train split's range
    assert schema.outside_training(schema.columns(rows)) == {"time": 2, "distance": 1, "date": 2}

    enforced = served(schema_of(data_config(bounds={}, enforce_observed_ranges=True), flights)[0])
    for record in beyond:  # asked for: the old behaviour, now for dates too
        with pytest.raises(RequestError) as caught:
            enforced.parse_record(json.dumps(record).encode())
        assert caught.value.status == 422 and {e["field"] for e in caught.value.errors} == outside(record)
