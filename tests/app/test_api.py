"""The prediction server's endpoints and statuses, in process and as a real uvicorn process."""

from __future__ import annotations

import gc
import json
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from starlette.types import ASGIApp, Message, Scope

from app.contract.bundle import (
    METADATA_FILE,
    MODEL_FILE,
    Bundle,
    BundleError,
    content_hash,
    load_bundle,
    read_metadata,
)
from app.contract.registry import TAG_CONTENT_HASH
from app.model.schema import RecordSchema
from tests.harness.services import BIN, LOOPBACK, free_port, running
from tests.harness.serving import ready_client, records, settings_for, wait_ready


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def client(bundle_dir: Path) -> Iterator[TestClient]:
    with ready_client(settings_for(bundle_dir, max_batch_records=50, max_body_bytes=20_000)) as client:
        yield client


def column_values(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in rows[0]}


# --- health and readiness ---


def test_live_at_once_ready_only_after_a_bundle_appears(bundle_dir: Path, tmp_path: Path) -> None:
    later = tmp_path / "later"
    with ready_client(settings_for(later), wait=False) as client:
        assert client.get("/health/live").json() == {"status": "alive"}
        not_ready = client.get("/health/ready")
        assert not_ready.status_code == 503
        assert "does not exist" in not_ready.json()["reason"]
        assert client.post("/predict", json={}).status_code == 503
        assert client.get("/model").status_code == 503
        shutil.copytree(bundle_dir, later)
        wait_ready(client, timeout=20)
        ready = client.get("/health/ready").json()
        assert ready["status"] == "ready" and ready["bundle_hash"] == load_bundle(later).content_hash


