"""Load shedding with a stuck model: bounded queue, bounded wait, 503 with Retry-After, readiness that fails
while the model is stuck and recovers after; and, with ``WORKERS`` > 1, metrics that count every worker."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from prometheus_client.mmap_dict import MmapedDict

import app.runtime.served_model
from app.contract.bundle import Bundle, load_bundle
from app.contract.serving_form import ServingForm
from app.model.schema import RecordSchema
from app.runtime.served_model import ON_LOOP_ROWS
from tests.harness.services import BIN, LOOPBACK, free_port, running
from tests.harness.serving import ready_client, records, settings_for

TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture
def stuck_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Model calls block while the event is clear (a hung call, a livelocked walk). The serving form's walk of a few
    rows cannot hang, so here no batch is bounded work: every call runs on a predict thread, as a model call that
    could hang would."""
    free = threading.Event()
    free.set()
    real = app.runtime.served_model.predict_rows
    monkeypatch.setattr(app.runtime.served_model, "on_loop", lambda walk, rows: False)

    def predict_rows(
        schema: RecordSchema, form: ServingForm, observe: Callable[[dict[str, int]], None], rows: list[Any]
    ) -> npt.NDArray[np.float64]:
        free.wait(30)
        return real(schema, form, observe, rows)

    monkeypatch.setattr(app.runtime.served_model, "predict_rows", predict_rows)
    yield free
    free.set()


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        sample = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if sample and ",".join(sorted((sample.group(1) or "").split(","))).strip(",") == wanted:
            return float(sample.group(2))
    return 0.0


def test_a_stuck_model_sheds_load_and_fails_readiness(
    bundle_dir: Path, bundle: Bundle, stuck_model: threading.Event
) -> None:
    settings = settings_for(bundle_dir, max_batch_records=4, max_queued_rows=4, predict_timeout_s=TIMEOUT_S)
    rows = records(bundle.metadata, 4, seed=3)
    with ready_client(settings) as client, ThreadPoolExecutor(2) as pool:
        assert client.post("/predict", json=rows[0]).status_code == 200  # answers while the model is free

        stuck_model.clear()
        waiting = pool.submit(client.post, "/predict/batch", json={"records": rows})  # 4 rows: the queue is full
        deadline = time.monotonic() + 5
        while metric(client, "prediction_queue_rows") < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert metric(client, "prediction_queue_rows") == 4

        started = time.monotonic()
        shed = client.post("/predict", json=rows[0])  # no room: refused at once, not queued
        assert time.monotonic() - started < TIMEOUT_S / 2
        assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
        assert shed.json()["status"] == "overloaded" and "MAX_QUEUED_ROWS=4" in shed.json()["detail"]
        # shed before its body is read: an invalid body is not even looked at (a 503, not a 422), on every route
        for path in ("/predict", "/predict/batch", "/v2/models/flight-price/infer"):
            unread = client.post(path, content=b'{"not": "read"}', headers={"Content-Type": "application/json"})
            assert unread.status_code == 503 and unread.headers["Retry-After"] == "1", (path, unread.text)

        timed_out = waiting.result(10)  # admitted, but the model never answered: 503 once PREDICT_TIMEOUT_S passed
        assert timed_out.status_code == 503 and timed_out.headers["Retry-After"] == "1"
        assert f"PREDICT_TIMEOUT_S={TIMEOUT_S:g}s" in timed_out.json()["detail"]
        assert metric(client, "prediction_queue_rows") == 0  # a shed request gives its room back

        # the model call started a little after the request was admitted, so it passes PREDICT_TIMEOUT_S a little
        # after the request's own timeout: readiness turns to "stuck" then, not necessarily at once
        deadline = time.monotonic() + TIMEOUT_S
        ready = client.get("/health/ready")
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
            ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "stuck", ready.json()
        assert client.get("/health/live").status_code == 200
        assert metric(client, "prediction_errors_total", route="/predict", reason="overloaded") == 2
        assert metric(client, "prediction_errors_total", route="/predict/batch", reason="overloaded") == 2

        stuck_model.set()  # the model comes back: ready again, and it answers
        deadline = time.monotonic() + 5
        while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/health/ready").status_code == 200
        answered = client.post("/predict/batch", json={"records": rows})
        assert answered.status_code == 200
        np.testing.assert_array_equal(answered.json()["predictions"], bundle.predict(_columns(rows)))


def test_a_single_record_that_waits_too_long_is_shed(
    bundle_dir: Path, bundle: Bundle, stuck_model: threading.Event
) -> None:
    """The micro-batched path: the record's wait is bounded too, and the row is not predicted later."""
    settings = settings_for(bundle_dir, predict_timeout_s=0.5)
    [row] = records(bundle.metadata, 1, seed=4)
    with ready_client(settings) as client:
        stuck_model.clear()
        started = time.monotonic()
        answer = client.post("/predict", json=row)
        assert answer.status_code == 503 and 0.5 <= time.monotonic() - started < 3
        stuck_model.set()
        assert client.post("/predict", json=row).status_code == 200


