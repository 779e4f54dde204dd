"""The Open Inference Protocol (KServe V2) endpoints: metadata, readiness, predictions bit-identical to
``Bundle.predict``, every refusal as ``{"error": ...}`` naming the input and the row, the OpenAPI document, and a
real V2 client (Triton's ``tritonclient.http``) against a real uvicorn process."""

from __future__ import annotations

import copy
import json
import math
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]  # no stubs in the locked environment
import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient

import app.runtime.served_model
from app.api.routes import v2
from app.contract.bundle import Bundle, Feature, Metadata, load_bundle
from app.model.schema import RecordSchema, RequestError
from tests.harness.services import BIN, LOOPBACK, free_port, running
from tests.harness.serving import metadata_for, ready_client, records, settings_for

NAME = "flight-price"  # MODEL_NAME's default
VERSION = 7
MAX_ROWS = 500
MAX_BODY = 200_000
MODEL = f"/v2/models/{NAME}"
INFER = f"{MODEL}/infer"
INFER_ROUTE = "/v2/models/{name}/infer"
Request = dict[str, Any]


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def client(bundle_dir: Path) -> Iterator[TestClient]:
    settings = settings_for(bundle_dir, model_version=VERSION, max_batch_records=MAX_ROWS, max_body_bytes=MAX_BODY)
    with ready_client(settings) as client:
        yield client


def datatype(feature: Feature) -> str:
    if feature.kind != "numeric":
        return "BYTES"
    return "INT64" if feature.dtype == "int" else "FP64"


def infer_request(metadata: Metadata, rows: list[dict[str, Any]], *, nested: bool = False) -> Request:
    """The V2 request for ``rows``: one input per feature, shape [n] (or [n, 1] with one [value] per row)."""
    n = len(rows)
    inputs = []
    for feature in metadata.features:
        values = [row[feature.name] for row in rows]
        inputs.append(
            {
                "name": feature.name,
                "shape": [n, 1] if nested else [n],
                "datatype": datatype(feature),
                "data": [[v] for v in values] if nested else values,
            }
        )
    return {"inputs": inputs}


