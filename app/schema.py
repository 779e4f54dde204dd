"""Request models built from the loaded bundle's feature schema, so validation and OpenAPI cannot drift
from the model.

Each feature becomes one required field: a numeric feature a strict ``float`` (or ``int`` for an integral one,
which also takes a float with no fractional part) within its bounds, NaN and infinities refused; a categorical
one a string enum of its categories; a date an ISO ``YYYY-MM-DD`` string that must be a real day. Unknown
fields are refused. A bundle trained on other data gets its own models with no code change.

Validation runs in pydantic-core straight from the request bytes; failures become ``RequestError`` with one
message per field, each naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic_core import ErrorDetails

from app.contract.bundle import DATE_FORMAT, BundleError, Feature, Metadata

ISO_DATE_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}$"
# The request models' names: their OpenAPI components are ``#/components/schemas/<name>``.
RECORD_MODEL: Final = "PredictRequest"
BATCH_MODEL: Final = "PredictBatchRequest"


class RequestError(Exception):
    """A request body that cannot be predicted: ``status`` (400, 413, 415 or 422) and field-level ``errors``."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors))
        self.status = status
        self.errors = errors


def _real_day(value: str) -> str:
    date.fromisoformat(value)  # ValueError (-> a 422 naming the field) for e.g. 2023-02-30
    return value


def _whole_number(value: Any) -> Any:
    """A float with no fractional part (``2007.0``, as pandas writes integers) as the integer it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _field(feature: Feature) -> tuple[Any, Any]:
    """The annotated type and ``Field`` of one feature."""
    common: dict[str, Any] = {"alias": feature.name, "title": feature.name}
    if feature.kind == "numeric":
        low = float(feature.minimum) if isinstance(feature.minimum, int | float) else None
        high = float(feature.maximum) if isinstance(feature.maximum, int | float) else None
        described = f"{feature.dtype} from {feature.minimum} to {feature.maximum}"
        numeric: Any = float
        if feature.dtype == "int":
            described += " (a whole number: 3 or 3.0)"
            numeric = Annotated[int, BeforeValidator(_whole_number)]
        return numeric, Field(..., strict=True, allow_inf_nan=False, ge=low, le=high, description=described, **common)
    if feature.kind == "categorical":
        if not feature.categories:
            raise BundleError(f"categorical feature {feature.name!r} lists no categories")
        return Literal[tuple(feature.categories)], Field(..., description="one of the training categories", **common)
    if feature.format not in (None, DATE_FORMAT):
        raise BundleError(f"date feature {feature.name!r} has format {feature.format!r}; only {DATE_FORMAT} is served")
    return (
        Annotated[str, AfterValidator(_real_day)],
        Field(
            ...,
            strict=True,
            pattern=ISO_DATE_PATTERN,
            description=f"ISO date (YYYY-MM-DD); seen in training from {feature.minimum} to {feature.maximum}",
            json_schema_extra={"format": "date"},
            **common,
        ),
    )


@dataclass(frozen=True)
class RecordSchema:
    """The request models for one bundle and the conversions the prediction path needs."""

    features: tuple[str, ...]
    record_model: type[BaseModel]
    batch_model: type[BaseModel]
    max_records: int

    @classmethod
    def from_metadata(cls, metadata: Metadata, max_records: int) -> RecordSchema:
        """Models named ``RECORD_MODEL`` and ``BATCH_MODEL`` with the bundle's example."""
        # Python attribute names f0, f1, ... so any column name (spaces, leading underscores) is a valid alias.
        fields: dict[str, Any] = {f"f{i}": _field(feature) for i, feature in enumerate(metadata.features)}
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
        return cls(tuple(metadata.feature_names()), record_model, batch_model, max_records)

    def parse_record(self, body: bytes) -> tuple[Any, ...]:
        """One JSON record -> its values in feature order."""
        try:
            record = self.record_model.__pydantic_validator__.validate_json(body)
        except ValidationError as exc:
            raise _request_error(exc, self.max_records) from None
        return tuple(record.__dict__.values())

    def parse_batch(self, body: bytes) -> list[tuple[Any, ...]]:
        """``{"records": [...]}`` -> each record's values in feature order; more than ``max_records`` is a 422."""
        try:
            batch = self.batch_model.__pydantic_validator__.validate_json(body)
        except ValidationError as exc:
            raise _request_error(exc, self.max_records) from None
        return [tuple(record.__dict__.values()) for record in batch.records]

    def columns(self, rows: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
        """Rows of values -> the column mapping the transformer takes (no DataFrame)."""
        return {name: list(values) for name, values in zip(self.features, zip(*rows, strict=True), strict=True)}


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _request_error(exc: ValidationError, max_records: int) -> RequestError:
    details: list[ErrorDetails] = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in details):
        return RequestError(400, [{"loc": ["body"], "msg": "body: malformed JSON", "type": "json_invalid"}])
    if any(e["type"] == "too_long" and tuple(e["loc"]) == ("records",) for e in details):
        message = f"records: at most {max_records} records per request (MAX_BATCH_RECORDS)"
        return RequestError(422, [{"loc": ["records"], "msg": message, "type": "too_many_records"}])
    errors = []
    for error in details:
        where = _location(tuple(error["loc"]))
        field = next((str(p) for p in reversed(error["loc"]) if isinstance(p, str)), "body")
        errors.append(
            {"loc": list(error["loc"]), "field": field, "msg": f"{where}: {error['msg']}", "type": error["type"]}
        )
    return RequestError(422, errors)
