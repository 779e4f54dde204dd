"""The Open Inference Protocol (KServe V2; what KServe, MLServer and Triton clients speak) over the served model.

``/v2/health/live`` and ``/v2/health/ready`` mean what ``/health/live`` and ``/health/ready`` mean (503 with
the reason when not ready); ``/v2`` describes the server, ``/v2/models/{name}`` the model: one input tensor per
feature (FP64, INT64 or BYTES, shape ``[-1]``) and one output, ``predict`` (FP64). ``{name}`` is
``MODEL_NAME``; ``/versions/{version}`` is the served registry version.

An inference request holds one input per feature, ``shape`` ``[n]`` or ``[n, 1]``, its ``data`` flat or one
``[value]`` per row, every input of the same length n (1..MAX_BATCH_RECORDS). The datatype must fit the feature's
kind (FP64, FP32, INT64 or INT32 for a number, BYTES for a category or a date); the values are validated by
the bundle's request models (``RecordSchema.parse_columns``), so exactly as the records API validates them,
then predicted in one call on the batch path, under the same admission, as ``/predict/batch``. Every refusal
is the protocol's ``{"error": "..."}``: 400 where the records API says 422, 404 for another model or version,
413 and 415 as the records API (``read_json_body``), 503 with ``Retry-After`` when not ready or shed. Tensor
data is JSON only (no binary tensor extension); the output is JSON whatever ``binary_data`` asks for.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from app.api.deps import JSON, State, data_plane, read_json_body
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
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    parameters: Parameters = None


class InferRequest(BaseModel):
    """The request envelope; the values are validated apart, by the bundle's request models."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Text | None = None
    parameters: Parameters = None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


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
        "each named with its row",
    },
    413: {"model": ErrorResponse, "description": "Body larger than MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "Content-Type is not JSON"},
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
    return JSON({"name": SERVER_NAME, "version": request.app.version, "extensions": []})


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


def tensor_values(tensor: InferInput, index: int) -> list[Any]:
    """The input's values, one per row: ``data`` flat, or nested one ``[value]`` per row for shape ``[n, 1]``."""
    where = f"input {tensor.name!r} (inputs[{index}])"
    shape = tensor.shape
    if len(shape) not in (1, 2) or shape[0] < 0 or (len(shape) == 2 and shape[1] != 1):
        raise refused(400, f"{where}: shape {shape} is not [n] or [n, 1] (one value per row)", "shape")
    values = tensor.data
    if len(shape) == 2 and all(isinstance(value, list) for value in values):
        if any(len(value) != 1 for value in values):
            raise refused(400, f"{where}: nested data holds one [value] per row for shape {shape}", "shape")
        values = [value[0] for value in values]
    if len(values) != shape[0]:
        raise refused(400, f"{where}: shape {shape} holds {shape[0]} values, data has {len(values)}", "shape")
    return values


def parse_infer(served: ServedModel, body: bytes) -> tuple[InferRequest, list[Row]]:
    """The request and its rows in feature order, every value validated as the records API validates it."""
    schema = served.schema
    keys = (len(schema.features) + 1) * KEYS_PER_INPUT
    values = len(schema.features) * schema.max_records + keys * MAX_PARAMETERS
    check_size(body, keys, "an infer request for this model", values=values)
    try:
        request = InferRequest.model_validate_json(body)
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in details):
            raise refused(400, "body: malformed JSON", "json_invalid") from None
        shown, more = listed(details, exc.error_count(), served.schema.max_errors)
        messages = [f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}" for error in shown]
        raise RequestError(400, [{"loc": ["body"], "msg": m, "type": "envelope"} for m in messages], more) from None
    for output in request.outputs or ():
        if output.name != OUTPUT:
            raise refused(400, f"output {output.name!r}: not an output of this model (only {OUTPUT!r})", "output")
    kinds = {feature.name: feature.kind for feature in served.bundle.metadata.features}
    columns: dict[str, list[Any]] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in columns:
            raise refused(400, f"input {tensor.name!r} (inputs[{index}]): given more than once", "repeated")
        kind = kinds.get(tensor.name)
        allowed = NUMBER_TYPES if kind == "numeric" else TEXT_TYPES
        if kind is not None and tensor.datatype not in allowed:
            message = (
                f"input {tensor.name!r} (inputs[{index}]): datatype {tensor.datatype} does not fit its {kind} "
                f"feature; use {' or '.join(allowed)}"
            )
            raise refused(400, message, "datatype")
        columns[tensor.name] = tensor_values(tensor, index)
    try:
        rows = served.schema.parse_columns(columns)
    except RequestError as exc:  # each message names the column (the input) and the row
        raise RequestError(400, [{**error, "msg": f"input {error['msg']}"} for error in exc.errors], exc.more) from None
    return request, rows


async def infer(request: Request, name: str, version: str | None) -> JSON:
    plane = data_plane(request)
    served = model_named(plane.state, name, version)
    limit = plane.state.settings.max_body_bytes
    refusal = None
    if BINARY_HEADER in request.headers:
        message = "body: binary tensor data is not supported; send the values as JSON data (binary_data=False)"
        refusal = refused(400, message, "binary")
    infer_request, predictions = await plane.predict_rows(
        served,
        request.scope["route"].path,
        lambda: read_json_body(request, limit),
        lambda body: parse_infer(served, body),
        refusal,
    )
    answer: dict[str, Any] = {"model_name": name}
    if (known := version_text(served)) is not None:
        answer["model_version"] = known
    if infer_request.id is not None:
        answer["id"] = infer_request.id
    answer["outputs"] = [{"name": OUTPUT, "shape": [len(predictions)], "datatype": "FP64", "data": predictions}]
    answer["parameters"] = {"bundle_hash": served.content_hash}
    return JSON(answer)


INFER_ROUTE = {
    "summary": "V2: predict n rows (one input per feature) in one vectorised call",
    "response_model": InferResponse,
    "responses": INFER_ERRORS,
    "openapi_extra": {"requestBody": request_body(REQUEST_MODEL)},
}


@router.post("/models/{name}/infer", **INFER_ROUTE)  # type: ignore[arg-type]
async def infer_model(request: Request, name: Name) -> JSON:
    return await infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", **INFER_ROUTE)  # type: ignore[arg-type]
async def infer_version(request: Request, name: Name, version: Version) -> JSON:
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
            "length, so this schema shows n = 1 and the inputs in feature order; any order is accepted."
        ),
        "properties": {
            "id": {"anyOf": [{"type": "string", "maxLength": PARAMETER_TEXT}, {"type": "null"}]},
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
        "additionalProperties": False,
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
