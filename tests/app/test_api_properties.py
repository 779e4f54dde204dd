"""Property tests: records generated from the bundle's own schema. Valid ones always predict what the bundle
predicts; invalid ones always get a 4xx whose message names the field, never a 5xx; the batch path's quick
validation accepts exactly what the batch model accepts."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.contract.bundle import Bundle, Feature, load_bundle
from app.model.schema import RecordSchema
from tests.harness.serving import metadata_for, ready_client, settings_for

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def client(bundle_dir: Path) -> Iterator[TestClient]:
    with ready_client(settings_for(bundle_dir)) as client:
        yield client


def valid_value(feature: Feature) -> st.SearchStrategy[Any]:
    if feature.kind == "categorical":
        return st.sampled_from(feature.categories or [])
    if feature.kind == "date":  # within the limits when the bundle sets them, any day otherwise
        low_day = date.fromisoformat(str(feature.minimum)) if feature.minimum is not None else date(1, 1, 1)
        high_day = date.fromisoformat(str(feature.maximum)) if feature.maximum is not None else date(9999, 12, 31)
        return st.dates(min_value=low_day, max_value=high_day).map(date.isoformat)
    # within the limits when set; an unbounded side takes any finite number within a wide span
    low = float(feature.minimum) if feature.minimum is not None else -1e9
    high = float(feature.maximum) if feature.maximum is not None else 1e9
    if feature.dtype == "int":
        return st.integers(math.ceil(low), math.floor(high))
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def valid_record(features: list[Feature]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.name: valid_value(f) for f in features})


def is_iso_day(text: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def invalid_value(feature: Feature) -> st.SearchStrategy[Any]:
    """Values the schema must refuse for this feature: wrong type, out of range, unknown, non-finite."""
    wrong_type = st.one_of(
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(), st.integers(), max_size=1),
    )
    if feature.kind == "categorical":
        unknown = st.text(max_size=12).filter(lambda v: v not in (feature.categories or []))
        return st.one_of(wrong_type, unknown, st.integers(), st.floats(allow_nan=False))
    if feature.kind == "date":
        return st.one_of(wrong_type, st.integers(), st.text(max_size=12).filter(lambda v: not is_iso_day(v)))
    low, high = float(feature.minimum or 0), float(feature.maximum or 0)
    out_of_range = st.one_of(
        st.floats(min_value=high, exclude_min=True, allow_infinity=False),
        st.floats(max_value=low, exclude_max=True, allow_infinity=False),
    )
    non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
    numeric_text = st.floats(low, high, allow_nan=False).map(str)
    return st.one_of(wrong_type, out_of_range, non_finite, numeric_text)


@st.composite
def invalid_record(draw: st.DrawFn, features: list[Feature]) -> tuple[dict[str, Any], str]:
    """A valid record with exactly one field broken (changed, dropped, or an unknown one added)."""
    record = draw(valid_record(features))
    feature = draw(st.sampled_from(features))
    how = draw(st.sampled_from(["change", "drop", "add"]))
    if how == "drop":
        del record[feature.name]
        return record, feature.name
    if how == "add":
        extra = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in record))
        record[extra] = draw(st.integers())
        return record, extra
    record[feature.name] = draw(invalid_value(feature))
    return record, feature.name


def test_valid_records_always_predict_what_the_bundle_predicts(client: TestClient, bundle: Bundle) -> None:
    @PROPERTY_SETTINGS
    @given(record=valid_record(bundle.metadata.features))
    def check(record: dict[str, Any]) -> None:
        response = client.post("/predict", json=record)
        assert response.status_code == 200, response.text
        expected = bundle.predict({name: [value] for name, value in record.items()})[0]
        assert response.json()["prediction"] == expected

    check()


def test_invalid_records_are_4xx_naming_the_field(client: TestClient, bundle: Bundle) -> None:
    @PROPERTY_SETTINGS
    @given(broken=invalid_record(bundle.metadata.features))
    def check(broken: tuple[dict[str, Any], str]) -> None:
        record, field = broken
        body = json.dumps(record, allow_nan=True)  # NaN and Infinity as the tokens clients send
        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text
        assert any(error["msg"].startswith(f"{field}: ") for error in response.json()["detail"]), response.text

    check()


def test_invalid_records_in_a_batch_name_record_and_field(client: TestClient, bundle: Bundle) -> None:
    @PROPERTY_SETTINGS
    @given(good=valid_record(bundle.metadata.features), broken=invalid_record(bundle.metadata.features))
    def check(good: dict[str, Any], broken: tuple[dict[str, Any], str]) -> None:
        record, field = broken
        body = json.dumps({"records": [good, record]}, allow_nan=True)
        response = client.post("/predict/batch", content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text
        assert any(e["msg"].startswith(f"records[1].{field}: ") for e in response.json()["detail"]), response.text

    check()


def day_like(feature: Feature) -> st.SearchStrategy[str]:
    """Any real day (within the limits or not) and YYYY-MM-DD text that is no day (month 13, February 30, year 0)."""
    fake = st.builds("{:04d}-{:02d}-{:02d}".format, st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32))
    return st.one_of(st.dates().map(date.isoformat), fake)


@st.composite
def batch_records(draw: st.DrawFn, features: list[Feature]) -> list[dict[str, Any]]:
    """A few records, each valid, broken in one field, or with any day-like text in its date fields; keys shuffled."""
    batch = []
    for _ in range(draw(st.integers(1, 4))):
        record = draw(st.one_of(valid_record(features), invalid_record(features).map(lambda broken: broken[0])))
        for feature in features:
            if feature.kind == "date" and feature.name in record and draw(st.booleans()):
                record[feature.name] = draw(day_like(feature))
        keys = draw(st.permutations(list(record)))
        batch.append({key: record[key] for key in keys})
    return batch


def test_the_quick_batch_validation_accepts_what_the_batch_model_accepts_with_the_same_values(bundle: Bundle) -> None:
    schema = RecordSchema.from_metadata(bundle.metadata, 3)  # 4 records are one too many

    def by_model(validate: Any) -> list[tuple[Any, ...]] | None:
        try:
            return [tuple(record.__dict__.values()) for record in validate().records]
        except ValidationError:
            return None

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(batch=batch_records(bundle.metadata.features))
    def check(batch: list[dict[str, Any]]) -> None:
        body = json.dumps({"records": batch}, allow_nan=True).encode()
        validator = schema.batch_model.__pydantic_validator__
        for quick, expected in (
            (schema.quick_rows(body), by_model(lambda: validator.validate_json(body))),
            (schema.quick_rows({"records": batch}), by_model(lambda: validator.validate_python({"records": batch}))),
        ):
            assert quick == expected
            if quick is not None and expected is not None:  # the same values of the same types, in feature order
                assert [tuple(map(type, row)) for row in quick] == [tuple(map(type, row)) for row in expected]

    check()


@st.composite
def batch_columns(draw: st.DrawFn, features: list[Feature]) -> list[dict[str, Any]]:
    """A few complete records, as columns take them, each valid (an integral feature's values sometimes as whole
    floats); in half the batches, one value of one record replaced by one of ``invalid_value``'s (which an unbounded
    side may take) or, for a date, any day-like text."""
    batch = []
    for _ in range(draw(st.integers(1, 4))):
        record = draw(valid_record(features))
        for feature in features:
            if feature.dtype == "int" and draw(st.booleans()):
                record[feature.name] = float(record[feature.name])
        batch.append(record)
    if draw(st.booleans()):
        record, feature = draw(st.sampled_from(batch)), draw(st.sampled_from(features))
        other = day_like(feature) | invalid_value(feature) if feature.kind == "date" else invalid_value(feature)
        record[feature.name] = draw(other)
    return batch


INTEGRAL_FEATURES = [  # what the flight bundle lacks: integral features, with limits and without, and an unlimited day
    Feature(name="stops", kind="numeric", dtype="int", minimum=0, maximum=3),
    Feature(name="count", kind="numeric", dtype="int"),
    Feature(name="price", kind="numeric", dtype="float", minimum=-1.5),
    Feature(name="day", kind="date", dtype="date"),
]


@pytest.mark.parametrize("which", ["bundle", "integral"])
def test_the_columnar_quick_validation_accepts_what_the_records_accept_with_the_same_values(
    bundle: Bundle, which: str
) -> None:
    """``quick_columns`` (a list per column) against the record-dict path it stands in for (``quick_rows``, which
    accepts exactly what the batch model accepts): the same batches accepted, into the same values of the same
    types; whatever it refuses, the batch model refuses too."""
    if which == "bundle":
        metadata = bundle.metadata
    else:
        metadata = metadata_for(INTEGRAL_FEATURES, {"stops": 1, "count": 1, "price": 1.0, "day": "2020-01-01"})
    schema = RecordSchema.from_metadata(metadata, 4)
    names = metadata.feature_names()
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(batch=batch_columns(metadata.features))
    def check(batch: list[dict[str, Any]]) -> None:
        columns = {name: [record[name] for record in batch] for name in names}
        quick, expected = schema.quick_columns(columns), schema.quick_rows({"records": batch})
        assert quick == expected
        if quick is not None and expected is not None:
            assert [tuple(map(type, row)) for row in quick] == [tuple(map(type, row)) for row in expected]
            assert schema.parse_columns(columns) == expected
            outcomes["accepted"] += 1
        else:
            with pytest.raises(ValidationError):
                schema.batch_model.__pydantic_validator__.validate_python({"records": batch})
            outcomes["refused"] += 1

    check()
    assert min(outcomes.values()) >= 40, outcomes  # both sides of the rule were tried
