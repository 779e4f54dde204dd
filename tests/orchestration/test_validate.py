"""Each class of bad data is refused with a report naming the column, the rule and example rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from orchestration.config import load_config
from orchestration.data import generate
from orchestration.validate import DataValidationError, validate

CONFIG = load_config().data


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate(500, seed=5).astype({"date": "string"})


def refused(frame: pd.DataFrame) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        validate(frame, CONFIG)
    return info.value


def test_clean_data_passes(frame: pd.DataFrame) -> None:
    clean, report = validate(frame, CONFIG)
    assert report.ok and report.rows_out == len(clean) == 500 - sum(f.count for f in report.dropped)


def test_missing_column_lists_the_columns_the_file_has(frame: pd.DataFrame) -> None:
    error = refused(frame.drop(columns=["agency"]))
    assert [f.column for f in error.report.errors] == ["agency"]
    rule = error.report.errors[0].rule
    assert (
        rule.startswith("required column is missing")
        and "the file has: from_location, to_location, flight_type, time" in rule
    )


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("distance", "far", "not a number"),
        ("distance", None, "missing value"),
        ("distance", 99_999.0, "outside"),
        ("time", -1.0, "outside"),
        ("price", np.inf, "not finite"),
        ("price", None, "missing value"),
        ("agency", "Acme", "unknown category"),
        ("from_location", None, "missing value"),
        ("date", "26/09/2019", "not a YYYY-MM-DD date"),
        ("date", None, "missing value"),
        ("date", "2031-01-01", "outside"),
        ("date", "9999-12-31", "outside"),
        ("date", "2018-12-31", "outside"),
    ],
)
def test_bad_value_is_named(frame: pd.DataFrame, column: str, value: Any, rule: str) -> None:
    frame = frame.astype({column: "object"})
    frame.loc[[7, 42], column] = value
    error = refused(frame)
    finding = next(f for f in error.report.errors if f.column == column and f.rule.startswith(rule))
    assert finding.count == 2
    assert [row for row, _ in finding.examples] == [7, 42]
    assert column in str(error) and rule in str(error) and "row 7" in str(error)
    assert "row 0 is the first data row, line 2 of a CSV file" in str(error)  # how rows are counted
    if rule == "missing value":
        assert "drop or fill these rows" in str(error)  # what to do about it


def test_a_date_bound_is_checked_like_a_numeric_one(frame: pd.DataFrame) -> None:
    """Both ends included, the rule naming the configured window; the same for a numeric column."""
    assert CONFIG.date_bound("date") == ("2019-01-01", "2030-12-31")
    frame.loc[[3, 4], "date"] = ["2019-01-01", "2030-12-31"]
    frame.loc[[3, 4], "time"] = [0.1, 24.0]
    validate(frame, CONFIG)
    frame.loc[[5, 9], "date"] = ["2018-12-31", "2031-01-01"]
    frame.loc[[5], "time"] = 24.01
    findings = {f.column: f for f in refused(frame).report.errors}
    assert findings["date"].rule == "outside [2019-01-01, 2030-12-31]"
    assert findings["date"].examples == [(5, "2018-12-31"), (9, "2031-01-01")]
    assert findings["time"].rule == "outside [0.1, 24.0]" and findings["time"].examples == [(5, 24.01)]


def test_without_a_date_bound_any_real_day_is_taken(frame: pd.DataFrame) -> None:
    unbounded = CONFIG.model_copy(update={"bounds": {k: v for k, v in CONFIG.bounds.items() if k != "date"}})
    frame.loc[[5, 9], "date"] = ["1900-01-01", "9999-12-31"]
    clean, _ = validate(frame, unbounded)
    assert list(clean.loc[[5, 9], "date"]) == ["1900-01-01", "9999-12-31"]


def test_constant_target(frame: pd.DataFrame) -> None:
    frame["price"] = 100.0
    assert any(f.rule == "target is constant" for f in refused(frame).report.errors)


def test_too_few_rows(frame: pd.DataFrame) -> None:
    assert any("fewer than" in f.rule for f in refused(frame.head(10)).report.errors)


def test_duplicates_are_dropped_and_counted(frame: pd.DataFrame) -> None:
    doubled = pd.concat([frame, frame.iloc[:25]], ignore_index=True)
    clean, report = validate(doubled, CONFIG)
    dropped = sum(f.count for f in report.dropped)
    assert dropped >= 25 and len(clean) == len(doubled) - dropped == report.rows_out
    assert "duplicate" in report.format()


def test_duplicates_refused_when_configured(frame: pd.DataFrame) -> None:
    strict = CONFIG.model_copy(update={"drop_duplicates": False})
    with pytest.raises(DataValidationError, match="duplicate"):
        validate(pd.concat([frame, frame.iloc[:3]], ignore_index=True), strict)


def test_duplicates_are_whole_rows_of_the_file_not_of_the_configured_columns(frame: pd.DataFrame) -> None:
    """Rows alike in every configured column but told apart by another column of the file are all kept."""
    twins = pd.concat([frame, frame.iloc[:25]], ignore_index=True)
    twins["booking_id"] = range(len(twins))  # a column the config does not use: no row repeats another
    clean, report = validate(twins, CONFIG)
    assert report.dropped == [] and len(clean) == len(twins) == report.rows_out
    twins.loc[len(frame) :, "booking_id"] = range(25)  # now the last 25 rows repeat the first 25 exactly
    clean, report = validate(twins, CONFIG)
    assert sum(f.count for f in report.dropped) == 25 and "of the file" in report.format()
