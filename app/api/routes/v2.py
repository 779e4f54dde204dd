"""The Open Inference Protocol (KServe V2; what KServe, MLServer and Triton clients speak) over the served model.

``/v2/health/live`` and ``/v2/health/ready`` mean what ``/health/live`` and ``/health/ready`` mean (503 with
the reason when not ready); ``/v2`` describes the server, ``/v2/models/{name}`` the model: one input tensor per
feature (FP64, INT64 or BYTES, shape ``[-1]``) and one output, ``predict`` (FP64). ``{name}`` is
``MODEL_NAME``; ``/versions/{version}`` is the served registry version.

An inference request holds one input per feature, ``shape`` ``[n]`` or ``[n, 1]``, its ``data`` flat or one
``[value]`` per row, every input of the same length n (1..MAX_BATCH_RECORDS). The datatype must fit the feature's
kind (FP64, FP32, INT64 or INT32 for a number, BYTES for a category or a date); the values are validated by
the bundle's request models (``RecordSchema.parse_columns``), so exactly as the records API validates them,
then predicted in one call on the batch path, under the same admission, as ``/predict/batch``. A ``model_name``
in the body must be the path's; other top-level fields are ignored, as KServe's, MLServer's and Triton's servers
ignore them. A body without a Content-Type is read as JSON (Triton's client sends none).

The binary tensor data extension (Triton's, KServe's): with the ``Inference-Header-Content-Length`` request
header, the body is that many bytes of JSON, then the raw data of each input that gives
``parameters.binary_data_size`` instead of ``data``, in the inputs' order: little-endian values of its datatype,
or for BYTES each element as a 4-byte little-endian length and its UTF-8 bytes. The output comes back binary
when asked (its ``binary_data`` parameter, or the request's ``binary_data_output`` when ``outputs`` does not
name it): the JSON header, then the little-endian FP64 predictions, the output's ``parameters`` giving their
``binary_data_size``, the response's ``Inference-Header-Content-Length`` the header's, content type
``application/octet-stream``. The JSON path never looks for binary data.

Every refusal is the protocol's ``{"error": "..."}``: 400 where the records API says 422, 404 for another model
or version, 413 and 415 as the records API (``read_json_body``), 503 with ``Retry-After`` when not ready or
shed; a path or method under ``/v2`` that no route takes too (``app.api.errors.http_errors``).
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import numpy as np
import numpy.typing as npt
import orjson
from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from app.api.deps import JSON, State, data_plane, is_json, read_json_body
from app.api.errors import ErrorShape, Refusal, ShapedRoute
from app.api.openapi import component_schemas, request_body
from app.contract.bundle import Feature
from app.model.schema import RequestError, check_size, listed
from app.runtime.admission import RETRY_AFTER_S
from app.runtime.served_model import Row, ServedModel
from app.runtime.state import NotReadyError, ServingState

SERVER_NAME: Final = "prediction-server"
PLATFORM: Final = "sklearn"
OUTPUT: Final = "predict"
MODEL_PATH: Final = "/v2/models/{name}"
VERSION_PATH: Final = "/v2/models/{name}/versions/{version}"
INFER: Final = "/infer"
READY: Final = "/ready"
# The component of the infer request body: the loaded bundle's inputs (``openapi_schemas``).
REQUEST_MODEL: Final = "V2InferRequest"
NUMBER_TYPES: Final = ("FP64", "FP32", "INT64", "INT32")
TEXT_TYPES: Final = ("BYTES",)
# The most parameters an input, a requested output or the request may carry (the protocol's ``$parameters`` are
# string, number or boolean values), and so the most keys an infer request may hold per input (its own five and
# its parameters'), the request's own counted as one more input.
MAX_PARAMETERS: Final = 16
PARAMETER_TEXT: Final = 256  # longest parameter name or string value, and request id
KEYS_PER_INPUT: Final = 5 + MAX_PARAMETERS
SHOWN_ERRORS: Final = 10  # an error message lists this many refused values, then how many more
BINARY_HEADER: Final = "inference-header-content-length"  # the binary tensor data extension's
EXTENSIONS: Final = ["binary_tensor_data"]  # as Triton names it in its server metadata
BINARY_MEDIA: Final = "application/octet-stream"
# The little-endian layout of each number datatype's binary tensor data.
BINARY_NUMBERS: Final[dict[str, np.dtype[Any]]] = {
    "FP64": np.dtype("<f8"),
    "FP32": np.dtype("<f4"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
}
LENGTH_PREFIX: Final = struct.Struct("<I")  # a BYTES element's length, before its bytes


def error_body(exc: Refusal) -> dict[str, Any]:
    """The protocol's error body, ``{"error": "..."}``: the refused values' messages, or the reason."""
    if isinstance(exc, RequestError):
        return {"error": error_text(exc.errors, exc.more)}
    if isinstance(exc, NotReadyError):
        return {"error": f"not ready: {exc.reason}"}
    return {"error": exc.reason}


class V2Route(ShapedRoute):
    """A route answering every refusal with the protocol's error body, 400 where the records API says 422."""

    shape = ErrorShape(error_body, {422: 400})