def test_the_served_model_predicts_on_the_event_loop_up_to_its_bound_and_beyond_it_on_a_thread(
    bundle_dir: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the compiled walk, single records and batches up to ON_LOOP_ROWS["compiled"] rows are predicted where
    the request is handled, with no thread to hand off to; a larger batch goes to a batch thread."""
    callers: list[tuple[int, str]] = []
    real = app.runtime.served_model.predict_rows

    def predict_rows(
        schema: RecordSchema, form: ServingForm, observe: Callable[[dict[str, int]], None], rows: list[Any]
    ) -> npt.NDArray[np.float64]:
        callers.append((len(rows), threading.current_thread().name))
        return real(schema, form, observe, rows)

    monkeypatch.setattr(app.runtime.served_model, "predict_rows", predict_rows)
    bound = ON_LOOP_ROWS["compiled"]
    rows = records(bundle.metadata, bound + 1, seed=5)
    with ready_client(settings_for(bundle_dir, max_batch_records=bound + 1)) as client:
        assert client.get("/model").json()["walk"] == "compiled"
        callers.clear()  # the warm-up's calls
        single = client.post("/predict", json=rows[0])
        at_bound = client.post("/predict/batch", json={"records": rows[:bound]})
        beyond = client.post("/predict/batch", json={"records": rows})
    assert single.status_code == at_bound.status_code == beyond.status_code == 200
    expected = bundle.predict(_columns(rows))
    assert single.json()["prediction"] == expected[0]
    assert at_bound.json()["predictions"] == expected[:bound].tolist()
    assert beyond.json()["predictions"] == expected.tolist()
    [(one, single_thread), (many, bound_thread), (more, beyond_thread)] = callers
    assert (one, many, more) == (1, bound, bound + 1)
    assert single_thread == bound_thread and not bound_thread.startswith("predict")  # the event loop's thread
    assert beyond_thread.startswith("predict-batch")


def test_queue_settings_are_checked(bundle_dir: Path) -> None:
    from app.contract.connection import load_from_environment
    from app.settings import Settings, SettingsError

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAX_BATCH_RECORDS", "1000")
        patch.setenv("MAX_QUEUED_ROWS", "999")
        with pytest.raises(SettingsError, match="MAX_QUEUED_ROWS=999 is below MAX_BATCH_RECORDS=1000"):
            load_from_environment(Settings)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in rows[0]}


@pytest.mark.integration
def test_metrics_count_every_worker(bundle_dir: Path, bundle: Bundle, tmp_path: Path) -> None:
    """WORKERS=2 behind one port: whichever worker answers ``/metrics`` reports the requests of both."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = {
        "BUNDLE_DIR": os.fspath(bundle_dir),
        "HOST": LOOPBACK,
        "PORT": str(port),
        "WORKERS": "2",
        "MODEL_DIR": os.fspath(tmp_path / "models"),
        "PROMETHEUS_MULTIPROC_DIR": os.fspath(tmp_path / "metrics"),
    }
    args = [str(BIN / "python"), "-m", "app.entrypoint"]
    row = json.dumps(records(bundle.metadata, 1, seed=5)[0]).encode()

    def per_worker() -> dict[str, float]:
        """Each worker's own count of /predict requests answered 200, from its file in the multiprocess directory."""
        return {
            path.name: sum(
                value
                for key, value, *_ in MmapedDict.read_all_values_from_file(os.fspath(path))  # type: ignore[no-untyped-call]
                if key.startswith('["http_requests", ') and '"route": "/predict"' in key and '"status": "200"' in key
            )
            for path in (tmp_path / "metrics").glob("counter_*.db")
        }

    with running(args, f"{url}/health/ready", env=env, timeout=90, log=tmp_path / "server.log"):
        # at least 60 predictions, and more until both workers have served one (bounded: 90 s). One worker
        # answering readiness says nothing of the other: on a busy machine it may still be loading the bundle, and
        # answers 503 (not ready, Retry-After) meanwhile, as a client is told to retry
        sent, deadline = 0, time.monotonic() + 90
        while sent < 60 or (sum(count > 0 for count in per_worker().values()) < 2 and time.monotonic() < deadline):
            # a new connection each: the kernel spreads them over the workers waiting to accept one
            request = urllib.request.Request(f"{url}/predict", data=row, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 200
            except urllib.error.HTTPError as error:
                if error.code != 503 or not error.headers["Retry-After"] or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            sent += 1
        for _ in range(6):
            # a request is counted once its answer is sent: the client may read /metrics a moment before that
            deadline = time.monotonic() + 5
            while True:
                with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                    text = response.read().decode()
                counted = re.search(r'http_requests_total\{method="POST",route="/predict",status="200"\} (\S+)', text)
                if (counted and float(counted.group(1)) == sent) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert counted is not None and float(counted.group(1)) == sent, text[:2000]
            assert re.search(r"^model_ready 1\.0$", text, re.M), text[:2000]
        # both served, so a one-worker /metrics could not have shown `sent`
        counts = per_worker()
        assert sum(counts.values()) == sent and sum(count > 0 for count in counts.values()) == 2, counts


@pytest.mark.parametrize("path", ["/predict/batch", "/v2/models/flight-price/infer"])
def test_a_request_whose_model_was_retired_while_its_body_arrived_is_shed_not_failed(
    bundle_dir: Path, bundle: Bundle, path: str
) -> None:
    """A swap retires the model a slow request began on, and closes it once DRAIN_TIMEOUT_S passes: the request,
    whose body is read only then, is answered 503 with Retry-After (it was a 500: a closed thread pool). Here the
    request captures a model already closed, as the slow one holds it when its body is in."""
    rows = records(bundle.metadata, 2, seed=6)
    body: dict[str, Any] = {"records": rows}
    if path.startswith("/v2"):
        body = {
            "inputs": [
                {"name": name, "shape": [2], "datatype": "BYTES" if isinstance(rows[0][name], str) else "FP64",
                 "data": [row[name] for row in rows]}
                for name in bundle.metadata.feature_names()
            ]
        }  # fmt: skip
    with ready_client(settings_for(bundle_dir)) as client:
        served = client.app.state.serving.model  # type: ignore[attr-defined]
        assert client.portal is not None and served is not None
        client.portal.call(served.close)
        answer = client.post(path, json=body)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
    assert "retired while its body arrived" in answer.text
