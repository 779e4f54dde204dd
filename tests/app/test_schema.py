"""The request models built from a bundle's feature schema: what they accept, refuse, and how they say so."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.contract.bundle import DATE_FORMAT, BundleError, Feature, Metadata, read_metadata
from app.contract.features import FEW_ROWS
from app.contract.serving_form import probe_columns
from app.model.schema import BATCH_MODEL, RECORD_MODEL, RecordSchema, RequestError, day_pattern
from orchestration.pipeline import TrainResult
from tests.harness.serving import metadata_for, records

MAX_RECORDS = 5
OLD_BUNDLE = Path(__file__).parent / "fixtures" / "bundle-written-as-app-features"


@pytest.fixture(scope="module")
def metadata(trained: TrainResult) -> Metadata:
    return trained.metadata


@pytest.fixture(scope="module")
def schema(metadata: Metadata) -> RecordSchema:
    return RecordSchema.from_metadata(metadata, MAX_RECORDS)


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def refusal(schema: RecordSchema, record: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        schema.parse_record(body(record) if not isinstance(record, bytes) else record)
    return caught.value


def assert_refused(schema: RecordSchema, record: Any, field: str, error_type: str | None = None) -> RequestError:
    """A 422 whose message and errors name ``field`` (and, if given, have ``error_type``)."""
    error = refusal(schema, record)
    assert error.status == 422
    assert field in str(error)
    named = [e for e in error.errors if e["field"] == field]
    assert named, error.errors
    assert all(e["msg"].startswith(f"{field}:") for e in named)
    if error_type is not None:
        assert error_type in {e["type"] for e in named}, named
    return error


def feature(metadata: Metadata, kind: str) -> Feature:
    return next(f for f in metadata.features if f.kind == kind)


# --- the record model ---


def test_the_example_parses_to_values_in_feature_order(schema: RecordSchema, metadata: Metadata) -> None:
    names = metadata.feature_names()
    assert schema.features == tuple(names) and schema.max_records == MAX_RECORDS
    shuffled = {name: metadata.example[name] for name in reversed(names)}  # key order must not matter
    assert schema.parse_record(body(shuffled)) == tuple(metadata.example[name] for name in names)
    assert schema.record_model.__name__ == RECORD_MODEL and schema.batch_model.__name__ == BATCH_MODEL


def test_every_feature_is_required(schema: RecordSchema, metadata: Metadata) -> None:
    json_schema = schema.record_model.model_json_schema()
    assert set(json_schema["required"]) == set(metadata.feature_names()) == set(json_schema["properties"])
    for name in metadata.feature_names():
        missing = {k: v for k, v in metadata.example.items() if k != name}
        assert_refused(schema, missing, name, "missing")
    assert len(refusal(schema, {}).errors) == len(metadata.features)  # one message per missing field


def test_unknown_fields_are_refused(schema: RecordSchema, metadata: Metadata) -> None:
    assert_refused(schema, {**metadata.example, "price": 123.0}, "price", "extra_forbidden")
    # the model's Python attribute names (f0, f1, ...) are not accepted in place of the features' names
    first = metadata.feature_names()[0]
    by_attribute = {("f0" if k == first else k): v for k, v in metadata.example.items()}
    error = assert_refused(schema, by_attribute, "f0", "extra_forbidden")
    assert first in {e["field"] for e in error.errors}


def test_a_categorical_enum_is_exactly_the_bundle_categories(schema: RecordSchema, metadata: Metadata) -> None:
    properties = schema.record_model.model_json_schema()["properties"]
    categorical = [f for f in metadata.features if f.kind == "categorical"]
    assert categorical
    for feature in categorical:
        assert feature.categories
        assert properties[feature.name]["enum"] == feature.categories
        for category in feature.categories:
            assert schema.parse_record(body({**metadata.example, feature.name: category}))
        for wrong in ("Atlantis", "", feature.categories[0].lower() + "x", 1):
            assert_refused(schema, {**metadata.example, feature.name: wrong}, feature.name)


def test_numeric_bounds_come_from_the_metadata(schema: RecordSchema, metadata: Metadata) -> None:
    properties = schema.record_model.model_json_schema()["properties"]
    numeric = [f for f in metadata.features if f.kind == "numeric"]
    assert numeric
    for feature in numeric:
        assert isinstance(feature.minimum, float) and isinstance(feature.maximum, float)
        assert properties[feature.name]["minimum"] == feature.minimum
        assert properties[feature.name]["maximum"] == feature.maximum
        for inside in (feature.minimum, feature.maximum):
            values = schema.parse_record(body({**metadata.example, feature.name: inside}))
            assert values[schema.features.index(feature.name)] == inside
        just_above = float(np.nextafter(feature.maximum, np.inf))
        just_below = float(np.nextafter(feature.minimum, -np.inf))
        assert_refused(schema, {**metadata.example, feature.name: just_above}, feature.name, "less_than_equal")
        assert_refused(schema, {**metadata.example, feature.name: just_below}, feature.name, "greater_than_equal")
        assert_refused(schema, {**metadata.example, feature.name: 1e12}, feature.name)


def test_numeric_types_are_strict(schema: RecordSchema, metadata: Metadata) -> None:
    name = feature(metadata, "numeric").name
    value = metadata.example[name]
    assert_refused(schema, {**metadata.example, name: str(value)}, name, "float_type")
    assert_refused(schema, {**metadata.example, name: True}, name, "float_type")
    assert_refused(schema, {**metadata.example, name: None}, name, "float_type")
    assert_refused(schema, {**metadata.example, name: [value]}, name, "float_type")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinities_are_refused(schema: RecordSchema, metadata: Metadata, literal: bytes) -> None:
    name = feature(metadata, "numeric").name
    marker = "__number__"
    raw = body({**metadata.example, name: marker}).replace(json.dumps(marker).encode(), literal)
    assert literal in raw
    error = assert_refused(schema, raw, name, "finite_number")  # valid JSON to the parser, refused by the field
    assert "finite" in str(error)


@pytest.mark.parametrize(
    "day",
    ["2023-02-30", "2023-13-01", "0000-01-01", "2023/01/01", "2023-1-1", "01-01-2023", "2023-01-01T00:00", ""],
)
def test_impossible_or_malformed_dates_are_refused(schema: RecordSchema, metadata: Metadata, day: str) -> None:
    name = feature(metadata, "date").name
    assert_refused(schema, {**metadata.example, name: day}, name)


def test_a_date_is_a_string(schema: RecordSchema, metadata: Metadata) -> None:
    name = feature(metadata, "date").name
    assert_refused(schema, {**metadata.example, name: 20230101}, name, "string_type")


def test_a_date_within_its_limits_is_accepted_beyond_the_training_range(
    schema: RecordSchema, metadata: Metadata
) -> None:
    date_feature = feature(metadata, "date")
    assert (date_feature.minimum, date_feature.maximum) == ("2019-01-01", "2030-12-31")  # params.yaml's bound
    assert date_feature.observed_minimum is not None and date_feature.observed_maximum is not None
    index = schema.features.index(date_feature.name)
    days = (date_feature.minimum, date_feature.maximum, "2019-01-02", "2024-02-29", "2030-12-30")
    for day in (*days, date_feature.observed_minimum, date_feature.observed_maximum):
        assert schema.parse_record(body({**metadata.example, date_feature.name: day}))[index] == day


@pytest.mark.parametrize(
    ("day", "error_type"),
    [("2031-01-01", "less_than_equal"), ("9999-12-31", "less_than_equal"), ("2018-12-31", "greater_than_equal"),
     ("0001-01-01", "greater_than_equal")],
)  # fmt: skip
def test_a_date_outside_its_limits_is_a_422_naming_the_field_and_the_range(
    schema: RecordSchema, metadata: Metadata, day: str, error_type: str
) -> None:
    name = feature(metadata, "date").name
    error = assert_refused(schema, {**metadata.example, name: day}, name, error_type)
    assert error.errors[0]["msg"] == f"{name}: Input should be a day from 2019-01-01 to 2030-12-31"
    with pytest.raises(RequestError) as batch:
        schema.parse_batch(body({"records": [metadata.example, {**metadata.example, name: day}]}))
    assert batch.value.errors[0]["loc"] == ["records", 1, name]


def test_the_openapi_schema_states_the_limits_and_apart_the_range_seen_in_training(
    schema: RecordSchema, metadata: Metadata
) -> None:
    properties = schema.record_model.model_json_schema()["properties"]
    for item in metadata.features:
        if item.kind == "categorical":
            continue
        described = properties[item.name]["description"]
        limits, seen = described.split("; seen in training ")
        assert limits.endswith(f"from {item.minimum} to {item.maximum}"), described
        assert seen == f"from {item.observed_minimum} to {item.observed_maximum} (not a limit)", described
    day = properties[feature(metadata, "date").name]
    assert day["format"] == "date" and day["pattern"] == day_pattern("2019-01-01", "2030-12-31")
    assert re.fullmatch(day["pattern"], "2030-12-31") and not re.fullmatch(day["pattern"], "9999-12-31")


WINDOWS = [
    ("2019-01-01", "2030-12-31"),
    ("2019-09-26", "2023-07-24"),
    ("2024-02-29", "2024-02-29"),
    ("0001-01-01", "9999-12-31"),
    ("1999-12-31", "2000-01-01"),
    (None, "2000-06-15"),
    ("1987-03-09", None),
]


@pytest.mark.parametrize(("first", "last"), WINDOWS)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(day=st.one_of(st.dates(), st.dates(date(1998, 1, 1), date(2032, 1, 1))))
def test_the_day_pattern_matches_exactly_the_days_within_the_limits(
    first: str | None, last: str | None, day: date
) -> None:
    text = day.isoformat()
    within = (first is None or first <= text) and (last is None or text <= last)
    assert bool(re.fullmatch(day_pattern(first, last), text)) is within
    for edge in (first, last):  # the limits themselves are included
        assert edge is None or re.fullmatch(day_pattern(first, last), edge)


def test_malformed_json_is_a_400(schema: RecordSchema, metadata: Metadata) -> None:
    whole = body(metadata.example)
    for broken in (b"{", whole[:-1], b"", b"not json", whole + b"}"):
        error = refusal(schema, broken)
        assert error.status == 400, broken
        assert error.errors[0]["type"] == "json_invalid" and "malformed JSON" in str(error)
        with pytest.raises(RequestError) as batch:
            schema.parse_batch(broken)
        assert batch.value.status == 400


def test_a_body_that_is_not_an_object_is_a_422(schema: RecordSchema, metadata: Metadata) -> None:
    for value in ([metadata.example], "record", 1, None):
        assert refusal(schema, value).status == 422


# --- batches ---


def test_a_batch_parses_each_record_in_feature_order(schema: RecordSchema, metadata: Metadata) -> None:
    rows = records(metadata, MAX_RECORDS, seed=3)
    parsed = schema.parse_batch(body({"records": rows}))
    assert parsed == [tuple(row[name] for name in metadata.feature_names()) for row in rows]


def test_more_than_max_records_is_a_422(schema: RecordSchema, metadata: Metadata) -> None:
    assert len(schema.parse_batch(body({"records": [metadata.example] * MAX_RECORDS}))) == MAX_RECORDS
    with pytest.raises(RequestError) as caught:
        schema.parse_batch(body({"records": [metadata.example] * (MAX_RECORDS + 1)}))
    assert caught.value.status == 422
    assert str(MAX_RECORDS) in str(caught.value) and "MAX_BATCH_RECORDS" in str(caught.value)


def test_an_empty_or_bad_batch_is_a_422_naming_the_record(schema: RecordSchema, metadata: Metadata) -> None:
    with pytest.raises(RequestError) as empty:
        schema.parse_batch(body({"records": []}))
    assert empty.value.status == 422 and "records" in str(empty.value)
    name = feature(metadata, "numeric").name
    bad = [metadata.example, {**metadata.example, name: "1.0"}]
    with pytest.raises(RequestError) as caught:
        schema.parse_batch(body({"records": bad}))
    assert caught.value.status == 422
    assert caught.value.errors[0]["loc"] == ["records", 1, name] and caught.value.errors[0]["field"] == name
    assert str(caught.value).startswith(f"records[1].{name}:")
    with pytest.raises(RequestError) as extra:
        schema.parse_batch(body({"records": [metadata.example], "more": 1}))
    assert extra.value.status == 422 and "more" in str(extra.value)


def test_columns_turn_rows_into_the_column_mapping(schema: RecordSchema, metadata: Metadata) -> None:
    rows = schema.parse_batch(body({"records": records(metadata, MAX_RECORDS, seed=4)}))
    assert schema.columns(rows) == probe_columns(metadata, MAX_RECORDS, seed=4)  # exactly what the predictor takes
    one = schema.columns([schema.parse_record(body(metadata.example))])
    assert one == {name: [value] for name, value in metadata.example.items()}


def test_columns_keep_row_order_and_feature_names() -> None:
    features = [
        Feature(name="b", kind="numeric", dtype="float"),
        Feature(name="a", kind="categorical", dtype="str", categories=["x", "y"]),
    ]
    schema = RecordSchema.from_metadata(metadata_for(features, {"b": 1.0, "a": "x"}), 10)
    assert schema.columns([(1.0, "x"), (2.0, "y"), (3.0, "x")]) == {"b": [1.0, 2.0, 3.0], "a": ["x", "y", "x"]}
    assert list(schema.columns([(1.0, "x")])) == ["b", "a"]


# --- other bundles: the models follow the feature schema ---


def test_an_integral_feature_takes_only_whole_numbers() -> None:
    features = [Feature(name="stops", kind="numeric", dtype="int", minimum=0, maximum=3)]
    schema = RecordSchema.from_metadata(metadata_for(features, {"stops": 1}), 10)
    assert schema.parse_record(b'{"stops": 3}') == (3,)
    assert type(schema.parse_record(b'{"stops": 0}')[0]) is int
    # a whole-number float (as pandas writes integers) is the integer it is
    assert schema.parse_record(b'{"stops": 2.0}') == (2,) and type(schema.parse_record(b'{"stops": 2.0}')[0]) is int
    for wrong in (b"1.5", b"2.000001", b'"1"', b"true", b"4", b"4.0", b"-1"):
        assert_refused(schema, b'{"stops": ' + wrong + b"}", "stops")


def test_any_column_name_works() -> None:
    names = ["f1", "with space", "_private", "f0", "records"]
    features = [Feature(name=name, kind="numeric", dtype="float", minimum=0.0, maximum=10.0) for name in names]
    example = {name: float(i) for i, name in enumerate(names)}
    schema = RecordSchema.from_metadata(metadata_for(features, example), 10)
    assert schema.parse_record(body(example)) == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert schema.parse_batch(body({"records": [example]})) == [(0.0, 1.0, 2.0, 3.0, 4.0)]
    assert_refused(schema, {**example, "with space": 11.0}, "with space")


def test_unbounded_numerics_still_refuse_non_finite_values() -> None:
    features = [Feature(name="x", kind="numeric", dtype="float")]
    schema = RecordSchema.from_metadata(metadata_for(features, {"x": 0.0}), 10)
    assert schema.parse_record(b'{"x": -1e300}') == (-1e300,)
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        assert_refused(schema, b'{"x": ' + literal + b"}", "x", "finite_number")


@pytest.mark.parametrize("categories", [None, []])
def test_a_categorical_feature_without_categories_is_a_bundle_error(categories: list[str] | None) -> None:
    features = [Feature(name="agency", kind="categorical", dtype="str", categories=categories)]
    with pytest.raises(BundleError, match="agency"):
        RecordSchema.from_metadata(metadata_for(features, {"agency": "x"}), 10)


@pytest.mark.parametrize("date_format", ["%d/%m/%Y", "%Y%m%d", "%Y-%m-%dT%H:%M:%S"])
def test_a_date_in_another_format_is_a_bundle_error(date_format: str) -> None:
    features = [Feature(name="day", kind="date", dtype="date", format=date_format)]
    with pytest.raises(BundleError, match="day") as caught:
        RecordSchema.from_metadata(metadata_for(features, {"day": "01/01/2023"}), 10)
    assert date_format in str(caught.value)


@pytest.mark.parametrize("date_format", [None, DATE_FORMAT])
def test_a_date_in_the_served_format_is_accepted(date_format: str | None) -> None:
    features = [Feature(name="day", kind="date", dtype="date", format=date_format)]
    schema = RecordSchema.from_metadata(metadata_for(features, {"day": "2023-01-01"}), 10)
    assert schema.parse_record(b'{"day": "2023-01-01"}') == ("2023-01-01",)
    assert_refused(schema, b'{"day": "2023-02-30"}', "day")


# --- limits and the range seen in training ---


def test_an_unbounded_numeric_takes_any_finite_number_and_describes_the_training_range() -> None:
    features = [Feature(name="x", kind="numeric", dtype="float", observed_minimum=1.5, observed_maximum=9.0)]
    schema = RecordSchema.from_metadata(metadata_for(features, {"x": 2.0}), 10)
    for value in (-1e300, 0.0, 1.5, 9.0, 1e300):
        assert schema.parse_record(body({"x": value})) == (value,)
    described = schema.record_model.model_json_schema()["properties"]["x"]
    assert "minimum" not in described and "maximum" not in described
    assert described["description"] == "float, any finite number; seen in training from 1.5 to 9.0 (not a limit)"


def test_limits_are_enforced_and_the_training_range_is_not() -> None:
    features = [
        Feature(name="x", kind="numeric", dtype="int", minimum=0, maximum=10, observed_minimum=2, observed_maximum=5),
        Feature(
            name="day", kind="date", dtype="date", format=DATE_FORMAT, minimum="2020-01-01", maximum="2020-12-31",
            observed_minimum="2020-03-01", observed_maximum="2020-06-30",
        ),
    ]  # fmt: skip
    schema = RecordSchema.from_metadata(metadata_for(features, {"x": 3, "day": "2020-04-01"}), 10)
    assert schema.parse_record(body({"x": 10, "day": "2020-12-31"})) == (10, "2020-12-31")
    assert schema.parse_record(body({"x": 0, "day": "2020-01-01"})) == (0, "2020-01-01")
    assert_refused(schema, {"x": 11, "day": "2020-04-01"}, "x", "less_than_equal")
    assert_refused(schema, {"x": 3, "day": "2021-01-01"}, "day", "less_than_equal")
    assert_refused(schema, {"x": 3, "day": "2019-12-31"}, "day", "greater_than_equal")
    described = schema.record_model.model_json_schema()["properties"]
    assert described["x"]["description"] == (
        "int from 0 to 10; seen in training from 2 to 5 (not a limit) (a whole number: 3 or 3.0)"
    )
    assert described["day"]["description"] == (
        "ISO date (YYYY-MM-DD) from 2020-01-01 to 2020-12-31; seen in training from 2020-03-01 to 2020-06-30 "
        "(not a limit)"
    )


def test_a_date_without_limits_takes_any_real_day() -> None:
    features = [
        Feature(name="day", kind="date", dtype="date", observed_minimum="2020-03-01", observed_maximum="2020-06-30")
    ]
    schema = RecordSchema.from_metadata(metadata_for(features, {"day": "2020-04-01"}), 10)
    for day in ("0001-01-01", "2020-02-29", "9999-12-31"):
        assert schema.parse_record(body({"day": day})) == (day,)
    described = schema.record_model.model_json_schema()["properties"]["day"]
    assert described["pattern"] == r"^\d{4}-\d{2}-\d{2}$"
    assert described["description"].startswith("ISO date (YYYY-MM-DD), any real day; seen in training from 2020-03-01")


def test_a_date_limit_that_is_not_a_day_is_a_bundle_error() -> None:
    features = [Feature(name="day", kind="date", dtype="date", minimum="2020-01-01", maximum=2020.0,
                        observed_minimum="2020-03-01", observed_maximum="2020-06-30")]  # fmt: skip
    with pytest.raises(BundleError, match=re.escape("'day' has limit 2020.0, not a YYYY-MM-DD day")):
        RecordSchema.from_metadata(metadata_for(features, {"day": "2020-04-01"}), 10)


def test_an_old_bundle_keeps_its_limits_and_its_dates_stay_unchecked() -> None:
    """A bundle written before the observed range was recorded apart: numeric minimum/maximum were limits, a
    date's were the range seen in training and never enforced."""
    metadata = read_metadata(OLD_BUNDLE)
    assert not any(f.records_observed for f in metadata.features)
    schema = RecordSchema.from_metadata(metadata, 10)
    example = metadata.example
    assert schema.parse_record(body({**example, "time": 24.0, "distance": 1.0}))
    assert_refused(schema, {**example, "time": 24.01}, "time", "less_than_equal")
    assert_refused(schema, {**example, "distance": 0.5}, "distance", "greater_than_equal")
    for day in ("1900-01-01", "9999-12-31"):  # as before: only a real day is required
        assert schema.parse_record(body({**example, "date": day}))
    properties = schema.record_model.model_json_schema()["properties"]
    assert properties["time"]["description"] == "float from 0.1 to 24.0"  # whether it was seen or configured: unknown
    assert properties["date"]["description"] == (
        "ISO date (YYYY-MM-DD), any real day; seen in training from 2019-09-27 to 2023-07-24 (not a limit)"
    )
    rows = [schema.parse_record(body({**example, "date": day})) for day in ("2019-09-26", "2020-01-01", "2024-01-01")]
    assert schema.outside_training(schema.columns(rows)) == {"date": 2}  # its numeric range is no training range