router = APIRouter(prefix="/v2", tags=["v2"], route_class=V2Route)


class ErrorResponse(BaseModel):
    error: str


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool
    reason: str | None = Field(None, description="Why not, when not ready")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="The served registry version, when known")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool
    reason: str | None = Field(None, description="Why not, when not ready")


Text = Annotated[str, StringConstraints(max_length=PARAMETER_TEXT)]
# The protocol's ``$parameters``: string, number or boolean values by name (null: none).
Parameters = Annotated[dict[Text, Text | int | float | bool], Field(max_length=MAX_PARAMETERS)] | None
PARAMETERS_SCHEMA: Final = {
    "anyOf": [
        {
            "type": "object",
            "maxProperties": MAX_PARAMETERS,
            "propertyNames": {"maxLength": PARAMETER_TEXT},
            "additionalProperties": {
                "anyOf": [{"type": "string", "maxLength": PARAMETER_TEXT}, {"type": "number"}, {"type": "boolean"}]
            },
        },
        {"type": "null"},
    ]
}


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters = None
    data: list[Any] | None = None  # none when the values are binary (``parameters.binary_data_size``)


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    parameters: Parameters = None


class InferRequest(BaseModel):
    """The request envelope; the values are validated apart, by the bundle's request models. Unknown top-level
    fields are ignored, as the protocol's servers (KServe, MLServer, Triton) ignore them."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: Text | None = None
    model_name: Text | None = None  # KServe's client sends it; it must be the path's
    parameters: Parameters = None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, int] | None = Field(
        None, description="binary_data_size: the bytes of the binary output after the JSON header, when binary"
    )
    data: list[float] | None = Field(None, description="The predictions, unless the output is binary")


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = Field(None, description="The served registry version, when known")
    id: str | None = Field(None, description="The request's id, when it gave one")
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = Field(description="bundle_hash: the content hash of the bundle that answered")


NOT_FOUND = {404: {"model": ErrorResponse, "description": "Another model name (MODEL_NAME) or version"}}
UNAVAILABLE = {
    503: {
        "model": ErrorResponse,
        "description": "The bundle is not loaded yet, or the request was shed (MAX_QUEUED_ROWS rows already queued, "
        "or no prediction within PREDICT_TIMEOUT_S): retry after Retry-After seconds",
    }
}
INFER_ERRORS = {
    400: {
        "model": ErrorResponse,
        "description": "Malformed JSON; a refused input (unknown, missing, repeated, another datatype or shape, "
        "inputs of different lengths, more than MAX_BATCH_RECORDS rows) or value (as the records API refuses it), "
        "each named with its row; a model_name other than the path's; binary tensor data that does not match "
        "its Inference-Header-Content-Length or binary_data_size",
    },
    413: {"model": ErrorResponse, "description": "Body larger than MAX_BODY_BYTES"},
    415: {
        "model": ErrorResponse,
        "description": "Content-Type is neither JSON nor absent (nor application/octet-stream with binary data)",
    },
    **NOT_FOUND,
    **UNAVAILABLE,
}
NOT_READY = {503: {"model": ServerReady, "description": "Not ready, with the reason (as /health/ready)"}}
MODEL_NOT_READY = {**NOT_FOUND, 503: {"model": ModelReady, "description": "Not ready, with the reason"}}
Name = Annotated[str, Path(description="The served model's name (MODEL_NAME)")]
Version = Annotated[str, Path(description="The served model's registry version")]


def error_text(errors: Sequence[dict[str, Any]], more: int = 0) -> str:
    """The errors' messages in one line, the first ``SHOWN_ERRORS`` of them (``more``: errors not even listed)."""
    text = "; ".join(str(error["msg"]) for error in errors[:SHOWN_ERRORS])
    left_out = max(len(errors) - SHOWN_ERRORS, 0) + more
    return text + (f"; and {left_out} more" if left_out else "")