def test_tampered_bundle_stays_unready_with_the_reason(bundle_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    with (broken / MODEL_FILE).open("ab") as fh:
        fh.write(b"tampered")
    with ready_client(settings_for(broken), wait=False) as client:
        time.sleep(1.0)  # past the first retry: still refused
        response = client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "failed"
        assert f"{MODEL_FILE} does not match its recorded sha256" in response.json()["reason"]
        predict = client.post("/predict", json={})
        assert predict.status_code == 503 and "sha256" in predict.json()["detail"]


def test_a_bundle_that_fails_to_load_otherwise_is_reported_not_left_loading(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every hash holds, but the metadata names a feature the serving form does not encode: refused by name. And a
    failure that is no BundleError at all (here the schema's, forced) is reported too, not left loading."""
    odd = tmp_path / "odd"
    shutil.copytree(bundle_dir, odd)
    metadata = read_metadata(odd)
    first = metadata.features[0].name
    features = [f.model_copy(update={"name": "renamed"}) if f.name == first else f for f in metadata.features]
    example = {("renamed" if name == first else name): value for name, value in metadata.example.items()}
    forged = metadata.model_copy(update={"features": features, "example": example})
    forged = forged.model_copy(update={"content_hash": content_hash(forged)})
    (odd / METADATA_FILE).write_text(forged.model_dump_json())

    def failed_reason(bundle: Path) -> str:
        with ready_client(settings_for(bundle), wait=False) as client:
            deadline = time.monotonic() + 20
            while (ready := client.get("/health/ready").json())["status"] == "loading" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready["status"] == "failed"
            return str(ready["reason"])

    assert "serving.npz encodes other features than metadata.json lists" in failed_reason(odd)

    def broken(*args: object, **kwargs: object) -> NoReturn:
        raise KeyError("a column")

    monkeypatch.setattr(RecordSchema, "from_metadata", broken)
    reason = failed_reason(bundle_dir)
    assert "does not load" in reason and "KeyError" in reason


def with_library_version(bundle_dir: Path, into: Path, library: str, version: str) -> Path:
    """A copy of the bundle whose metadata says it was trained with ``library`` ``version`` (re-hashed)."""
    shutil.copytree(bundle_dir, into)
    metadata = read_metadata(into)
    forged = metadata.model_copy(update={"library_versions": {**metadata.library_versions, library: version}})
    forged = forged.model_copy(update={"content_hash": content_hash(forged)})
    (into / METADATA_FILE).write_text(forged.model_dump_json())
    return into


def test_a_bundle_trained_with_other_library_versions_is_reported(
    bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another release of numpy's series (what the serving form's arrays depend on): served, and the difference
    reported. The server loads no scikit-learn or skops artifact, so their versions are not its concern."""
    ours = read_metadata(bundle_dir).library_versions["numpy"]
    patch = ".".join([*ours.split(".")[:2], "999"])
    other = with_library_version(bundle_dir, tmp_path / "other", "numpy", patch)
    other = with_library_version(other, tmp_path / "older-sklearn", "scikit-learn", "0.24.2")
    with caplog.at_level("WARNING", logger="app"), ready_client(settings_for(other)) as client:
        mismatch = client.get("/model").json()["library_mismatch"]
    assert mismatch == {"numpy": {"bundle": patch, "server": ours}}
    assert f"numpy {patch} (server " in caplog.text
    with pytest.raises(BundleError, match=r"scikit-learn 0\.24\.2 \(server "):
        load_bundle(other)  # training's loader reads the scikit-learn artifacts, and refuses the other series
    with ready_client(settings_for(bundle_dir)) as client:
        assert client.get("/model").json()["library_mismatch"] == {}


@pytest.mark.parametrize(("library", "version"), [("numpy", "1.26.4"), ("numpy", "3.0.0")])
def test_a_bundle_whose_stored_format_differs_is_refused(
    bundle_dir: Path, tmp_path: Path, library: str, version: str
) -> None:
    """Another release series of a library whose stored form changes between them: refused with the reason."""
    other = with_library_version(bundle_dir, tmp_path / "other", library, version)
    with ready_client(settings_for(other), wait=False) as client:
        deadline = time.monotonic() + 30
        while (ready := client.get("/health/ready")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert f"{library} {version} (server " in ready.json()["reason"]
        assert "same release series, or retrain" in ready.json()["reason"]
        assert client.post("/predict", json={}).status_code == 503


# --- predictions ---


def test_predictions_equal_the_bundles_own(client: TestClient, bundle: Bundle) -> None:
    rows = records(bundle.metadata, 40, seed=3)
    expected = bundle.predict(column_values(rows))
    singles = [client.post("/predict", json=row).json() for row in rows]
    assert [s["prediction"] for s in singles] == expected.tolist()
    assert {s["bundle_hash"] for s in singles} == {bundle.content_hash}
    assert singles[0]["model_version"] is None
    batch = client.post("/predict/batch", json={"records": rows}).json()
    assert batch["predictions"] == expected.tolist()
    assert batch["bundle_hash"] == bundle.content_hash


def test_batch_over_the_record_limit_is_422_naming_the_limit(client: TestClient, bundle: Bundle) -> None:
    rows = records(bundle.metadata, 51)
    response = client.post("/predict/batch", json={"records": rows})
    assert response.status_code == 422
    assert "at most 50 records" in response.json()["detail"][0]["msg"]
    assert client.post("/predict/batch", json={"records": rows[:50]}).status_code == 200


def test_oversize_body_is_413_by_length_and_while_streaming(client: TestClient, bundle: Bundle) -> None:
    body = json.dumps({"records": records(bundle.metadata, 1) * 200}).encode()
    assert len(body) > 20_000
    declared = client.post("/predict/batch", content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "MAX_BODY_BYTES" in declared.json()["detail"][0]["msg"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count what streams in
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    streamed = client.post("/predict/batch", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_only_json_bodies_are_read(client: TestClient, bundle: Bundle) -> None:
    """text/plain (a CORS-safelisted type a browser may POST across origins) and friends are a 415."""
    body = json.dumps(bundle.metadata.example).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):
        headers = {} if content_type is None else {"content-type": content_type}
        for path in ("/predict", "/predict/batch"):
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == 415, (path, content_type)
            assert "application/json" in response.json()["detail"][0]["msg"]
    for content_type in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
        assert client.post("/predict", content=body, headers={"content-type": content_type}).status_code == 200
    invalid = client.get("/metrics").text
    assert 'prediction_errors_total{reason="invalid",route="/predict"}' in invalid


def test_a_client_that_disconnects_mid_body_is_not_a_server_error(
    bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages: list[Message] = [{"type": "http.request", "body": b'{"time": 1', "more_body": True}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), (b"content-length", b"500")],
        "client": (LOOPBACK, 50000), "server": (LOOPBACK, 80),
    }  # fmt: skip
    with ready_client(settings_for(bundle_dir)) as client, caplog.at_level("INFO", logger="app"):
        app: ASGIApp = client.app

        async def call() -> None:
            await app(scope, receive, send)

        assert client.portal is not None
        client.portal.call(call)
        metrics = client.get("/metrics").text
    assert not any(m["type"] == "http.response.start" for m in sent)  # nobody left to answer
    assert "unhandled error" not in caplog.text and "Traceback" not in caplog.text
    assert 'status="500"' not in metrics
    assert 'http_requests_total{method="POST",route="/predict",status="499"} 1.0' in metrics
    assert 'prediction_errors_total{reason="disconnected",route="/predict"} 1.0' in metrics


def test_malformed_json_is_400_not_500(client: TestClient) -> None:
    for body in (b"{bad", b"", b'{"time": 1,', b"\xff\xfe"):
        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, body
        assert response.json()["detail"][0]["type"] == "json_invalid"
    assert client.post("/predict/batch", content=b"[", headers={"content-type": "application/json"}).status_code == 400


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"time": None}, "time", "valid number"),
        ({"time": "3.5"}, "time", "valid number"),
        ({"time": 10_000.0}, "time", "less than or equal to 24"),
        ({"distance": -1}, "distance", "greater than or equal to 1"),
        ({"agency": "NoSuchAgency"}, "agency", "Input should be"),
        ({"agency": 3}, "agency", "Input should be"),
        ({"date": "2023-02-30"}, "date", "day is out of range"),
        ({"date": "2023/01/05"}, "date", "should match pattern"),
        ({"unexpected": 1}, "unexpected", "Extra inputs are not permitted"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(
    client: TestClient, bundle: Bundle, change: dict[str, Any], field: str, fragment: str
) -> None:
    record = {**bundle.metadata.example, **change}
    response = client.post("/predict", json=record)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == field and error["msg"].startswith(f"{field}: ") and fragment in error["msg"]


def test_missing_field_and_non_finite_numbers_are_422(client: TestClient, bundle: Bundle) -> None:
    record = dict(bundle.metadata.example)
    del record["distance"]
    [missing] = client.post("/predict", json=record).json()["detail"]
    assert missing["msg"] == "distance: Field required"
    for token in ("NaN", "Infinity", "-Infinity"):
        body = json.dumps(bundle.metadata.example)[:-1] + f', "time": {token}}}'  # duplicate key: last wins
        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, token
        assert any(e["field"] == "time" and "finite" in e["msg"] for e in response.json()["detail"])


def test_batch_errors_name_the_record_and_field(client: TestClient, bundle: Bundle) -> None:
    rows = records(bundle.metadata, 3)
    rows[2] = {**rows[2], "flight_type": "rocket"}
    response = client.post("/predict/batch", json={"records": rows})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "flight_type" and error["msg"].startswith("records[2].flight_type: ")
    assert client.post("/predict/batch", json={"records": []}).status_code == 422
    assert client.post("/predict/batch", json=rows).status_code == 422  # not wrapped in {"records": ...}


def test_request_id_is_honoured_or_made(client: TestClient, bundle: Bundle) -> None:
    given = client.post("/predict", json=bundle.metadata.example, headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = client.get("/health/live")
    assert len(made.headers["x-request-id"]) == 32
    hostile = client.get("/health/live", headers={"X-Request-ID": "a b\tc" * 40})
    assert hostile.headers["x-request-id"] != "a b\tc" * 40
    error = client.post("/predict", json={}, headers={"X-Request-ID": "trace-43"})
    assert error.json()["request_id"] == "trace-43"


def test_unexpected_failure_is_500_with_request_id_and_no_internals(
    bundle_dir: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ready_client(settings_for(bundle_dir)) as client:
        model = client.app.state.serving.model  # type: ignore[attr-defined]

        def fail(columns: object) -> None:
            raise RuntimeError("internal detail: /secret/path")

        monkeypatch.setattr(model.bundle.form, "predict", fail)
        for path, body in (
            ("/predict", bundle.metadata.example),
            ("/predict/batch", {"records": [bundle.metadata.example]}),
        ):
            response = client.post(path, json=body, headers={"X-Request-ID": "boom-1"})
            assert response.status_code == 500
            assert response.json() == {"detail": "internal server error", "request_id": "boom-1"}
            assert "secret" not in response.text
        monkeypatch.undo()
        assert client.post("/predict", json=bundle.metadata.example).status_code == 200  # the batcher carries on


def test_prediction_routes_are_served_directly_and_answer_as_the_app_does(
    bundle_dir: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /predict`` and ``/predict/batch`` skip the router (``DirectRoutes``): the same answers, refusals
    rendered as every route's, the request's route in the metrics; other methods on those paths still reach the
    router."""
    with ready_client(settings_for(bundle_dir, max_batch_records=5)) as client:
        router = client.app.router  # type: ignore[attr-defined]
        routed: list[str] = []
        inner = router.middleware_stack

        async def counting(scope: Scope, receive: Any, send: Any) -> None:
            routed.append(f"{scope['method']} {scope['path']}")
            await inner(scope, receive, send)

        monkeypatch.setattr(router, "middleware_stack", counting)
        example = bundle.metadata.example
        assert (
            client.post("/predict", json=example).json()["prediction"]
            == bundle.predict({k: [v] for k, v in example.items()})[0]
        )
        assert client.post("/predict/batch", json={"records": [example] * 2}).status_code == 200
        assert client.post("/predict", json={**example, "unexpected": 1}).status_code == 422  # app.api.errors renders
        assert client.post("/predict/batch", json={"records": [example] * 6}).status_code == 422
        assert routed == []
        assert client.get("/predict").status_code == 405  # not a direct route: the router answers
        assert client.get("/health/live").status_code == 200
        assert routed == ["GET /predict", "GET /health/live"]
        metrics = client.get("/metrics").text
        assert 'http_requests_total{method="POST",route="/predict",status="200"} 1.0' in metrics
        assert 'http_requests_total{method="POST",route="/predict",status="422"} 1.0' in metrics
        assert 'http_requests_total{method="POST",route="/predict/batch",status="422"} 1.0' in metrics


def test_once_a_model_is_served_the_live_objects_are_out_of_the_collectors_view(bundle_dir: Path) -> None:
    gc.unfreeze()
    with ready_client(settings_for(bundle_dir)) as client:
        assert client.get("/health/ready").status_code == 200
        frozen = gc.get_freeze_count()
        form = client.app.state.serving.model.bundle.form  # type: ignore[attr-defined]
        assert frozen > 10_000  # the modules and the model, not a handful
        assert all(o is not form for o in gc.get_objects())  # the collector no longer walks it


# --- model and registry view ---


def test_model_without_registry(client: TestClient, bundle: Bundle) -> None:
    body = client.get("/model").json()
    assert body["bundle_hash"] == bundle.content_hash
    assert body["data_hash"] == bundle.metadata.data_hash
    assert body["metrics"] == bundle.metadata.metrics
    assert body["metadata"]["features"][0]["name"] == bundle.metadata.features[0].name
    assert body["registry"] == "unavailable" and "MLFLOW_TRACKING_URI is not set" in body["reason"]


def test_registry_credentials_never_reach_model_or_logs(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = "registry-password-never-shown"
    uri = f"http://reader:{password}@{LOOPBACK}:{free_port()}"  # unreachable: the error text names the URI
    settings = settings_for(bundle_dir, log_format="json").model_copy(
        update={"mlflow_tracking_uri": uri, "registry_timeout_s": 1.0}
    )
    from app.api.server import create_app

    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        body = client.get("/model").json()
        assert body["registry"] == "unavailable" and "unreachable" in body["reason"]
        assert "***@" in body["reason"] and password not in json.dumps(body)
    assert password not in capsys.readouterr().err


def test_model_with_unreachable_registry(bundle_dir: Path) -> None:
    settings = settings_for(bundle_dir).model_copy(
        update={"mlflow_tracking_uri": f"http://{LOOPBACK}:{free_port()}", "registry_timeout_s": 1.0}
    )
    with ready_client(settings) as client:
        started = time.monotonic()
        body = client.get("/model").json()
        assert body["registry"] == "unavailable" and "unreachable" in body["reason"]
        assert time.monotonic() - started < 3
        assert client.post("/predict", json=load_bundle(bundle_dir).metadata.example).status_code == 200


def test_model_registry_view_from_a_real_mlflow_server(mlflow_uri: str, bundle_dir: Path, bundle: Bundle) -> None:
    client = MlflowClient(tracking_uri=mlflow_uri)
    name = f"serve-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    client.create_model_version(name, source="s3://mlflow/none/1", tags={TAG_CONTENT_HASH: "another-bundle"})
    client.create_model_version(name, source="s3://mlflow/none/2", tags={TAG_CONTENT_HASH: bundle.content_hash})
    client.set_registered_model_alias(name, "champion", "2")
    settings = settings_for(bundle_dir).model_copy(
        update={"mlflow_tracking_uri": mlflow_uri, "model_name": name, "registry_timeout_s": 60.0}  # a loaded CI box
    )
    with ready_client(settings) as api:
        body = api.get("/model").json()
        assert body["registry"] == {"name": name, "version": 2, "aliases": ["champion"], "run_id": None}
        assert body["model_version"] == 2
        prediction = api.post("/predict", json=bundle.metadata.example).json()
        assert prediction["model_version"] == 2  # learnt from the registry after loading, not asked per request

        # A read endpoint changes nothing: the registry now tags a newer version with this bundle, and /model
        # shows it, but what /predict reports and what the metrics say is served stay as they were.
        client.create_model_version(name, source="s3://mlflow/none/3", tags={TAG_CONTENT_HASH: bundle.content_hash})
        state = api.app.state.serving  # type: ignore[attr-defined]
        served, gauge = state.model, api.get("/metrics").text.split("model_info{")[1].split("\n")[0]
        state.registry_view.forget()  # past the view's cache time
        assert api.get("/model").json()["registry"]["version"] == 3
        assert state.model is served and api.get("/model").json()["model_version"] == 2
        assert api.post("/predict", json=bundle.metadata.example).json()["model_version"] == 2
        assert api.get("/metrics").text.split("model_info{")[1].split("\n")[0] == gauge
        assert 'model_version="2"' in gauge and f'bundle_hash="{bundle.content_hash}"' in gauge


# --- OpenAPI ---


def test_openapi_is_built_from_the_bundle(client: TestClient, bundle: Bundle) -> None:
    document = client.get("/openapi.json").json()
    record = document["components"]["schemas"]["PredictRequest"]
    categorical = next(f for f in bundle.metadata.features if f.kind == "categorical")
    assert record["properties"][categorical.name]["enum"] == categorical.categories
    numeric = next(f for f in bundle.metadata.features if f.kind == "numeric")
    assert record["properties"][numeric.name]["maximum"] == numeric.maximum
    assert set(record["required"]) == set(bundle.metadata.feature_names())
    assert record["additionalProperties"] is False
    example = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example == bundle.metadata.example
    assert client.post("/predict", json=example).status_code == 200  # the documented example works
    batch_example = document["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert client.post("/predict/batch", json=batch_example["example"]).status_code == 200
    assert client.get("/docs").status_code == 200


# --- logs ---


def test_json_logs_carry_request_ids_and_no_secrets(
    bundle_dir: Path, bundle: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.api.server import create_app

    secret = "aws-secret-value-never-logged"
    settings = settings_for(bundle_dir, aws_secret_access_key=secret, log_format="json")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        client.post("/predict", json=bundle.metadata.example, headers={"X-Request-ID": "log-me-1"})
        client.post("/predict", json={"time": "x"}, headers={"X-Request-ID": "log-me-2"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert secret not in json.dumps(lines)
    requests = {line["request_id"]: line for line in lines if line["message"] == "request"}
    assert requests["log-me-1"]["status"] == 200 and requests["log-me-1"]["route"] == "/predict"
    assert requests["log-me-2"]["status"] == 422
    assert any(line["message"] == "bundle loaded" and line["bundle_hash"] == bundle.content_hash for line in lines)


def test_the_access_line_is_the_same_written_directly_or_through_logging() -> None:
    """With the JSON stream handler alone the access line skips the LogRecord; with anything else on the logger
    (here a filter) it goes through logging. Either way: the same fields, in the same order, at the same level."""
    import io
    import logging

    from app.observability import LOGGER_NAME, configure_logging, log_request

    configure_logging("info", "json")
    logger = logging.getLogger(LOGGER_NAME)
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)

    def written() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        stream.seek(0)
        stream.truncate()
        return lines

    records: list[logging.LogRecord] = []
    make_record = logging.getLogRecordFactory()

    def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        records.append(make_record(*args, **kwargs))
        return records[-1]

    logging.setLogRecordFactory(counted)
    try:
        log_request("/predict", "POST", "/predict", 200, 0.0012345, "direct-1")
        log_request("/health/ready", "GET", "/health/ready", 200, 0.0001, "probe-1")  # debug: not at info
        (direct,) = written()
        assert records == []
        logger.addFilter(lambda record: True)
        log_request("/predict", "POST", "/predict", 200, 0.0012345, "direct-1")
        log_request("/health/ready", "GET", "/health/ready", 200, 0.0001, "probe-1")
        (through_logging,) = written()
        assert len(records) == 1
    finally:
        logging.setLogRecordFactory(make_record)
        logger.filters.clear()
        configure_logging("info", "json")
    assert list(direct) == list(through_logging)  # the same keys in the same order
    assert {**direct, "time": None} == {**through_logging, "time": None}
    assert direct["level"] == "info" and direct["request_id"] == "direct-1" and direct["duration_ms"] == 1.234
    assert direct["time"].endswith("Z") and len(direct["time"]) == len("2026-01-01T00:00:00.000Z")


def test_a_failing_log_stream_does_not_fail_the_request_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A stream that cannot be written is reported by logging's own error handling, never raised to the request."""
    import io
    import logging

    from app.observability import LOGGER_NAME, configure_logging, log_request

    configure_logging("info", "json")
    handler = logging.getLogger(LOGGER_NAME).handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    broken = io.StringIO()
    broken.close()
    handler.setStream(broken)
    try:
        log_request("/predict", "POST", "/predict", 200, 0.001, "broken-1")  # raises nothing
    finally:
        configure_logging("info", "json")
    assert "--- Logging error ---" in capsys.readouterr().err


# --- a real uvicorn process ---


@pytest.mark.integration
def test_real_uvicorn_process(bundle_dir: Path, bundle: Bundle, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [str(BIN / "uvicorn"), "app.main:app", "--host", LOOPBACK, "--port", str(port)]
    log = tmp_path / "server.log"
    with running(args, f"{url}/health/ready", env={"BUNDLE_DIR": str(bundle_dir)}, timeout=60, log=log):
        rows = records(bundle.metadata, 16, seed=9)
        request = urllib.request.Request(
            f"{url}/predict/batch",
            data=json.dumps({"records": rows}).encode(),
            headers={"Content-Type": "application/json", "X-Request-ID": "real-1"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["X-Request-ID"] == "real-1"
            body = json.loads(response.read())
        np.testing.assert_array_equal(body["predictions"], bundle.predict(column_values(rows)))
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            assert b'http_requests_total{method="POST",route="/predict/batch",status="200"} 1.0' in response.read()
    logged = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "real-1" and line.get("status") == 200 for line in logged)
