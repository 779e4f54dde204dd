"""``GET /metrics`` parses with the Prometheus client's parser and counts exactly what was sent."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.contract.bundle import load_bundle
from tests.harness.serving import ready_client, records, settings_for


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_what_was_sent(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    rows = records(bundle.metadata, 12, seed=2)
    with ready_client(settings_for(bundle_dir, model_version=7)) as client:
        for row in rows[:5]:
            assert client.post("/predict", json=row).status_code == 200
        for _ in range(3):
            assert client.post("/predict", json={**rows[0], "time": -5}).status_code == 422
        assert client.post("/predict", content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert client.post("/predict/batch", json={"records": rows}).status_code == 200
        assert client.post("/predict/batch", json={"records": rows[:2]}).status_code == 200
        assert client.get("/nowhere").status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)

    def requests(route: str, method: str, status: int) -> float:
        return value(found, "http_requests_total", route=route, method=method, status=str(status))

    assert requests("/predict", "POST", 200) == 5
    assert requests("/predict", "POST", 422) == 3
    assert requests("/predict", "POST", 400) == 1
    assert requests("/predict/batch", "POST", 200) == 2
    assert requests("unmatched", "GET", 404) == 1
    latency = "http_request_duration_seconds_count"
    assert value(found, latency, route="/predict", method="POST", status="200") == 5
    assert value(found, "predicted_rows_total", route="/predict") == 5
    assert value(found, "predicted_rows_total", route="/predict/batch") == 14
    assert value(found, "prediction_errors_total", route="/predict", reason="invalid") == 4
    assert value(found, "model_info", model_version="7", bundle_hash=bundle.content_hash) == 1
    assert value(found, "model_ready") == 1
    # every single-record prediction went through the micro-batcher, in batches of at least one
    assert value(found, "microbatch_size_sum") == 5
    assert 1 <= value(found, "microbatch_size_count") <= 5


def test_values_outside_the_training_range_are_served_and_counted(bundle_dir: Path) -> None:
    """Beyond the training split's range but within the limits: answered, and counted by feature as drift."""
    bundle = load_bundle(bundle_dir)
    time_feature = next(f for f in bundle.metadata.features if f.name == "time")
    assert time_feature.observed_maximum is not None and time_feature.maximum is not None
    beyond = (float(time_feature.observed_maximum) + float(time_feature.maximum)) / 2  # within the configured bound
    [row] = records(bundle.metadata, 1, seed=4)
    with ready_client(settings_for(bundle_dir)) as client:
        assert client.post("/predict", json={**row, "time": beyond}).status_code == 200
        assert client.post("/predict/batch", json={"records": [{**row, "time": beyond}] * 3 + [row]}).status_code == 200
        found = samples(client.get("/metrics").text)
    assert value(found, "prediction_values_outside_training_range_total", feature="time") == 4
    assert value(found, "prediction_values_outside_training_range_total", feature="distance") == 0