def refused(status: int, message: str, kind: str) -> RequestError:
    return RequestError(status, [{"loc": ["body"], "msg": message, "type": kind}])


def version_text(served: ServedModel) -> str | None:
    return None if served.version is None else str(served.version)


def check_name(state: ServingState, name: str) -> None:
    if name != state.settings.model_name:
        raise refused(
            404, f"model {name!r} is not served here; this server serves {state.settings.model_name!r}", "name"
        )


def model_named(state: ServingState, name: str, version: str | None = None) -> ServedModel:
    """The served model if it is ``name`` (and ``version``, if asked for); 404 if not, 503 if none is loaded."""
    check_name(state, name)
    served = state.served()
    if version is not None and version != version_text(served):
        serving = "an unknown version" if served.version is None else f"version {served.version}"
        raise refused(
            404, f"version {version!r} of model {name!r} is not served here; this server serves {serving}", "version"
        )
    return served


def datatype(feature: Feature) -> str:
    """The datatype the model metadata gives the feature's input."""
    if feature.kind != "numeric":
        return "BYTES"
    return "INT64" if feature.dtype == "int" else "FP64"


# --- health and metadata ---


@router.get("/health/live", summary="V2: the process is up", response_model=ServerLive)
async def live() -> JSON:
    return JSON({"live": True})


