"""Request models built from the loaded bundle's feature schema, so validation and OpenAPI cannot drift
from the model.

Each feature becomes one required field: a numeric feature a strict ``float`` (or ``int`` for an integral one,
which also takes a float with no fractional part) within its limits if it has any, NaN and infinities refused; a
categorical one a string enum of its categories; a date an ISO ``YYYY-MM-DD`` string that must be a real day,
within its limits if it has any. Unknown fields are refused. A bundle trained on other data gets its own models
with no code change.

Limits are the feature's ``minimum``/``maximum`` (``Feature.limits``): configured bounds, or the training range
when training was asked to enforce it. The range seen in training is only described, and ``outside_training``
counts the values outside it for the metrics; it refuses nothing.

Validation runs in pydantic-core straight from the request bytes; failures become ``RequestError`` with one
message per field, each naming the field. A batch is validated first by a quicker equivalent of the batch model
(``RecordSchema.quick_rows``), and by the batch model itself only when that refuses it. Columns (the V2 tensors,
``RecordSchema.parse_columns``) are validated first one column at a time, each as one list of its feature's values
(``RecordSchema.quick_columns``); whatever that refuses goes through ``quick_rows`` and the batch model as records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    with_config,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from app.contract.bundle import DATE_FORMAT, BundleError, Feature, Limit, Metadata
from app.contract.encoding import FEW_ROWS

ISO_DATE_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}$"
# The request models' names: their OpenAPI components are ``#/components/schemas/<name>``.
RECORD_MODEL: Final = "PredictRequest"
BATCH_MODEL: Final = "PredictBatchRequest"


# An integral feature without limits still takes only the integers a float64 holds exactly: the model computes in
# float64, and a larger one (``1`` and 400 zeros) has no float at all.
LARGEST_WHOLE: Final = 2**53
# Keys, values and objects a body may hold beyond one per field of each record: the envelope's own.
ENVELOPE_KEYS: Final = 8


class RequestError(Exception):
    """A request body that cannot be predicted: ``status`` (400, 413, 415 or 422) and field-level ``errors``
    (at most ``listed`` of them; ``more`` says how many were left out)."""

    def __init__(self, status: int, errors: list[dict[str, Any]], more: int = 0) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors))
        self.status = status
        self.errors = errors
        self.more = more


def listed(details: Sequence[ErrorDetails], error_count: int, limit: int) -> tuple[Sequence[ErrorDetails], int]:
    """The first ``limit`` of a validation's errors, and how many more there were."""
    return details[:limit], max(error_count - limit, 0)


def check_size(body: bytes, keys: int, what: str, *, values: int | None = None) -> None:
    """Refuse a body holding more keys (colons) than ``keys`` or more values (commas) than ``values`` (default
    ``keys``), more than ``what`` can hold: validation's cost grows with each of them, so a body of a few megabytes
    could otherwise hold the event loop for seconds. Counting them is two scans of the bytes, a small part of
    validating them. A colon or comma inside a string counts too: the bounds allow for those in the categories and
    in the protocol's short texts. Empty objects and arrays take a comma each to repeat, and nesting is bounded by
    the JSON parser's depth limit."""
    values = keys if values is None else values
    if body.count(b":") > keys or body.count(b",") > values:
        message = f"body: more than {keys} fields or {values} values, more than {what} can hold"
        raise RequestError(422, [{"loc": ["body"], "msg": message, "type": "too_many_fields"}])


def _real_day(value: str) -> str:
    date.fromisoformat(value)  # ValueError (-> a 422 naming the field) for e.g. 2023-02-30
    return value


def _day_check(feature: Feature) -> Callable[[str], str]:
    """What a date feature's value must pass beyond its pattern: a real day, within the feature's limits if any."""
    first, last = (_limit_day(feature, limit) for limit in feature.limits())
    if first is None and last is None:
        return _real_day
    within = _day_within(first, last)

    def real_day_within(value: str) -> str:
        return within(_real_day(value))

    return real_day_within


def _day_within(first: str | None, last: str | None) -> Callable[[str], str]:
    """A check that an ISO day (fixed width, so text order is time order) lies within the limits."""
    allowed = _span(first, last)

    def within(value: str) -> str:
        if first is not None and value < first:
            raise PydanticCustomError("greater_than_equal", "Input should be a day {allowed}", {"allowed": allowed})
        if last is not None and value > last:
            raise PydanticCustomError("less_than_equal", "Input should be a day {allowed}", {"allowed": allowed})
        return value

    return within


def _span(low: Limit, high: Limit) -> str:
    if low is not None and high is not None:
        return f"from {low} to {high}"
    return f"from {low}" if low is not None else f"up to {high}"