def column_values(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def bits(values: Any) -> bytes:
    return np.asarray(values, dtype=np.float64).tobytes()


def input_named(request: Request, name: str) -> dict[str, Any]:
    return next(tensor for tensor in request["inputs"] if tensor["name"] == name)


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- health and metadata ---


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert client.get("/v2").json() == {
        "name": "prediction-server",
        "version": client.app.version,  # type: ignore[attr-defined]
        "extensions": ["binary_tensor_data"],
    }


def test_model_metadata_has_one_input_per_feature_and_one_output(client: TestClient, bundle: Bundle) -> None:
    answer = client.get(MODEL)
    assert answer.status_code == 200
    expected_inputs = [{"name": f.name, "datatype": datatype(f), "shape": [-1]} for f in bundle.metadata.features]
    assert answer.json() == {
        "name": NAME,
        "versions": [str(VERSION)],
        "platform": "sklearn",
        "inputs": expected_inputs,
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
    }
    assert {i["datatype"] for i in expected_inputs} == {"FP64", "BYTES"}  # numbers, categories and a date
    assert client.get(f"{MODEL}/versions/{VERSION}").json() == answer.json()


def test_model_readiness_and_other_names_or_versions(client: TestClient) -> None:
    assert client.get(f"{MODEL}/ready").json() == {"name": NAME, "ready": True}
    assert client.get(f"{MODEL}/versions/{VERSION}/ready").json() == {"name": NAME, "ready": True}
    for path in (
        "/v2/models/other",
        "/v2/models/other/ready",
        f"{MODEL}/versions/{VERSION + 1}",
        f"{MODEL}/versions/{VERSION + 1}/ready",
    ):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert set(answer.json()) == {"error"} and "not served here" in answer.json()["error"]


def test_before_the_bundle_loads_v2_says_not_ready_with_the_reason(tmp_path: Path) -> None:
    with ready_client(settings_for(tmp_path / "later"), wait=False) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        reason = client.get("/health/ready").json()["reason"]
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": reason}
        assert ready.headers["Retry-After"] == "1"
        model_ready = client.get(f"{MODEL}/ready")
        assert model_ready.status_code == 503 and model_ready.json() == {"name": NAME, "ready": False, "reason": reason}
        for answer in (client.get(MODEL), client.post(INFER, json={"inputs": []})):
            assert answer.status_code == 503 and answer.json() == {"error": f"not ready: {reason}"}
            assert answer.headers["Retry-After"] == "1"
        assert client.get("/v2/models/other").status_code == 404  # the name is known before the bundle
        document = client.get("/openapi.json").json()
        assert "Known once the bundle is loaded" in document["components"]["schemas"]["V2InferRequest"]["description"]


# --- predictions ---


@pytest.mark.parametrize("n", [1, MAX_ROWS])
@pytest.mark.parametrize("layout", ["flat", "nested", "column-flat"])
def test_predictions_are_bundle_predict_bit_for_bit(client: TestClient, bundle: Bundle, n: int, layout: str) -> None:
    rows = records(bundle.metadata, n, seed=n)
    request = infer_request(bundle.metadata, rows, nested=layout == "nested")
    if layout == "column-flat":  # shape [n, 1] with the data flat, as the protocol allows
        for tensor in request["inputs"]:
            tensor["shape"] = [n, 1]
    request["inputs"].reverse()  # any order
    request["id"] = f"request-{n}"
    before = metric(client, f'predicted_rows_total{{route="{INFER_ROUTE}"}}')
    answer = client.post(INFER, json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == NAME and body["model_version"] == str(VERSION) and body["id"] == f"request-{n}"
    assert body["parameters"] == {"bundle_hash": bundle.content_hash}
    [output] = body["outputs"]
    assert output["name"] == "predict" and output["datatype"] == "FP64" and output["shape"] == [n]
    assert bits(output["data"]) == bits(bundle.predict(column_values(rows)))
    assert metric(client, f'predicted_rows_total{{route="{INFER_ROUTE}"}}') == before + n
    assert client.app.state.serving.model.usage.active == 0  # type: ignore[attr-defined]


def test_the_versioned_path_and_requested_outputs(client: TestClient, bundle: Bundle) -> None:
    rows = records(bundle.metadata, 3, seed=5)
    request = {
        **infer_request(bundle.metadata, rows),
        "outputs": [{"name": "predict", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": True},  # the output's own binary_data wins, as in Triton
    }
    answer = client.post(f"{MODEL}/versions/{VERSION}/infer", json=request)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json" and "id" not in answer.json()
    assert bits(answer.json()["outputs"][0]["data"]) == bits(bundle.predict(column_values(rows)))
    other = client.post(f"{MODEL}/versions/{VERSION + 1}/infer", json=request)
    assert other.status_code == 404 and "version '8'" in other.json()["error"]


def test_fp32_and_int_datatypes_are_numbers_validated_as_the_records_api_does(
    client: TestClient, bundle: Bundle
) -> None:
    rows = records(bundle.metadata, 4, seed=6)
    request = infer_request(bundle.metadata, rows)
    numeric = [f.name for f in bundle.metadata.features if f.kind == "numeric"]
    input_named(request, numeric[0])["datatype"] = "FP32"
    input_named(request, numeric[1])["datatype"] = "INT64"
    input_named(request, numeric[1])["data"] = [round(v) for v in input_named(request, numeric[1])["data"]]
    answer = client.post(INFER, json=request)
    assert answer.status_code == 200, answer.text
    expected = column_values(rows) | {numeric[1]: input_named(request, numeric[1])["data"]}
    assert bits(answer.json()["outputs"][0]["data"]) == bits(bundle.predict(expected))


def test_a_stuck_model_sheds_v2_requests_and_fails_v2_readiness(
    bundle_dir: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = threading.Event()
    real = app.runtime.served_model.predict_rows

    def stuck(*args: Any) -> Any:
        free.wait(30)
        return real(*args)

    monkeypatch.setattr(app.runtime.served_model, "predict_rows", stuck)
    # the compiled walk of two rows cannot hang and runs on the event loop; a call that could hang runs on a thread
    monkeypatch.setattr(app.runtime.served_model, "on_loop", lambda walk, rows: False)
    rows = records(bundle.metadata, 2, seed=7)
    with ready_client(settings_for(bundle_dir, predict_timeout_s=0.5)) as client:
        try:
            shed = client.post(INFER, json=infer_request(bundle.metadata, rows))
            assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
            assert shed.json() == {"error": "the prediction did not finish within PREDICT_TIMEOUT_S=0.5s"}
            assert metric(client, f'prediction_errors_total{{reason="overloaded",route="{INFER_ROUTE}"}}') == 1
            assert client.app.state.serving.model.usage.active == 0  # type: ignore[attr-defined]
            time.sleep(0.1)  # the model call has now run past PREDICT_TIMEOUT_S: stuck
            reason = client.get("/health/ready").json()["reason"]
            assert "PREDICT_TIMEOUT_S" in reason
            ready = client.get("/v2/health/ready")
            assert (
                ready.status_code == 503
                and ready.json()["ready"] is False
                and "PREDICT_TIMEOUT_S" in ready.json()["reason"]
            )
            assert client.get(f"{MODEL}/ready").status_code == 503
        finally:
            free.set()
        deadline = time.monotonic() + 5
        while client.get("/v2/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get(f"{MODEL}/ready").json() == {"name": NAME, "ready": True}
        answer = client.post(INFER, json=infer_request(bundle.metadata, rows))
        assert bits(answer.json()["outputs"][0]["data"]) == bits(bundle.predict(column_values(rows)))


# --- refusals ---


def features(bundle: Bundle, kind: str) -> list[Feature]:
    return [f for f in bundle.metadata.features if f.kind == kind]


def feature_index(bundle: Bundle, name: str) -> int:
    return [f.name for f in bundle.metadata.features].index(name)


def limited(bundle: Bundle) -> Feature:
    return next(f for f in features(bundle, "numeric") if f.maximum is not None)


def mutations(bundle: Bundle) -> dict[str, tuple[Callable[[Request], Any], str]]:
    """Each refused request: how it differs from a valid 3-row request, and what its error says."""
    number, category, day = features(bundle, "numeric")[0].name, features(bundle, "categorical")[0].name, "date"
    bounded = limited(bundle)

    def set_value(name: str, row: int, value: Any) -> Callable[[Request], None]:
        return lambda r: input_named(r, name)["data"].__setitem__(row, value)

    def set_key(name: str, key: str, value: Any) -> Callable[[Request], None]:
        return lambda r: input_named(r, name).__setitem__(key, value)

    def extra_input(r: Request) -> None:
        r["inputs"].append({"name": "seats", "shape": [3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]})

    def shorter(r: Request) -> None:
        tensor = input_named(r, number)
        tensor["data"], tensor["shape"] = tensor["data"][:2], [2]

    return {
        "unknown input": (extra_input, "input seats: not a feature of this model"),
        "missing input": (lambda r: r["inputs"].remove(input_named(r, category)), f"input {category}: missing"),
        "repeated input": (lambda r: r["inputs"].append(copy.deepcopy(r["inputs"][0])), "given more than once"),
        "lengths differ": (shorter, f"of different lengths ({number} 2, "),
        "shape and data differ": (set_key(number, "shape", [4]), "shape [4] holds 4 values, data has 3"),
        "shape of a matrix": (set_key(number, "shape", [3, 2]), "is not [n] or [n, 1]"),
        "category as a number": (set_key(category, "datatype", "FP64"), "datatype FP64 does not fit its categorical"),
        "number as text": (set_key(number, "datatype", "BYTES"), "datatype BYTES does not fit its numeric"),
        "unknown datatype": (set_key(number, "datatype", "UINT8"), "use FP64 or FP32 or INT64 or INT32"),
        "out of limits": (
            set_value(bounded.name, 1, float(bounded.maximum or 0) + 1),
            f"input {bounded.name}, row 1: Input should be less than or equal to",
        ),
        "a string for a number": (
            set_value(number, 2, "1.5"),
            f"input {number}, row 2: Input should be a valid number",
        ),
        "unknown category": (set_value(category, 0, "Atlantis"), f"input {category}, row 0: Input should be"),
        "impossible date": (set_value(day, 2, "2021-02-30"), f"input {day}, row 2: Value error"),
        "malformed date": (set_value(day, 1, "2021/02/03"), f"input {day}, row 1: String should match pattern"),
        "date out of limits": (set_value(day, 0, "2031-01-01"), f"input {day}, row 0: Input should be a day from"),
        "nested data, two per row": (
            lambda r: input_named(r, number).update(shape=[3, 1], data=[[1.0, 2.0], [1.0], [1.0]]),
            "nested data holds one [value] per row",
        ),
        "nested data for shape [n]": (
            set_key(number, "data", [[1.0], [1.0], [1.0]]),
            f"input {number}, row 0: Input should be a valid number",
        ),
        "unknown output": (lambda r: r.__setitem__("outputs", [{"name": "proba"}]), "output 'proba': not an output"),
        "unknown key of an input": (set_key(number, "dims", [3]), ".dims: Extra inputs are not permitted"),
        "id of another type": (lambda r: r.__setitem__("id", 5), "id: Input should be a valid string"),
        "another model_name": (
            lambda r: r.__setitem__("model_name", "other"),
            "model_name 'other' in the body is not the model of the path, 'flight-price'",
        ),
        "data and binary_data_size": (
            set_key(number, "parameters", {"binary_data_size": 24}),
            f"input '{number}' (inputs[{feature_index(bundle, number)}]): both data and parameters.binary_data_size",
        ),
        "binary_data_size without its header": (
            lambda r: input_named(r, number).update(parameters={"binary_data_size": 24}, data=None),
            "parameters.binary_data_size needs the Inference-Header-Content-Length header",
        ),
        "no data": (
            lambda r: input_named(r, number).pop("data"),
            f"input '{number}' (inputs[{feature_index(bundle, number)}]): no data",
        ),
        "binary_data not a boolean": (
            lambda r: r.__setitem__("outputs", [{"name": "predict", "parameters": {"binary_data": "yes"}}]),
            "output 'predict': parameters.binary_data must be true or false, not 'yes'",
        ),
        "no inputs key": (lambda r: r.pop("inputs"), "inputs: Field required"),
        "shape of strings": (set_key(number, "shape", ["3"]), "inputs.0.shape.0: Input should be a valid integer"),
        "no rows": (
            lambda r: [t.update(shape=[0], data=[]) for t in r["inputs"]],
            "input columns: no rows",
        ),
    }


MUTATIONS = [
    "unknown input", "missing input", "repeated input", "lengths differ", "shape and data differ", "shape of a matrix",
    "category as a number", "number as text", "unknown datatype", "out of limits", "a string for a number",
    "unknown category", "impossible date", "malformed date", "date out of limits", "nested data, two per row",
    "nested data for shape [n]", "unknown output", "unknown key of an input", "id of another type",
    "another model_name", "data and binary_data_size", "binary_data_size without its header", "no data",
    "binary_data not a boolean", "no inputs key", "shape of strings", "no rows",
]  # fmt: skip


@pytest.mark.parametrize("case", MUTATIONS)
def test_every_refusal_is_a_400_naming_the_input_and_row(client: TestClient, bundle: Bundle, case: str) -> None:
    request = infer_request(bundle.metadata, records(bundle.metadata, 3, seed=1))
    mutate, message = mutations(bundle)[case]
    mutate(request)
    route_errors = f'prediction_errors_total{{reason="invalid",route="{INFER_ROUTE}"}}'
    before = metric(client, route_errors)
    answer = client.post(INFER, json=request)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"}
    assert message in answer.json()["error"], answer.json()["error"]
    assert metric(client, route_errors) == before + 1


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinities_are_refused(client: TestClient, bundle: Bundle, literal: str) -> None:
    number = features(bundle, "numeric")[0].name
    request = infer_request(bundle.metadata, records(bundle.metadata, 3, seed=2))
    input_named(request, number)["data"][1] = "__LITERAL__"
    body = json.dumps(request).replace('"__LITERAL__"', literal)
    answer = client.post(INFER, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == f"input {number}, row 1: Input should be a finite number"


def test_every_refused_value_is_named_and_the_message_stays_short(client: TestClient, bundle: Bundle) -> None:
    number = features(bundle, "numeric")[0].name
    request = infer_request(bundle.metadata, records(bundle.metadata, 30, seed=3))
    input_named(request, number)["data"] = ["x"] * 30
    error = client.post(INFER, json=request).json()["error"]
    assert error.count(f"input {number}, row ") == 10 and error.endswith("; and 20 more")


def test_more_than_max_batch_records_rows(client: TestClient, bundle: Bundle) -> None:
    rows = records(bundle.metadata, 3, seed=4)
    request = infer_request(bundle.metadata, rows * ((MAX_ROWS + 3) // 3))
    answer = client.post(INFER, json=request)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": f"input columns: at most {MAX_ROWS} rows per request (MAX_BATCH_RECORDS), not 501"
    }


def test_protocol_errors_of_the_body(client: TestClient, bundle: Bundle) -> None:
    request = infer_request(bundle.metadata, records(bundle.metadata, 2, seed=5))
    cases = [
        (client.post("/v2/models/other/infer", json=request), 404, "model 'other' is not served here"),
        (client.post(INFER, content=json.dumps(request), headers={"Content-Type": "text/plain"}), 415, "content-type"),
        (client.post(INFER, content=b"{", headers={"Content-Type": "application/json"}), 400, "malformed JSON"),
        (
            client.post(INFER, content=b"x" * (MAX_BODY + 1), headers={"Content-Type": "application/json"}),
            413,
            "larger",
        ),
        (
            client.post(INFER, json=request, headers={"Inference-Header-Content-Length": "10"}),
            400,
            "malformed JSON",  # the JSON header is the first 10 bytes
        ),
    ]
    for answer, status, message in cases:
        assert answer.status_code == status, (status, answer.text)
        assert set(answer.json()) == {"error"} and message in answer.json()["error"]


# --- the binary tensor data extension, bodies without a Content-Type, what no route answers ---

BINARY_LAYOUT = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}


def encoded(datatype: str, values: list[Any]) -> bytes:
    """The binary tensor data of ``values``: little-endian numbers, or BYTES as 4-byte length + UTF-8 bytes."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    return np.asarray(values, dtype=BINARY_LAYOUT[datatype]).tobytes()


def binary_body(
    metadata: Metadata,
    rows: list[dict[str, Any]],
    *,
    datatypes: dict[str, str] | None = None,
    as_json: tuple[str, ...] = (),
    extra: Request | None = None,
) -> tuple[bytes, dict[str, str], dict[str, list[Any]]]:
    """A binary request for ``rows`` (the inputs in ``as_json`` as JSON data), its headers, and the columns as the
    server should read them (numbers through their datatype)."""
    header: Request = {"inputs": [], **(extra or {})}
    chunks, columns = [], {}
    for feature in metadata.features:
        kind = (datatypes or {}).get(feature.name, datatype(feature))
        values = [row[feature.name] for row in rows]
        if kind != "BYTES":
            values = np.asarray(values, dtype=BINARY_LAYOUT[kind]).tolist()
        columns[feature.name] = values
        tensor: Request = {"name": feature.name, "shape": [len(rows)], "datatype": kind}
        if feature.name in as_json:
            tensor["data"] = values
        else:
            chunks.append(encoded(kind, values))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        header["inputs"].append(tensor)
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}, columns


def binary_answer(answer: Any) -> tuple[dict[str, Any], npt.NDArray[np.float64]]:
    """The JSON header of a binary inference response and its predictions."""
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    head = json.loads(answer.content[:length])
    [output] = head["outputs"]
    assert "data" not in output and output["parameters"] == {"binary_data_size": len(answer.content) - length}
    return head, np.frombuffer(answer.content[length:], dtype="<f8")


def whole(feature: Feature, value: float) -> int:
    """``value`` rounded to a whole number within the feature's limits."""
    low = -math.inf if feature.minimum is None else math.ceil(float(feature.minimum))
    high = math.inf if feature.maximum is None else math.floor(float(feature.maximum))
    return int(max(low, min(high, round(value))))


@pytest.mark.parametrize(
    ("numbers", "as_json"),
    [("FP64", ()), ("FP32", ()), ("INT64", ()), ("INT32", ()), ("FP64", ("date", "time"))],
    ids=["FP64", "FP32", "INT64", "INT32", "some-inputs-as-JSON"],
)
def test_binary_inputs_and_output_are_bundle_predict_bit_for_bit(
    client: TestClient, bundle: Bundle, numbers: str, as_json: tuple[str, ...]
) -> None:
    """Binary inputs of each datatype (numbers, categories and dates as BYTES), some as JSON data among them, and
    the output in binary: Bundle.predict's bits."""
    rows = records(bundle.metadata, 40, seed=21)
    if numbers.startswith("INT"):
        rows = [{**row, **{f.name: whole(f, row[f.name]) for f in features(bundle, "numeric")}} for row in rows]
    kinds = {f.name: numbers for f in features(bundle, "numeric")}
    body, headers, columns = binary_body(
        bundle.metadata,
        rows,
        datatypes=kinds,
        as_json=as_json,
        extra={"id": "b1", "parameters": {"binary_data_output": True}},
    )
    answer = client.post(INFER, content=body, headers=headers)  # no Content-Type, as Triton's client sends
    assert answer.status_code == 200, answer.text
    head, predictions = binary_answer(answer)
    assert head["id"] == "b1" and head["model_name"] == NAME and head["outputs"][0]["shape"] == [40]
    assert bits(predictions) == bits(bundle.predict(columns))
    as_octets = client.post(INFER, content=body, headers={**headers, "Content-Type": "application/octet-stream"})
    assert as_octets.status_code == 200 and as_octets.content == answer.content  # what KServe's client sends


def test_binary_inputs_with_a_json_answer_and_json_inputs_with_a_binary_one(client: TestClient, bundle: Bundle) -> None:
    rows = records(bundle.metadata, 5, seed=22)
    expected = bits(bundle.predict(column_values(rows)))
    body, headers, _ = binary_body(bundle.metadata, rows)
    answer = client.post(INFER, content=body, headers=headers)
    assert (
        answer.headers["content-type"] == "application/json" and "inference-header-content-length" not in answer.headers
    )
    assert bits(answer.json()["outputs"][0]["data"]) == expected
    request = {
        **infer_request(bundle.metadata, rows),
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
    }
    assert bits(binary_answer(client.post(INFER, json=request))[1]) == expected


def test_a_body_without_content_type_is_json_and_other_types_are_still_refused(
    client: TestClient, bundle: Bundle
) -> None:
    rows = records(bundle.metadata, 3, seed=23)
    body = json.dumps(infer_request(bundle.metadata, rows)).encode()
    answer = client.post(INFER, content=body)
    assert "content-type" not in answer.request.headers
    assert answer.status_code == 200 and bits(answer.json()["outputs"][0]["data"]) == bits(
        bundle.predict(column_values(rows))
    )
    for media in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        refused = client.post(INFER, content=body, headers={"Content-Type": media})
        assert refused.status_code == 415 and refused.json() == {
            "error": "content-type: must be application/json (or none)"
        }
    assert client.post("/predict/batch", content=body).status_code == 415  # the records API keeps its rule


def test_model_name_in_the_body_and_unknown_top_level_fields(client: TestClient, bundle: Bundle) -> None:
    """KServe's client sends model_name; other fields are ignored as KServe's, MLServer's and Triton's servers do."""
    rows = records(bundle.metadata, 2, seed=24)
    request = {**infer_request(bundle.metadata, rows), "model_name": NAME, "model_version": "9", "extra": {"a": [1]}}
    answer = client.post(INFER, json=request)
    assert answer.status_code == 200, answer.text
    assert bits(answer.json()["outputs"][0]["data"]) == bits(bundle.predict(column_values(rows)))
    other = client.post(INFER, json={**request, "model_name": "other"})
    assert other.status_code == 400
    assert other.json() == {"error": f"model_name 'other' in the body is not the model of the path, '{NAME}'"}


def test_refused_binary_data_is_a_400_saying_what_is_wrong(client: TestClient, bundle: Bundle) -> None:
    rows = records(bundle.metadata, 3, seed=25)
    body, headers, _ = binary_body(bundle.metadata, rows)
    length = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:length])
    number, category = features(bundle, "numeric")[0].name, features(bundle, "categorical")[0].name
    where = f"input '{number}' (inputs[{feature_index(bundle, number)}])"
    at = f"input '{category}' (inputs[{feature_index(bundle, category)}])"

    def with_head(change: Callable[[Request], Any], data: bytes = body[length:]) -> tuple[bytes, dict[str, str]]:
        changed = copy.deepcopy(head)
        change(changed)
        text = json.dumps(changed).encode()
        return text + data, {"Inference-Header-Content-Length": str(len(text))}

    def size_of(name: str, size: int) -> Callable[[Request], None]:
        return lambda r: input_named(r, name).__setitem__("parameters", {"binary_data_size": size})

    def category_data(data: bytes) -> tuple[bytes, dict[str, str]]:
        """The request with the category's binary data replaced by ``data``."""
        start = sum(t["parameters"]["binary_data_size"] for t in head["inputs"][: feature_index(bundle, category)])
        old = input_named(head, category)["parameters"]["binary_data_size"]
        rest = body[length:]
        return with_head(size_of(category, len(data)), rest[:start] + data + rest[start + old :])

    cases = {
        "truncated": (body[:-5], headers, "bytes of binary data are left"),
        "trailing bytes": (body + b"\0" * 3, headers, "body: 3 bytes of binary data after the inputs'"),
        "header longer than the body": (
            body, {"Inference-Header-Content-Length": str(len(body) + 1)},
            f"Inference-Header-Content-Length: {len(body) + 1} bytes of JSON header, but the body has only {len(body)}",
        ),
        "header not a number": (
            body, {"Inference-Header-Content-Length": "12a"}, "must be the JSON header's length in bytes, not '12a'"
        ),
        "negative header": (body, {"Inference-Header-Content-Length": "-1"}, "not '-1'"),
        "header cutting the JSON": (body, {"Inference-Header-Content-Length": str(length - 1)}, "body: malformed JSON"),
        "size not the shape's": (
            *with_head(size_of(number, 16), body[length:][:16] + body[length:][24:]),
            f"{where}: binary_data_size 16 is not 3 FP64 values of 8 bytes (24) for shape [3]",
        ),
        "size not a number": (
            *with_head(lambda r: input_named(r, number).__setitem__("parameters", {"binary_data_size": "24"})),
            "binary_data_size must be a whole number of bytes, not '24'",
        ),
        "element past its input's data": (
            *category_data(encoded("BYTES", ["a", "b"]) + struct.pack("<I", 9) + b"ab"),
            f"{at}: element 2 is 9 bytes long, but only 2 of its binary_data_size are left",
        ),
        "length prefix cut": (
            *category_data(encoded("BYTES", ["a", "b"]) + b"\1\0"),
            f"{at}: its 12 bytes of binary data end before element 2's",
        ),
        "bytes after the elements": (
            *category_data(encoded("BYTES", ["a", "b", "c", "d"])),
            f"{at}: 5 bytes of binary data left after its 3 elements",
        ),
        "not UTF-8": (
            *category_data(encoded("BYTES", ["a", "b"]) + b"\2\0\0\0\xff\xfe"), f"{at}: element 2 is not UTF-8 text"
        ),
        "a value refused as in JSON": (
            *category_data(encoded("BYTES", ["a", "b", "Atlantis"])),
            f"input {category}, row 0: Input should be",
        ),
        "too many rows": (
            *with_head(lambda r: input_named(r, number).__setitem__("shape", [MAX_ROWS + 1])),
            f"input columns: at most {MAX_ROWS} rows per request (MAX_BATCH_RECORDS), not {MAX_ROWS + 1}",
        ),
        "another datatype": (
            *with_head(lambda r: input_named(r, number).__setitem__("datatype", "UINT8")),
            "datatype UINT8 does not fit its numeric feature",
        ),
    }  # fmt: skip
    route_errors = f'prediction_errors_total{{reason="invalid",route="{INFER_ROUTE}"}}'
    before = metric(client, route_errors)
    for case, (content, case_headers, message) in cases.items():
        answer = client.post(INFER, content=content, headers=case_headers)
        assert answer.status_code == 400, (case, answer.text)
        assert set(answer.json()) == {"error"} and message in answer.json()["error"], (case, answer.json())
    assert metric(client, route_errors) == before + len(cases)
    text_plain = client.post(INFER, content=body, headers={**headers, "Content-Type": "text/plain"})
    assert (
        text_plain.status_code == 415
        and "application/octet-stream, application/json or none" in text_plain.json()["error"]
    )


def test_what_no_route_answers_under_v2_is_in_the_v2_shape(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton-only endpoints, unknown paths and other methods: the protocol's error body, so clients decode it."""
    for method, path in [
        ("POST", "/v2/repository/index"),
        ("GET", f"{MODEL}/config"),
        ("GET", f"{MODEL}/stats"),
        ("GET", "/v2/models/x/versions/1/config"),
        ("POST", "/v2/anything"),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 404, path
        assert answer.json() == {"error": f"no endpoint {method} {path} on this server"}
    wrong = client.get(INFER)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json() == {"error": f"GET is not allowed on {INFER}; allowed: POST"}
    assert client.get("/v2x").json() == {"detail": "Not Found"}  # elsewhere, FastAPI's own
    assert client.get("/nowhere").json() == {"detail": "Not Found"}

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(v2, "model_metadata", broken)
    failed = client.get(MODEL, headers={"X-Request-ID": "v2-boom"})
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal server error (request id v2-boom)"}


# --- the columnar validation shares the records API's rules ---


def tricky_metadata() -> Metadata:
    features = [
        Feature(name="x", kind="numeric", dtype="float", minimum=0.0, maximum=10.0),
        Feature(name="k", kind="numeric", dtype="int", minimum=0, maximum=5),
        Feature(name="c", kind="categorical", dtype="str", categories=["a", "b"]),
        Feature(name="d", kind="date", dtype="date", minimum="2020-01-01", maximum="2021-01-01",
                observed_minimum="2020-01-01", observed_maximum="2020-06-01"),
    ]  # fmt: skip
    return metadata_for(features, {"x": 1.0, "k": 1, "c": "a", "d": "2020-02-02"})


TRICKY = {
    "x": [1, 1.5, -0.0, 10, 11, -1e-300, True, "1", None, [1], {"a": 1}, 10**30, math.nan, math.inf],
    "k": [1, 1.0, 5.0, 1.5, True, "1", 2**70, 3.0000000001, None],
    "c": ["a", "A", "a ", 1, None, True],
    "d": ["2020-02-02", "2020-02-30", "2019-12-31", "2021-01-02", 20200202, "2020-2-2", " 2020-02-02"],
}


@pytest.mark.parametrize(("name", "value"), [(name, v) for name, values in TRICKY.items() for v in values])
def test_parse_columns_accepts_and_refuses_what_parse_batch_does(name: str, value: Any) -> None:
    metadata = tricky_metadata()
    schema = RecordSchema.from_metadata(metadata, 5)
    record = {**metadata.example, name: value}
    outcome = columnar(schema, {k: [metadata.example[k], v] for k, v in record.items()})
    assert outcome == batched(schema, [metadata.example, record])
    if isinstance(outcome[0], tuple) and not isinstance(outcome[0][0], str):  # accepted: the same values and types
        assert [tuple(map(type, row)) for row in outcome] == [
            tuple(map(type, row)) for row in batched(schema, [metadata.example, record])
        ]


def batched(schema: RecordSchema, records: list[dict[str, Any]]) -> list[Any]:
    """The rows ``parse_batch`` makes of ``records``, or its refusals as (field, type)."""
    try:
        return schema.parse_batch(json.dumps({"records": records}).encode())
    except RequestError as exc:
        return [(e["loc"][-1], e["type"]) for e in exc.errors]


def columnar(schema: RecordSchema, columns: dict[str, list[Any]]) -> list[Any]:
    """The rows ``parse_columns`` makes of ``columns``, or its refusals as (column, type), each naming its row."""
    try:
        return schema.parse_columns(columns)
    except RequestError as exc:
        errors = exc.errors
    assert all(e["row"] == 1 and e["msg"].startswith(f"{e['field']}, row 1: ") for e in errors), errors
    return [(e["loc"][0], e["type"]) for e in errors]


def edge_metadata() -> Metadata:
    """Every kind of feature, with limits and without."""
    features = [
        Feature(name="x", kind="numeric", dtype="float", minimum=-2.5, maximum=10.0),
        Feature(name="free", kind="numeric", dtype="float"),
        Feature(name="k", kind="numeric", dtype="int", minimum=0, maximum=5),
        Feature(name="n", kind="numeric", dtype="int"),
        Feature(name="c", kind="categorical", dtype="str", categories=["a", "b", "with space", "a:b,c", "é"]),
        Feature(name="d", kind="date", dtype="date", minimum="2020-01-01", maximum="2024-02-29",
                observed_minimum="2020-03-01", observed_maximum="2023-06-30"),
        Feature(name="any day", kind="date", dtype="date"),
    ]  # fmt: skip
    example = {"x": 1.0, "free": 1.0, "k": 1, "n": 1, "c": "a", "d": "2020-02-02", "any day": "2020-02-02"}
    return metadata_for(features, example)


EDGES: Final[dict[str, list[Any]]] = {  # each feature's edge values; a row takes the (row % len)-th
    "x": [-2.5, 10.0, 10, -2, 0, -0.0, 0.1, 5e-324, 9.999999999999998, -2.4999999999999996],
    "free": [-1.7976931348623157e308, 1.7976931348623157e308, 0, -0.0, 2**53, -(2**53), 5e-324, 3.0, 1e-300],
    "k": [0, 5, 0.0, 5.0, 3.0, 1, 2, -0.0, 4.0],
    "n": [2**53, -(2**53), 2.0**53, -(2.0**53), 0, -0.0, 7.0, -7, 123456789012345],
    "c": ["a", "b", "with space", "a:b,c", "é"],
    "d": ["2020-01-01", "2024-02-29", "2020-02-29", "2022-12-31", "2023-01-01"],
    "any day": ["0001-01-01", "9999-12-31", "2000-02-29", "1900-03-01", "2024-02-29", "1970-01-01"],
}


def edge_columns(rows: int) -> dict[str, list[Any]]:
    return {name: [values[row % len(values)] for row in range(rows)] for name, values in EDGES.items()}


def record_rows(schema: RecordSchema, columns: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
    """The rows the record-dict path makes of ``columns`` (a dict per row, ``quick_rows``, then the batch model),
    each way; they must agree."""
    records = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    quick = schema.quick_rows({"records": records})
    batch = schema.batch_model.__pydantic_validator__.validate_python({"records": records})
    by_model = [tuple(record.__dict__.values()) for record in batch.records]
    assert quick == by_model and quick is not None
    assert [tuple(map(type, row)) for row in quick] == [tuple(map(type, row)) for row in by_model]
    return quick


@pytest.mark.parametrize("rows", [1, 7, 90])
def test_valid_columns_are_validated_as_columns_into_the_values_the_records_give(rows: int) -> None:
    """Limits, whole floats for integral features, every category, days at the limits: ``quick_columns`` (one list
    per column) accepts them, and ``parse_columns`` returns exactly the rows the record-dict path makes, each value
    of the same type (an integral feature's 3.0 is the int 3, a float feature's 10 is the float 10.0)."""
    schema = RecordSchema.from_metadata(edge_metadata(), 100)
    columns = edge_columns(rows)
    expected = record_rows(schema, columns)
    assert schema.quick_columns(columns) == expected  # the columnar path, not a fallback
    parsed = schema.parse_columns(columns)
    assert parsed == expected
    assert [tuple(map(type, row)) for row in parsed] == [tuple(map(type, row)) for row in expected]
    assert [list(map(repr, row)) for row in parsed] == [list(map(repr, row)) for row in expected]  # -0.0 stays -0.0
    if rows == 90:  # every edge value is in some row
        assert {type(v) for v in schema.columns(parsed)["k"]} == {int}
        assert {type(v) for v in schema.columns(parsed)["x"]} == {float}
        assert set(schema.columns(parsed)["c"]) == set(EDGES["c"])
    # tuples are columns too, and give the same rows
    assert schema.parse_columns({name: tuple(values) for name, values in columns.items()}) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [("x", 10.000000000000002), ("x", "1"), ("x", True), ("k", 5.5), ("k", 6), ("k", True), ("n", 2**53 + 1),
     ("n", 2.0**54), ("free", math.nan), ("free", -math.inf), ("c", "A"), ("c", None), ("d", "2019-12-31"),
     ("d", "2024-03-01"), ("d", "2021-02-29"), ("any day", "2023-02-29"), ("any day", "2020-1-01"),
     ("any day", 20200101)],
)  # fmt: skip
def test_a_column_refused_as_a_column_is_refused_by_the_records_with_their_errors(name: str, value: Any) -> None:
    """One bad value in one column: the columnar path refuses it, and ``parse_columns`` answers what the batch
    model says of the records (``loc`` [column, row], the message naming both)."""
    schema = RecordSchema.from_metadata(edge_metadata(), 100)
    columns = edge_columns(12)
    columns[name][9] = value
    assert schema.quick_columns(columns) is None
    records = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    assert schema.quick_rows({"records": records}) is None
    with pytest.raises(RequestError) as refused:
        schema.parse_columns(columns)
    [error] = refused.value.errors
    assert error["loc"] == [name, 9] and error["row"] == 9 and error["field"] == name
    assert error["msg"].startswith(f"{name}, row 9: ") and refused.value.more == 0


def test_refusals_from_columns_are_listed_row_by_row_and_counted_as_from_records() -> None:
    """Many refusals: listed in the records' order (each row's fields, row after row), the first ``max_errors``,
    the rest counted, exactly as the batch model lists them for the same records."""
    features = [Feature(name=f"x{i}", kind="numeric", dtype="float") for i in range(3)]
    schema = RecordSchema.from_metadata(metadata_for(features, {f.name: 1.0 for f in features}), 100, max_errors=4)
    columns: dict[str, list[Any]] = {"x0": [1.0, "no", 2.0, "no"], "x1": ["no", "no", 3.0, 4.0], "x2": [1.0] * 4}
    with pytest.raises(RequestError) as refused:
        schema.parse_columns(columns)
    assert [error["loc"] for error in refused.value.errors] == [["x1", 0], ["x0", 1], ["x1", 1], ["x0", 3]]
    assert refused.value.more == 0
    few = RecordSchema.from_metadata(metadata_for(features, {f.name: 1.0 for f in features}), 100, max_errors=2)
    with pytest.raises(RequestError) as refused:
        few.parse_columns(columns)
    assert [error["loc"] for error in refused.value.errors] == [["x1", 0], ["x0", 1]] and refused.value.more == 2
    assert refused.value.errors[0] == {
        "loc": ["x1", 0],
        "field": "x1",
        "row": 0,
        "msg": "x1, row 0: Input should be a valid number",
        "type": "float_type",
    }


# --- the OpenAPI document ---


def test_the_openapi_document_describes_the_v2_routes(client: TestClient, bundle: Bundle) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready"):
        assert "get" in paths[path], path
    assert "get" in paths["/v2/models/{name}/versions/{version}/ready"]
    for path in (INFER_ROUTE, "/v2/models/{name}/versions/{version}/infer"):
        operation = paths[path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/V2InferRequest"}
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("InferResponse")
        assert operation["responses"]["200"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
        for status in ("400", "404", "413", "415", "503"):
            assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "ErrorResponse"
            )
        [name] = [p for p in operation["parameters"] if p["name"] == "name"]
        assert name["schema"]["enum"] == [NAME]
    [version] = [
        p for p in paths["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"] if p["name"] == "version"
    ]
    assert version["schema"]["enum"] == [str(VERSION)]
    schema = document["components"]["schemas"]["V2InferRequest"]
    inputs = schema["properties"]["inputs"]["prefixItems"]
    assert [i["properties"]["name"]["const"] for i in inputs] == [f.name for f in bundle.metadata.features]
    [example] = schema["examples"]
    jsonschema.Draft202012Validator(schema).validate(example)
    jsonschema.Draft202012Validator(schema).validate({**example, "model_name": NAME, "other": 1})  # as served
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({**example, "model_name": "other"})
    answer = client.post(INFER, json=example)
    assert answer.status_code == 200
    expected = bundle.predict({k: [v] for k, v in bundle.metadata.example.items()})
    assert bits(answer.json()["outputs"][0]["data"]) == bits(expected)
    bad = copy.deepcopy(example)
    input_named(bad, limited(bundle).name)["data"] = [float(limited(bundle).maximum or 0) + 1]
    with pytest.raises(jsonschema.ValidationError):  # the limits are in the document as in the records API's
        jsonschema.Draft202012Validator(schema).validate(bad)


# --- real V2 clients (Triton's, KServe's), with their defaults, against a real uvicorn process ---


@pytest.fixture(scope="module")
def server_url(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real uvicorn process serving the bundle (MODEL_VERSION set)."""
    port = free_port()
    args = [str(BIN / "uvicorn"), "app.main:app", "--host", LOOPBACK, "--port", str(port)]
    env = {"BUNDLE_DIR": str(bundle_dir), "MODEL_VERSION": str(VERSION)}
    log = tmp_path_factory.mktemp("v2-server") / "server.log"
    with running(args, f"http://{LOOPBACK}:{port}/v2/health/ready", env=env, timeout=60, log=log):
        yield f"{LOOPBACK}:{port}"


@pytest.mark.integration
def test_tritonclient_with_its_defaults_against_a_real_uvicorn_process(server_url: str, bundle: Bundle) -> None:
    """tritonclient.http as its users call it: binary inputs and outputs, no Content-Type, no extra header; then
    JSON tensor data; its refusals (a value, another model, Triton-only endpoints) decoded with our message."""
    import tritonclient.http as triton  # type: ignore[import-untyped]  # no stubs or py.typed
    from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

    client = triton.InferenceServerClient(server_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        assert client.is_model_ready(NAME) and client.is_model_ready(NAME, str(VERSION))
        metadata = client.get_model_metadata(NAME)
        assert [i["name"] for i in metadata["inputs"]] == [f.name for f in bundle.metadata.features]

        rows = records(bundle.metadata, 64, seed=8)
        columns = column_values(rows)
        expected = bits(bundle.predict(columns))

        def inputs(values: dict[str, list[Any]], *, binary: bool = True) -> list[triton.InferInput]:
            tensors = []
            for item in metadata["inputs"]:
                numbers = item["datatype"] != "BYTES"
                array = np.asarray(values[item["name"]], dtype=np.float64 if numbers else np.object_)
                tensor = triton.InferInput(item["name"], list(array.shape), item["datatype"])
                tensor.set_data_from_numpy(array, binary_data=binary)
                tensors.append(tensor)
            return tensors

        default = client.infer(NAME, inputs(columns))  # binary inputs, binary_data_output: the client's defaults
        assert default.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 8 * len(rows)
        assert bits(default.as_numpy("predict")) == expected
        requested = client.infer(
            NAME, inputs(columns), outputs=[triton.InferRequestedOutput("predict")], model_version=str(VERSION)
        )  # the output asked for by name, binary by default
        assert bits(requested.as_numpy("predict")) == expected
        as_json = client.infer(
            NAME,
            inputs(columns, binary=False),
            request_id="triton-1",
            outputs=[triton.InferRequestedOutput("predict", binary_data=False)],
        )
        assert as_json.get_response()["id"] == "triton-1" and "data" in as_json.get_response()["outputs"][0]
        assert bits(as_json.as_numpy("predict")) == expected

        bounded = limited(bundle)
        bad = {**columns, bounded.name: [*columns[bounded.name][:5], float(bounded.maximum or 0) + 1]}
        bad[bounded.name] += columns[bounded.name][6:]
        with pytest.raises(InferenceServerException, match=f"input {bounded.name}, row 5: Input should be less"):
            client.infer(NAME, inputs(bad))
        with pytest.raises(InferenceServerException, match="model 'other' is not served here") as other:
            client.infer("other", inputs(columns))
        assert other.value.status() == "404"
        for call, endpoint in [
            (client.get_model_repository_index, "POST /v2/repository/index"),
            (lambda: client.get_model_config(NAME), f"GET /v2/models/{NAME}/config"),
            (lambda: client.get_inference_statistics(NAME), f"GET /v2/models/{NAME}/stats"),
        ]:
            with pytest.raises(InferenceServerException) as refusal:
                call()
            assert refusal.value.message() == f"no endpoint {endpoint} on this server"
            assert refusal.value.status() == "404"
    finally:
        client.close()


KSERVE: Final = "kserve==0.21.*"
# Run in the KServe venv: argv is the server's URL, the model's name, the columns (JSON) and where to write what the
# SDK saw (JSON; each prediction array as the hex of its float64 bytes).
KSERVE_SCRIPT: Final = """
import asyncio, json, sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse

url, name, columns_file, out_file = sys.argv[1:]
columns = json.load(open(columns_file))


async def main():
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    seen = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, name),
        "other_ready": await client.is_model_ready(url, "other"),
    }
    async with httpx.AsyncClient() as http:  # the REST client has no metadata call: KServe's own models parse it
        server = ServerMetadataResponse.model_validate((await http.get(url + "/v2")).json())
        model = ModelMetadataResponse.model_validate((await http.get(url + "/v2/models/" + name)).json())
    seen["extensions"] = server.extensions
    seen["inputs"] = [[tensor.name, tensor.datatype] for tensor in model.inputs]

    def tensors(values, binary):
        result = []
        for item in model.inputs:
            column = values[item.name]
            tensor = InferInput(item.name, [len(column)], item.datatype, None if binary else column)
            if binary:  # the SDK's default: binary tensor data after the JSON
                dtype = np.object_ if item.datatype == "BYTES" else np.float64
                tensor.set_data_from_numpy(np.array(column, dtype=dtype))
            result.append(tensor)
        return result

    async def infer(request):
        headers = {}
        response = await client.infer(url, request, model_name=name, response_headers=headers)
        [output] = response.outputs
        return {
            "id": response.id, "model_name": response.model_name, "name": output.name, "shape": output.shape,
            "content_type": headers["content-type"], "bits": output.as_numpy().astype(np.float64).tobytes().hex(),
        }

    seen["json"] = await infer(InferRequest(name, tensors(columns, False), request_id="k-1"))
    binary_output = [RequestedOutput("predict", {"binary_data": True})]
    seen["binary"] = await infer(
        InferRequest(name, tensors(columns, True), request_id="k-2", request_outputs=binary_output)
    )
    for case, request, path_name in [
        ("other", InferRequest("other", tensors(columns, False)), "other"),
        ("mismatch", InferRequest("other", tensors(columns, False)), name),
    ]:
        try:
            await client.infer(url, request, model_name=path_name)
            seen[case] = None
        except httpx.HTTPStatusError as exc:
            seen[case] = [exc.response.status_code, str(exc)]
    await client.close()
    json.dump(seen, open(out_file, "w"))


asyncio.run(main())
"""


def kserve_python(root: Path) -> Path:
    """A venv holding the KServe SDK (it cannot join the locked environment: kserve requires psutil<6, Airflow's
    task SDK psutil>=6.1), made with uv; its wheels come from uv's cache after the first run (PyPI the first
    time)."""
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", str(root), "--python", sys.executable, "--quiet"], check=True, timeout=120)
    python = root / "bin" / "python"
    install = [*uv, "pip", "install", "--quiet", "--python", str(python), KSERVE]
    subprocess.run(install, check=True, timeout=600)
    return python


@pytest.mark.integration
def test_the_kserve_sdk_against_a_real_uvicorn_process(server_url: str, bundle: Bundle, tmp_path: Path) -> None:
    """KServe's own client (InferenceRESTClient, InferRequest with model_name in the body, binary and JSON inputs)
    in its own venv: health, readiness, metadata and predictions equal to Bundle.predict, refusals as KServe's
    client reports them."""
    python = kserve_python(tmp_path / "kserve-venv")
    rows = records(bundle.metadata, 32, seed=9)
    columns = column_values(rows)
    (tmp_path / "columns.json").write_text(json.dumps(columns))
    script = [str(python), "-c", KSERVE_SCRIPT, f"http://{server_url}", NAME, str(tmp_path / "columns.json")]
    run = subprocess.run([*script, str(tmp_path / "seen.json")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["live"] is True and seen["ready"] is True and seen["model_ready"] is True
    assert seen["other_ready"] is False
    assert seen["extensions"] == ["binary_tensor_data"]
    assert seen["inputs"] == [[f.name, datatype(f)] for f in bundle.metadata.features]
    expected = bits(bundle.predict(columns)).hex()
    answer = {"model_name": NAME, "name": "predict", "shape": [32], "bits": expected}
    assert seen["json"] == {**answer, "id": "k-1", "content_type": "application/json"}
    assert seen["binary"] == {**answer, "id": "k-2", "content_type": "application/octet-stream"}  # decoded by the SDK
    status, message = seen["other"]
    assert status == 404 and "model 'other' is not served here" in message
    status, message = seen["mismatch"]
    assert status == 400 and f"model_name 'other' in the body is not the model of the path, '{NAME}'" in message


def test_parameters_are_the_protocols_scalars_and_the_document_says_what_the_server_takes(
    client: TestClient, bundle: Bundle
) -> None:
    """``parameters`` may be null or up to 16 string, number or boolean values, in the document as in the server;
    anything else is a 400 naming it (a schema fuzzer found null accepted where the document forbade it)."""
    request = infer_request(bundle.metadata, records(bundle.metadata, 2, seed=12))
    request["outputs"] = [{"name": "predict", "parameters": None}]
    request["parameters"] = {"binary_data_output": False, "priority": 1, "note": "a:b"}
    assert client.post(INFER, json=request).status_code == 200
    document = client.get("/openapi.json").json()
    body = document["components"]["schemas"]["V2InferRequest"]
    output_parameters = body["properties"]["outputs"]["items"]["properties"]["parameters"]
    assert {"type": "null"} in output_parameters["anyOf"] and body["properties"]["parameters"] == output_parameters
    for refused in ({"nested": {"a": 1}}, {f"p{i}": 1 for i in range(17)}, {"long": "x" * 257}):
        answer = client.post(INFER, json={**request, "parameters": refused})
        assert answer.status_code == 400 and answer.json()["error"].startswith("parameters"), answer.json()