@router.get(
    "/health/ready",
    summary="V2: ready as /health/ready is; 503 with the reason otherwise",
    response_model=ServerReady,
    responses=NOT_READY,  # type: ignore[arg-type]
)
async def ready(state: State) -> JSON:
    if (why := state.not_ready()) is None:
        return JSON({"ready": True})
    return JSON({"ready": False, "reason": why.reason}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


@router.get("", summary="V2: server metadata", response_model=ServerMetadata)
async def server_metadata(request: Request) -> JSON:
    return JSON({"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS})


def model_metadata(state: ServingState, name: str, version: str | None) -> JSON:
    served = model_named(state, name, version)
    known = version_text(served)
    return JSON(
        {
            "name": name,
            "versions": [] if known is None else [known],
            "platform": PLATFORM,
            "inputs": [
                {"name": feature.name, "datatype": datatype(feature), "shape": [-1]}
                for feature in served.bundle.metadata.features
            ],
            "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
        }
    )


async def model_ready(state: ServingState, name: str, version: str | None) -> JSON:
    check_name(state, name)
    if state.model is not None:
        model_named(state, name, version)  # 404 for another version
    if (why := state.not_ready()) is None:
        return JSON({"name": name, "ready": True})
    body = {"name": name, "ready": False, "reason": why.reason}
    return JSON(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


METADATA = {
    "summary": "V2: model metadata: one input per feature, one output",
    "response_model": ModelMetadata,
    "responses": {**NOT_FOUND, **UNAVAILABLE},
}
MODEL_READY = {"summary": "V2: the model is ready", "response_model": ModelReady, "responses": MODEL_NOT_READY}


@router.get("/models/{name}", **METADATA)  # type: ignore[arg-type]
async def metadata(state: State, name: Name) -> JSON:
    return model_metadata(state, name, None)


@router.get("/models/{name}/versions/{version}", **METADATA)  # type: ignore[arg-type]
async def version_metadata(state: State, name: Name, version: Version) -> JSON:
    return model_metadata(state, name, version)


@router.get("/models/{name}/ready", **MODEL_READY)  # type: ignore[arg-type]
async def ready_model(state: State, name: Name) -> JSON:
    return await model_ready(state, name, None)


@router.get("/models/{name}/versions/{version}/ready", **MODEL_READY)  # type: ignore[arg-type]
async def ready_version(state: State, name: Name, version: Version) -> JSON:
    return await model_ready(state, name, version)


# --- inference ---


def where(tensor: InferInput, index: int) -> str:
    return f"input {tensor.name!r} (inputs[{index}])"


def rows_of(tensor: InferInput, index: int) -> int:
    """The input's number of rows, n, from its shape: ``[n]`` or ``[n, 1]``."""
    shape = tensor.shape
    if len(shape) not in (1, 2) or shape[0] < 0 or (len(shape) == 2 and shape[1] != 1):
        raise refused(400, f"{where(tensor, index)}: shape {shape} is not [n] or [n, 1] (one value per row)", "shape")
    return shape[0]


def tensor_values(tensor: InferInput, index: int, data: list[Any]) -> list[Any]:
    """The input's JSON values, one per row: ``data`` flat, or nested one ``[value]`` per row for shape ``[n, 1]``."""
    rows, shape, values = rows_of(tensor, index), tensor.shape, data
    if len(shape) == 2 and all(isinstance(value, list) for value in values):
        if any(len(value) != 1 for value in values):
            message = f"{where(tensor, index)}: nested data holds one [value] per row for shape {shape}"
            raise refused(400, message, "shape")
        values = [value[0] for value in values]
    if len(values) != rows:
        raise refused(
            400, f"{where(tensor, index)}: shape {shape} holds {rows} values, data has {len(values)}", "shape"
        )
    return values


def binary_size(tensor: InferInput, index: int) -> int | None:
    """The input's ``binary_data_size`` parameter (its values are binary), or None (they are its ``data``)."""
    size = None if tensor.parameters is None else tensor.parameters.get("binary_data_size")
    if size is None:
        if tensor.data is None:
            message = f"{where(tensor, index)}: no data (nor parameters.binary_data_size, for binary tensor data)"
            raise refused(400, message, "binary")
        return None
    if type(size) is not int or size < 0:
        message = f"{where(tensor, index)}: parameters.binary_data_size must be a whole number of bytes, not {size!r}"
        raise refused(400, message, "binary")
    if tensor.data is not None:
        message = f"{where(tensor, index)}: both data and parameters.binary_data_size; give one"
        raise refused(400, message, "binary")
    return size


def binary_values(tensor: InferInput, index: int, chunk: bytes, rows: int) -> list[Any]:
    """The ``rows`` values of an input's binary tensor data: little-endian numbers of its datatype, or for BYTES
    each element's 4-byte little-endian length and its UTF-8 bytes."""
    at, size = where(tensor, index), len(chunk)
    number = BINARY_NUMBERS.get(tensor.datatype)
    if number is not None:
        if size != rows * number.itemsize:
            message = (
                f"{at}: binary_data_size {size} is not {rows} {tensor.datatype} values of {number.itemsize} bytes "
                f"({rows * number.itemsize}) for shape {tensor.shape}"
            )
            raise refused(400, message, "binary")
        values: list[Any] = np.frombuffer(chunk, dtype=number).tolist()
        return values
    values, offset = [], 0
    for row in range(rows):
        if offset + LENGTH_PREFIX.size > size:
            message = f"{at}: its {size} bytes of binary data end before element {row}'s 4-byte length (of {rows})"
            raise refused(400, message, "binary")
        (length,) = LENGTH_PREFIX.unpack_from(chunk, offset)
        offset += LENGTH_PREFIX.size
        if offset + length > size:
            message = (
                f"{at}: element {row} is {length} bytes long, but only {size - offset} of its binary_data_size are left"
            )
            raise refused(400, message, "binary")
        try:
            values.append(chunk[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise refused(400, f"{at}: element {row} is not UTF-8 text", "binary") from None
        offset += length
    if offset != size:
        message = f"{at}: {size - offset} bytes of binary data left after its {rows} elements (shape {tensor.shape})"
        raise refused(400, message, "binary")
    return values


def wants_binary(request: InferRequest) -> bool:
    """Whether the output is to be binary: its own ``binary_data`` if ``outputs`` names it, else the request's
    ``binary_data_output`` (Triton's rule); JSON unless asked."""
    named = [output for output in request.outputs or () if output.name == OUTPUT]
    parameters, key, what = (
        (named[0].parameters, "binary_data", f"output {OUTPUT!r}: parameters.binary_data")
        if named
        else (request.parameters, "binary_data_output", "parameters.binary_data_output")
    )
    asked = False if parameters is None else parameters.get(key, False)
    if type(asked) is not bool:
        raise refused(400, f"{what} must be true or false, not {asked!r}", "binary")
    return asked


@dataclass(frozen=True)
class Parsed:
    request: InferRequest
    binary_output: bool


def split_binary(body: bytes, header_length: int) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it."""
    if header_length > len(body):
        message = (
            f"Inference-Header-Content-Length: {header_length} bytes of JSON header, but the body has only "
            f"{len(body)} bytes"
        )
        raise refused(400, message, "binary")
    return body[:header_length], body[header_length:]


def parse_infer(
    served: ServedModel, name: str, body: bytes, header_length: int | None = None
) -> tuple[Parsed, list[Row]]:
    """The request and its rows in feature order, every value validated as the records API validates it.
    ``header_length``: the body is that many bytes of JSON, then binary tensor data."""
    schema = served.schema
    head, binary = (body, None) if header_length is None else split_binary(body, header_length)
    keys = (len(schema.features) + 1) * KEYS_PER_INPUT
    values = len(schema.features) * schema.max_records + keys * MAX_PARAMETERS
    check_size(head, keys, "an infer request for this model", values=values)
    try:
        request = InferRequest.model_validate_json(head)
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in details):
            raise refused(400, "body: malformed JSON", "json_invalid") from None
        shown, more = listed(details, exc.error_count(), served.schema.max_errors)
        messages = [f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}" for error in shown]
        raise RequestError(400, [{"loc": ["body"], "msg": m, "type": "envelope"} for m in messages], more) from None
    if request.model_name is not None and request.model_name != name:
        message = f"model_name {request.model_name!r} in the body is not the model of the path, {name!r}"
        raise refused(400, message, "name")
    for output in request.outputs or ():
        if output.name != OUTPUT:
            raise refused(400, f"output {output.name!r}: not an output of this model (only {OUTPUT!r})", "output")
    binary_output = wants_binary(request)
    kinds = {feature.name: feature.kind for feature in served.bundle.metadata.features}
    columns: dict[str, list[Any]] = {}
    offset = 0
    for index, tensor in enumerate(request.inputs):
        if tensor.name in columns:
            raise refused(400, f"{where(tensor, index)}: given more than once", "repeated")
        kind = kinds.get(tensor.name)
        allowed = NUMBER_TYPES if kind == "numeric" else TEXT_TYPES
        if kind is not None and tensor.datatype not in allowed:
            message = (
                f"{where(tensor, index)}: datatype {tensor.datatype} does not fit its {kind} feature; use "
                f"{' or '.join(allowed)}"
            )
            raise refused(400, message, "datatype")
        size = binary_size(tensor, index)
        if size is None:
            columns[tensor.name] = tensor_values(tensor, index, tensor.data or [])
            continue
        if binary is None:
            message = (
                f"{where(tensor, index)}: parameters.binary_data_size needs the Inference-Header-Content-Length "
                "header (the length of the JSON before the binary data)"
            )
            raise refused(400, message, "binary")
        if tensor.datatype not in BINARY_NUMBERS and tensor.datatype not in TEXT_TYPES:
            message = f"{where(tensor, index)}: datatype {tensor.datatype} is not a binary datatype of this model"
            raise refused(400, message, "datatype")
        rows = rows_of(tensor, index)
        if rows > schema.max_records:  # before decoding
            message = f"input columns: at most {schema.max_records} rows per request (MAX_BATCH_RECORDS), not {rows}"
            raise refused(400, message, "too_many_records")
        if offset + size > len(binary):
            message = (
                f"{where(tensor, index)}: binary_data_size {size}, but only {len(binary) - offset} bytes of binary "
                "data are left"
            )
            raise refused(400, message, "binary")
        columns[tensor.name] = binary_values(tensor, index, binary[offset : offset + size], rows)
        offset += size
    if binary is not None and offset != len(binary):
        message = (
            f"body: {len(binary) - offset} bytes of binary data after the inputs' (their binary_data_size add up "
            f"to {offset})"
        )
        raise refused(400, message, "binary")
    try:
        rows_parsed = served.schema.parse_columns(columns)
    except RequestError as exc:  # each message names the column (the input) and the row
        raise RequestError(400, [{**error, "msg": f"input {error['msg']}"} for error in exc.errors], exc.more) from None
    return Parsed(request, binary_output), rows_parsed


def json_or_none(content_type: str | None) -> bool:
    """A JSON content type, or none at all (Triton's client sends none)."""
    return content_type is None or is_json(content_type)


def json_octets_or_none(content_type: str | None) -> bool:
    """With binary tensor data: JSON, application/octet-stream (KServe's client) or none (Triton's)."""
    return json_or_none(content_type) or (content_type or "").split(";", 1)[0].strip().lower() == BINARY_MEDIA


def header_length_of(value: str) -> int | RequestError:
    """The ``Inference-Header-Content-Length`` header's byte count, or its refusal."""
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 12:
        return int(text)
    message = f"Inference-Header-Content-Length: must be the JSON header's length in bytes, not {value[:40]!r}"
    return refused(400, message, "binary")


def answer_of(name: str, served: ServedModel, parsed: Parsed, predictions: npt.NDArray[np.float64]) -> Response:
    """The inference response: JSON, or the JSON header then the predictions as little-endian FP64."""
    answer: dict[str, Any] = {"model_name": name}
    if (known := version_text(served)) is not None:
        answer["model_version"] = known
    if parsed.request.id is not None:
        answer["id"] = parsed.request.id
    output: dict[str, Any] = {"name": OUTPUT, "shape": [len(predictions)], "datatype": "FP64"}
    answer["outputs"] = [output]
    answer["parameters"] = {"bundle_hash": served.content_hash}
    if not parsed.binary_output:
        output["data"] = predictions
        return JSON(answer)
    data = predictions.astype("<f8", copy=False).tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    head = orjson.dumps(answer)
    headers = {BINARY_HEADER: str(len(head))}
    return Response(head + data, media_type=BINARY_MEDIA, headers=headers)


async def infer(request: Request, name: str, version: str | None) -> Response:
    plane = data_plane(request)
    served = model_named(plane.state, name, version)
    limit = plane.state.settings.max_body_bytes
    header = request.headers.get(BINARY_HEADER)
    length = None if header is None else header_length_of(header)
    refusal = length if isinstance(length, RequestError) else None
    header_length = length if isinstance(length, int) else None
    # JSON (or none); with the binary extension's header, also application/octet-stream
    media, expected = (
        (json_or_none, "application/json (or none)")
        if header is None
        else (json_octets_or_none, f"{BINARY_MEDIA}, application/json or none with binary tensor data")
    )

    def read() -> Awaitable[bytes]:
        return read_json_body(request, limit, media, expected)

    def decode(body: bytes) -> tuple[Parsed, list[Row]]:
        return parse_infer(served, name, body, header_length)  # the JSON path never looks for binary data

    parsed, predictions = await plane.predict_rows(served, request.scope["route"].path, read, decode, refusal)
    return answer_of(name, served, parsed, predictions)


BINARY_ANSWER = {
    200: {
        "description": "The predictions: JSON, or, when the output is asked for as binary (binary_data, "
        "binary_data_output), the JSON header (its length in the Inference-Header-Content-Length response "
        "header) then the predictions as little-endian FP64",
        "content": {BINARY_MEDIA: {"schema": {"type": "string", "format": "binary"}}},
    }
}
INFER_ROUTE = {
    "summary": "V2: predict n rows (one input per feature) in one vectorised call",
    "description": "JSON tensor data, or binary tensor data after a JSON header of Inference-Header-Content-Length "
    "bytes (the binary tensor data extension)",
    "response_model": InferResponse,
    "responses": {**BINARY_ANSWER, **INFER_ERRORS},
    "openapi_extra": {"requestBody": request_body(REQUEST_MODEL)},
}


@router.post("/models/{name}/infer", **INFER_ROUTE)  # type: ignore[arg-type]
async def infer_model(request: Request, name: Name) -> Response:
    return await infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", **INFER_ROUTE)  # type: ignore[arg-type]
async def infer_version(request: Request, name: Name, version: Version) -> Response:
    return await infer(request, name, version)


# --- the OpenAPI document ---


def request_schema(served: ServedModel) -> dict[str, Any]:
    """The infer request body for ``served``: its inputs in feature order, each with the schema of its feature's
    values from the request model. JSON Schema cannot say that every input has the same length, so the document
    shows one row (shape [1] or [1, 1]); any n up to MAX_BATCH_RECORDS, inputs in any order and nested data are
    accepted too."""
    values = served.schema.record_model.model_json_schema()["properties"]
    inputs = []
    for feature in served.bundle.metadata.features:
        allowed = NUMBER_TYPES if feature.kind == "numeric" else TEXT_TYPES
        inputs.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": feature.name},
                    "shape": {"enum": [[1], [1, 1]], "description": "[n] or [n, 1]"},
                    "datatype": {"enum": list(allowed)},
                    "parameters": copy.deepcopy(PARAMETERS_SCHEMA),
                    "data": {
                        "type": "array",
                        "items": copy.deepcopy(values[feature.name]),
                        "minItems": 1,
                        "maxItems": 1,
                    },
                },
                "required": ["name", "shape", "datatype", "data"],
                "additionalProperties": False,
            }
        )
    example = served.bundle.metadata.example
    return {
        "type": "object",
        "title": REQUEST_MODEL,
        "description": (
            "One input per feature, each of n values (1..MAX_BATCH_RECORDS, the same n for every input): shape [n] "
            "or [n, 1], data flat or one [value] per row. JSON Schema cannot say that every input has the same "
            "length, so this schema shows n = 1 and the inputs in feature order; any order is accepted. Other "
            "top-level fields are ignored."
        ),
        "properties": {
            "id": {"anyOf": [{"type": "string", "maxLength": PARAMETER_TEXT}, {"type": "null"}]},
            "model_name": {"anyOf": [{"type": "string", "maxLength": PARAMETER_TEXT}, {"type": "null"}]},
            "parameters": copy.deepcopy(PARAMETERS_SCHEMA),
            "inputs": {
                "type": "array",
                "prefixItems": inputs,
                "items": False,
                "minItems": len(inputs),
                "maxItems": len(inputs),
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"const": OUTPUT}, "parameters": copy.deepcopy(PARAMETERS_SCHEMA)},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["inputs"],
        "examples": [
            {
                "inputs": [
                    {"name": f.name, "shape": [1], "datatype": datatype(f), "data": [example[f.name]]}
                    for f in served.bundle.metadata.features
                ]
            }
        ],
    }


def document_v2(document: dict[str, Any], served: ServedModel | None, model_name: str) -> None:
    """Complete the OpenAPI ``document`` for these routes: the infer request body of ``served`` (a placeholder
    until a bundle is loaded), and the one model name, and version if known, the paths take."""
    schemas = component_schemas(document)
    schemas[REQUEST_MODEL] = (
        request_schema(served)
        if served is not None
        else {"type": "object", "description": "Known once the bundle is loaded; see /v2/health/ready."}
    )
    if served is not None:  # the path's name, if given
        schemas[REQUEST_MODEL]["properties"]["model_name"] = {"anyOf": [{"const": model_name}, {"type": "null"}]}
    version = None if served is None else version_text(served)
    for path, operations in document["paths"].items():
        if not path.startswith("/v2/models/"):
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter["in"] == "path" and parameter["name"] == "name":
                    parameter["schema"] = {**parameter["schema"], "enum": [model_name]}
                elif parameter["in"] == "path" and parameter["name"] == "version" and version is not None:
                    parameter["schema"] = {**parameter["schema"], "enum": [version]}