def test_outside_training_counts_values_beyond_the_range_seen_in_training() -> None:
    features = [
        Feature(name="x", kind="numeric", dtype="float", observed_minimum=1.0, observed_maximum=2.0),
        Feature(name="c", kind="categorical", dtype="str", categories=["a", "b"]),
        Feature(name="d", kind="date", dtype="date", observed_minimum="2020-01-31", observed_maximum="2020-03-01"),
        Feature(name="n", kind="numeric", dtype="int", minimum=0, maximum=9, observed_minimum=3, observed_maximum=3),
        Feature(name="u", kind="numeric", dtype="float"),  # no range recorded: nothing to count against
    ]
    schema = RecordSchema.from_metadata(metadata_for(features, {"x": 1.5, "c": "a", "d": "2020-02-01", "n": 3,
                                                                  "u": 0.0}), 10)  # fmt: skip
    rows = [
        (1.0, "a", "2020-01-31", 3, 0.0),  # both ends of each range are inside
        (2.0, "b", "2020-03-01", 3, 1e9),
        (0.5, "a", "2020-01-30", 0, 0.0),  # below
        (2.5, "a", "2020-03-02", 9, 0.0),  # above
        (2.0000001, "b", "2021-01-01", 4, 0.0),
    ]
    assert schema.outside_training(schema.columns(rows)) == {"x": 3, "d": 3, "n": 3}
    assert schema.outside_training(schema.columns(rows[:2])) == {"x": 0, "d": 0, "n": 0}
    assert schema.outside_training(dict.fromkeys(schema.features, ())) == {"x": 0, "d": 0, "n": 0}
    # a few rows are compared one by one, more in bulk with numpy: the same counts either way
    few = rows * (FEW_ROWS // len(rows))
    assert len(few) <= FEW_ROWS < len(few + rows)
    assert schema.outside_training(schema.columns(few)) == {name: 3 * len(few) // 5 for name in "xdn"}
    assert schema.outside_training(schema.columns(few + rows)) == {name: 3 * len(few + rows) // 5 for name in "xdn"}


def test_outside_training_takes_a_one_sided_range() -> None:
    features = [Feature(name="x", kind="numeric", dtype="float", observed_maximum=2.0)]
    schema = RecordSchema.from_metadata(metadata_for(features, {"x": 1.0}), 10)
    assert schema.outside_training({"x": [-1e300, 2.0, 2.5]}) == {"x": 1}


@pytest.mark.parametrize("value", [10**400, -(10**400), 2**53 + 1])
def test_an_integral_feature_without_limits_takes_only_what_a_float64_holds_exactly(value: int) -> None:
    """``1`` and 400 zeros was a 500 (OverflowError) on every prediction route; now a 422 naming the field."""
    schema = RecordSchema.from_metadata(
        metadata_for([Feature(name="stops", kind="numeric", dtype="int")], {"stops": 1}), max_records=10
    )
    body = json.dumps({"stops": value}).encode()
    refusals: list[Callable[[], object]] = [
        lambda: schema.parse_record(body),
        lambda: schema.parse_batch(b'{"records": [' + body + b"]}"),
        lambda: schema.parse_columns({"stops": [value]}),
    ]
    for refuse in refusals:
        with pytest.raises(RequestError) as refused:
            refuse()
        assert refused.value.status == 422 and refused.value.errors[0]["field"] == "stops", refused.value.errors
    assert schema.parse_record(json.dumps({"stops": 2**53}).encode()) == (2**53,)


def test_a_refusal_lists_the_first_errors_and_counts_the_rest() -> None:
    features = [Feature(name=f"x{i}", kind="numeric", dtype="float") for i in range(5)]
    schema = RecordSchema.from_metadata(metadata_for(features, {f.name: 1.0 for f in features}), 100, max_errors=3)
    body = json.dumps({"records": [{f.name: "no" for f in features}] * 10}).encode()
    with pytest.raises(RequestError) as refused:
        schema.parse_batch(body)
    assert len(refused.value.errors) == 3 and refused.value.more == 47


def test_a_body_with_more_keys_or_values_than_its_route_can_take_is_refused_before_validation() -> None:
    schema = RecordSchema.from_metadata(metadata_for([Feature(name="x", kind="numeric", dtype="float")], {"x": 1.0}), 2)
    for body in (json.dumps({f"k{i}": 1 for i in range(50)}), json.dumps({"x": [1] * 50})):
        with pytest.raises(RequestError) as refused:
            schema.parse_record(body.encode())
        assert refused.value.errors[0]["type"] == "too_many_fields", refused.value.errors
    with pytest.raises(RequestError) as refused:
        schema.parse_batch(json.dumps({"records": [{"x": 1.0}] * 50}).encode())
    assert refused.value.errors[0]["type"] == "too_many_fields"
    assert schema.parse_batch(json.dumps({"records": [{"x": 1.0}] * 2}).encode()) == [(1.0,), (1.0,)]
