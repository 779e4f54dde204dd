"""The request models built from a bundle's feature schema: what they accept, refuse, and how they say so."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from app.contract.bundle import DATE_FORMAT, BundleError, Feature, Metadata, Target
from app.predictor import probe_columns
from app.schema import BATCH_MODEL, RECORD_MODEL, RecordSchema, RequestError
from orchestration.pipeline import TrainResult
from tests.app.serving import records

MAX_RECORDS = 5


@pytest.fixture(scope="module")
def metadata(trained: TrainResult) -> Metadata:
    return trained.metadata


@pytest.fixture(scope="module")
def schema(metadata: Metadata) -> RecordSchema:
    return RecordSchema.from_metadata(metadata, MAX_RECORDS)


def small_metadata(features: list[Feature], example: dict[str, Any]) -> Metadata:
    """Metadata for a made-up bundle: only the feature schema and the example matter to the request models."""
    return Metadata(
        created_at="2024-01-01T00:00:00+00:00",
        features=features,
        target=Target(name="price", minimum=1.0, maximum=2.0, mean=1.5),
        metrics={},
        baseline_metrics={},
        data_hash="0" * 64,
        library_versions={},
        example=example,
        files={},
    )


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


def test_any_real_day_is_accepted_beyond_the_training_range(schema: RecordSchema, metadata: Metadata) -> None:
    date_feature = feature(metadata, "date")
    index = schema.features.index(date_feature.name)
    for day in (date_feature.minimum, date_feature.maximum, "1900-01-01", "2024-02-29", "2999-12-31"):
        assert schema.parse_record(body({**metadata.example, date_feature.name: day}))[index] == day
    described = schema.record_model.model_json_schema()["properties"][date_feature.name]
    assert described["format"] == "date" and str(date_feature.minimum) in described["description"]


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
    schema = RecordSchema.from_metadata(small_metadata(features, {"b": 1.0, "a": "x"}), 10)
    assert schema.columns([(1.0, "x"), (2.0, "y"), (3.0, "x")]) == {"b": [1.0, 2.0, 3.0], "a": ["x", "y", "x"]}
    assert list(schema.columns([(1.0, "x")])) == ["b", "a"]


# --- other bundles: the models follow the feature schema ---


def test_an_integral_feature_takes_only_whole_numbers() -> None:
    features = [Feature(name="stops", kind="numeric", dtype="int", minimum=0, maximum=3)]
    schema = RecordSchema.from_metadata(small_metadata(features, {"stops": 1}), 10)
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
    schema = RecordSchema.from_metadata(small_metadata(features, example), 10)
    assert schema.parse_record(body(example)) == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert schema.parse_batch(body({"records": [example]})) == [(0.0, 1.0, 2.0, 3.0, 4.0)]
    assert_refused(schema, {**example, "with space": 11.0}, "with space")


def test_unbounded_numerics_still_refuse_non_finite_values() -> None:
    features = [Feature(name="x", kind="numeric", dtype="float")]
    schema = RecordSchema.from_metadata(small_metadata(features, {"x": 0.0}), 10)
    assert schema.parse_record(b'{"x": -1e300}') == (-1e300,)
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        assert_refused(schema, b'{"x": ' + literal + b"}", "x", "finite_number")


@pytest.mark.parametrize("categories", [None, []])
def test_a_categorical_feature_without_categories_is_a_bundle_error(categories: list[str] | None) -> None:
    features = [Feature(name="agency", kind="categorical", dtype="str", categories=categories)]
    with pytest.raises(BundleError, match="agency"):
        RecordSchema.from_metadata(small_metadata(features, {"agency": "x"}), 10)


@pytest.mark.parametrize("date_format", ["%d/%m/%Y", "%Y%m%d", "%Y-%m-%dT%H:%M:%S"])
def test_a_date_in_another_format_is_a_bundle_error(date_format: str) -> None:
    features = [Feature(name="day", kind="date", dtype="date", format=date_format)]
    with pytest.raises(BundleError, match="day") as caught:
        RecordSchema.from_metadata(small_metadata(features, {"day": "01/01/2023"}), 10)
    assert date_format in str(caught.value)


@pytest.mark.parametrize("date_format", [None, DATE_FORMAT])
def test_a_date_in_the_served_format_is_accepted(date_format: str | None) -> None:
    features = [Feature(name="day", kind="date", dtype="date", format=date_format)]
    schema = RecordSchema.from_metadata(small_metadata(features, {"day": "2023-01-01"}), 10)
    assert schema.parse_record(b'{"day": "2023-01-01"}') == ("2023-01-01",)
    assert_refused(schema, b'{"day": "2023-02-30"}', "day")