def _digit_class(low: str, high: str) -> str:
    return low if low == high else f"[{low}-{high}]"


def _any_like(template: str) -> str:
    return "".join("-" if c == "-" else "[0-9]" for c in template)


def _alternatives(options: list[str]) -> str:
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def _at_least(low: str) -> str:
    """A regex for the strings shaped like ``low`` (digits and dashes) that sort at or after it."""
    if not low:
        return ""
    head, rest = low[0], low[1:]
    if head == "-":
        return "-" + _at_least(rest)
    options = [head + _at_least(rest)]
    if head != "9":
        options.append(_digit_class(str(int(head) + 1), "9") + _any_like(rest))
    return _alternatives(options)


def _at_most(high: str) -> str:
    """A regex for the strings shaped like ``high`` that sort at or before it."""
    if not high:
        return ""
    head, rest = high[0], high[1:]
    if head == "-":
        return "-" + _at_most(rest)
    options = [head + _at_most(rest)]
    if head != "0":
        options.append(_digit_class("0", str(int(head) - 1)) + _any_like(rest))
    return _alternatives(options)


def _between(low: str, high: str) -> str:
    """A regex for the strings shaped like ``low`` and ``high`` (``low <= high``) that sort between them."""
    if not low:
        return ""
    if low[0] == high[0]:
        return low[0] + _between(low[1:], high[1:])
    options = [low[0] + _at_least(low[1:])]
    if int(high[0]) - int(low[0]) > 1:
        options.append(_digit_class(str(int(low[0]) + 1), str(int(high[0]) - 1)) + _any_like(low[1:]))
    options.append(high[0] + _at_most(high[1:]))
    return _alternatives(options)


def day_pattern(first: str | None, last: str | None) -> str:
    """The JSON Schema ``pattern`` of the ISO days within the limits, so the OpenAPI document states them too
    (validation checks them with ``_day_within``, whose message names the range)."""
    if first is None and last is None:
        return ISO_DATE_PATTERN
    return "^" + _between(first or "0000-00-00", last or "9999-99-99") + "$"


def _whole_number(value: Any) -> Any:
    """A float with no fractional part (``2007.0``, as pandas writes integers) as the integer it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _described(feature: Feature, what: str, unlimited: str) -> str:
    """``what`` and its limits (``unlimited`` if none), then separately the range seen in training."""

    def shown(value: Limit) -> Limit:  # an integral feature's 3.0 is 3
        whole = feature.dtype == "int" and isinstance(value, float) and value.is_integer()
        return int(value) if whole and isinstance(value, float) else value

    low, high = (shown(v) for v in feature.limits())
    text = f"{what} {_span(low, high)}" if low is not None or high is not None else f"{what}, {unlimited}"
    seen_low, seen_high = (shown(v) for v in feature.training_range())
    if seen_low is not None or seen_high is not None:
        text += f"; seen in training {_span(seen_low, seen_high)} (not a limit)"
    return text


def _field(feature: Feature) -> tuple[Any, Any]:
    """The annotated type and ``Field`` of one feature; a date's ``_day_check`` is not in it (the record model adds
    it as a validator, ``RecordSchema``'s quick validators, of records and of columns, run it once per distinct day)."""
    common: dict[str, Any] = {"alias": feature.name, "title": feature.name}
    if feature.kind == "numeric":
        minimum, maximum = feature.limits()
        low = float(minimum) if isinstance(minimum, int | float) else None
        high = float(maximum) if isinstance(maximum, int | float) else None
        described = _described(feature, feature.dtype, "any finite number")
        numeric: Any = float
        if feature.dtype == "int":
            described += " (a whole number: 3 or 3.0)"
            numeric = Annotated[int, BeforeValidator(_whole_number)]
            low = -LARGEST_WHOLE if low is None else low
            high = LARGEST_WHOLE if high is None else high
        return numeric, Field(..., strict=True, allow_inf_nan=False, ge=low, le=high, description=described, **common)
    if feature.kind == "categorical":
        if not feature.categories:
            raise BundleError(f"categorical feature {feature.name!r} lists no categories")
        return Literal[tuple(feature.categories)], Field(..., description="one of the training categories", **common)
    if feature.format not in (None, DATE_FORMAT):
        raise BundleError(f"date feature {feature.name!r} has format {feature.format!r}; only {DATE_FORMAT} is served")
    first, last = (_limit_day(feature, limit) for limit in feature.limits())
    return (
        str,
        Field(
            ...,
            strict=True,
            pattern=ISO_DATE_PATTERN,
            description=_described(feature, "ISO date (YYYY-MM-DD)", "any real day"),
            json_schema_extra={"format": "date", "pattern": day_pattern(first, last)},
            **common,
        ),
    )


def _column_adapter(annotation: Any, info: FieldInfo) -> TypeAdapter[list[Any]]:
    """A validator of a list of one feature's values, each by the rules ``_field`` makes: ``annotation`` with the
    ``Field``'s constraints (strictness, limits, pattern), without its field-only parts (alias, title, description),
    which mean nothing on a list's item."""
    item = Annotated[(annotation, *info.metadata)] if info.metadata else annotation
    column: Any = list[item]  # type: ignore[valid-type]
    return TypeAdapter(column)


def _limit_day(feature: Feature, limit: Limit) -> str | None:
    """A date limit as the ISO day it must be (a bundle naming anything else cannot be served)."""
    if limit is None:
        return None
    if not isinstance(limit, str) or not _is_day(limit):
        raise BundleError(f"date feature {feature.name!r} has limit {limit!r}, not a YYYY-MM-DD day")
    return limit


def _is_day(text: str) -> bool:
    if len(text) != len("YYYY-MM-DD") or text[4] != "-" or text[7] != "-":
        return False
    try:
        return date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


@dataclass(frozen=True)
class RecordSchema:
    """The request models for one bundle and the conversions the prediction path needs."""

    features: tuple[str, ...]
    record_model: type[BaseModel]
    batch_model: type[BaseModel]
    max_records: int
    max_errors: int  # field errors a refusal lists (MAX_LISTED_ERRORS)
    # Keys, objects or values a body may hold (``check_size``): a record's, a batch's.
    record_keys: int
    batch_keys: int
    # The batch model's rules with each record a plain dict and no day checked (``parse_batch``), then the day checks
    # as (position in a row, check).
    quick_batch: TypeAdapter[Any]
    day_checks: tuple[tuple[int, Callable[[str], str]], ...]
    # One per feature, in feature order: a list of the feature's values, by the same rules, no day checked
    # (``quick_columns``).
    column_adapters: tuple[TypeAdapter[list[Any]], ...]
    # Numeric and date features whose range seen in training the bundle records: name -> (kind, low, high).
    training_ranges: Mapping[str, tuple[str, Limit, Limit]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: Metadata, max_records: int, max_errors: int = 20) -> RecordSchema:
        """Models named ``RECORD_MODEL`` and ``BATCH_MODEL`` with the bundle's example."""
        checks = {feature.name: _day_check(feature) for feature in metadata.features if feature.kind == "date"}
        unchecked = {feature.name: _field(feature) for feature in metadata.features}
        # Python attribute names f0, f1, ... so any column name (spaces, leading underscores) is a valid alias.
        fields: dict[str, Any] = {}
        for i, (name, (annotation, info)) in enumerate(unchecked.items()):
            checked = Annotated[annotation, AfterValidator(checks[name])] if name in checks else annotation
            fields[f"f{i}"] = (checked, info)
        record_model: type[BaseModel] = create_model(
            RECORD_MODEL,
            __config__=ConfigDict(
                extra="forbid",
                populate_by_name=False,
                json_schema_extra={"examples": [metadata.example]},
            ),
            **fields,
        )
        batch_model: type[BaseModel] = create_model(
            BATCH_MODEL,
            __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [{"records": [metadata.example]}]}),
            records=(list[record_model], Field(..., min_length=1, max_length=max_records)),
        )
        # the same fields on plain dicts, days unchecked; built from the bundle, which a static checker cannot see
        typed_dict: Any = TypedDict
        values = {name: Annotated[annotation, info] for name, (annotation, info) in unchecked.items()}
        quick_record = with_config(ConfigDict(extra="forbid"))(typed_dict(f"{RECORD_MODEL}Values", values))
        records: Any = Annotated[list[quick_record], Field(min_length=1, max_length=max_records)]  # type: ignore[valid-type]
        quick_batch = with_config(ConfigDict(extra="forbid"))(typed_dict(f"{BATCH_MODEL}Values", {"records": records}))
        column_adapters = tuple(_column_adapter(*unchecked[name]) for name in metadata.feature_names())
        positions = {name: i for i, name in enumerate(metadata.feature_names())}
        day_checks = tuple((positions[name], check) for name, check in checks.items())
        ranges = {
            feature.name: (feature.kind, *feature.training_range())
            for feature in metadata.features
            if feature.kind != "categorical" and feature.training_range() != (None, None)
        }
        separators = sum(  # the most colons or commas a valid value of each feature holds
            max((category.count(":") + category.count(",") for category in feature.categories or ()), default=0)
            for feature in metadata.features
        )
        record_keys = len(metadata.features) + separators + ENVELOPE_KEYS
        return cls(
            tuple(metadata.feature_names()),
            record_model,
            batch_model,
            max_records,
            max_errors,
            record_keys,
            max_records * (len(metadata.features) + separators) + ENVELOPE_KEYS,
            TypeAdapter(quick_batch),
            day_checks,
            column_adapters,
            ranges,
        )

    def parse_record(self, body: bytes) -> tuple[Any, ...]:
        """One JSON record -> its values in feature order."""
        check_size(body, self.record_keys, "a record")
        try:
            record = self.record_model.__pydantic_validator__.validate_json(body)
        except ValidationError as exc:
            raise _request_error(exc, self.max_records, self.max_errors) from None
        return tuple(record.__dict__.values())

    def parse_batch(self, body: bytes) -> list[tuple[Any, ...]]:
        """``{"records": [...]}`` -> each record's values in feature order; more than ``max_records`` is a 422.

        A body is first validated by ``quick_batch`` and ``day_checks``: the batch model's own field rules, with
        records as plain dicts instead of model instances and each distinct day checked once instead of in every
        record (half the batch model's time). Whatever they refuse is validated by the batch model, whose errors are
        the answer; so both accept the same bodies with the same values, and refusals read the same."""
        check_size(body, self.batch_keys, f"{self.max_records} records (MAX_BATCH_RECORDS)")
        rows = self.quick_rows(body)
        if rows is not None:
            return rows
        try:
            batch = self.batch_model.__pydantic_validator__.validate_json(body)
        except ValidationError as exc:
            raise _request_error(exc, self.max_records, self.max_errors) from None
        return [tuple(record.__dict__.values()) for record in batch.records]

    def quick_rows(self, batch: bytes | Mapping[str, Any]) -> list[tuple[Any, ...]] | None:
        """A batch's rows if ``quick_batch`` and the day checks accept it (JSON bytes, or decoded values as
        ``validate_python`` takes them), else None: the batch model then says why."""
        try:
            if isinstance(batch, bytes):
                records = self.quick_batch.validate_json(batch)["records"]
            else:
                records = self.quick_batch.validate_python(batch)["records"]
        except ValidationError:
            return None
        rows = [tuple(record.values()) for record in records]  # a validated dict lists its fields in their order
        for position, check in self.day_checks:
            try:
                for day in {row[position] for row in rows}:
                    check(day)
            except ValueError:  # PydanticCustomError is one too
                return None
        return rows

    def parse_columns(self, columns: Mapping[str, Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Columns of decoded JSON values, one per feature and one value per row (the Open Inference Protocol's
        tensors) -> each row's values in feature order.

        An unknown or missing column, columns of different lengths, no row or more than ``max_records`` rows are a
        422 before any value is looked at. The values are then validated by ``quick_columns``: each column as one
        list, by the rules of its feature's field, each distinct day checked once. Whatever that refuses is
        validated as records (a dict per row), by ``quick_rows`` and then the batch model, whose errors are the
        answer: a refused value's error has ``loc`` ``[column, row]`` and a message naming both. So the values
        meet exactly the rules ``parse_batch`` applies, and come out the same values of the same types."""
        unknown = [name for name in columns if name not in self.features]
        missing = [name for name in self.features if name not in columns]
        errors = [_column_refused(name, "not a feature of this model", "unknown_column") for name in unknown] + [
            _column_refused(name, "missing (every feature is required)", "missing") for name in missing
        ]
        if errors:
            raise RequestError(422, errors)
        lengths = {name: len(columns[name]) for name in self.features}
        rows = lengths[self.features[0]]
        if any(length != rows for length in lengths.values()):
            shown = ", ".join(f"{name} {length}" for name, length in lengths.items())
            message = f"columns: of different lengths ({shown}); each holds one value per row"
            raise RequestError(422, [{"loc": [], "msg": message, "type": "lengths_differ"}])
        if rows == 0:
            raise RequestError(422, [{"loc": [], "msg": "columns: no rows", "type": "too_short"}])
        if rows > self.max_records:
            message = f"columns: at most {self.max_records} rows per request (MAX_BATCH_RECORDS), not {rows}"
            raise RequestError(422, [{"loc": [], "msg": message, "type": "too_many_records"}])
        validated = self.quick_columns(columns)
        if validated is not None:
            return validated
        values = zip(*(columns[name] for name in self.features), strict=True)
        records = [dict(zip(self.features, row, strict=True)) for row in values]
        quick = self.quick_rows({"records": records})
        if quick is not None:
            return quick
        try:
            batch = self.batch_model.__pydantic_validator__.validate_python({"records": records})
        except ValidationError as exc:
            raise _column_error(exc, self.max_errors) from None
        return [tuple(record.__dict__.values()) for record in batch.records]

    def quick_columns(self, columns: Mapping[str, Sequence[Any]]) -> list[tuple[Any, ...]] | None:
        """Columns' rows in feature order if each column, validated as one list of its feature's values, and the day
        checks (once per distinct day) accept them, else None: ``quick_rows`` and the batch model then validate
        them as records. ``columns`` holds every feature, each a list or tuple of the same length (``parse_columns``
        checks those first); a column of any other type is left to the records."""
        validated: list[list[Any]] = []
        for name, adapter in zip(self.features, self.column_adapters, strict=True):
            column = columns[name]
            if not isinstance(column, list | tuple):  # e.g. a str, which the records would take apart
                return None
            try:
                validated.append(adapter.validate_python(column))
            except ValidationError:
                return None
        for position, check in self.day_checks:
            try:
                for day in set(validated[position]):
                    check(day)
            except ValueError:  # PydanticCustomError is one too
                return None
        return list(zip(*validated, strict=True))

    def columns(self, rows: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
        """Rows of values -> the column mapping the transformer takes (no DataFrame)."""
        return {name: list(values) for name, values in zip(self.features, zip(*rows, strict=True), strict=True)}

    def outside_training(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """For each numeric or date feature whose training range the bundle records, how many of its values in
        ``columns`` (as ``columns`` returns them, already validated) lie outside the range seen in the training
        split: what the metrics report as drift. Nothing is refused for it. A bundle that records no such range
        (numeric features of bundles written before ``observed_minimum`` existed) has no entry for the feature."""
        counts: dict[str, int] = {}
        for name, (kind, low, high) in self.training_ranges.items():
            given = columns.get(name, ())
            if len(given) <= FEW_ROWS:  # a few rows: plain comparisons beat numpy's set-up cost
                points: Sequence[Any] = [float(v) for v in given] if kind == "numeric" else given
                counts[name] = sum((low is not None and v < low) or (high is not None and v > high) for v in points)
                continue
            # numbers as float64, ISO days as fixed-width text (text order is time order); compared in bulk
            values: Any = np.asarray(given, dtype=np.float64 if kind == "numeric" else np.str_)
            outside = np.zeros(values.shape, dtype=bool)
            if low is not None:
                outside |= values < low
            if high is not None:
                outside |= values > high
            counts[name] = int(np.count_nonzero(outside))
        return counts


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _column_refused(name: str, why: str, kind: str) -> dict[str, Any]:
    return {"loc": [name], "field": name, "msg": f"{name}: {why}", "type": kind}


def _column_error(exc: ValidationError, max_errors: int) -> RequestError:
    """The batch model's errors on records built from columns, located by column and row (the first
    ``max_errors``)."""
    errors = []
    details, more = listed(
        exc.errors(include_url=False, include_context=False, include_input=False), exc.error_count(), max_errors
    )
    for error in details:
        loc = tuple(error["loc"])
        if len(loc) >= 3 and isinstance(loc[1], int):  # ("records", row, column, ...)
            row, column = loc[1], str(loc[2])
            msg = f"{column}, row {row}: {error['msg']}"
            errors.append({"loc": [column, row], "field": column, "row": row, "msg": msg, "type": error["type"]})
        else:
            errors.append({"loc": list(loc), "msg": f"{_location(loc)}: {error['msg']}", "type": error["type"]})
    return RequestError(422, errors, more)


def _request_error(exc: ValidationError, max_records: int, max_errors: int) -> RequestError:
    details: list[ErrorDetails] = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in details):
        return RequestError(400, [{"loc": ["body"], "msg": "body: malformed JSON", "type": "json_invalid"}])
    if any(e["type"] == "too_long" and tuple(e["loc"]) == ("records",) for e in details):
        message = f"records: at most {max_records} records per request (MAX_BATCH_RECORDS)"
        return RequestError(422, [{"loc": ["records"], "msg": message, "type": "too_many_records"}])
    errors = []
    shown, more = listed(details, exc.error_count(), max_errors)
    for error in shown:
        where = _location(tuple(error["loc"]))
        field = next((str(p) for p in reversed(error["loc"]) if isinstance(p, str)), "body")
        errors.append(
            {"loc": list(error["loc"]), "field": field, "msg": f"{where}: {error['msg']}", "type": error["type"]}
        )
    return RequestError(422, errors, more)
