"""The run's work area: the DAG's stages run one after another, each in a task process of its own with an empty
scratch directory, as on workers that share no disk; what passes between them is URIs on the S3 store (moto)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestration import tasks
from orchestration.work_area import WORK_URL_ENV, WorkAreaError, open_area, run_key
from tests.harness.services import S3Server

ROWS = 1200
RUN_ID = "manual__2025-01-01T00:00:00+00:00"


def test_run_key_is_one_per_run_id() -> None:
    assert run_key(RUN_ID) == run_key(RUN_ID)
    assert run_key(RUN_ID) != run_key(RUN_ID.replace(":", ";"))  # alike once sanitised
    assert "/" not in run_key("a/b") and ":" not in run_key(RUN_ID)


def test_a_local_area_is_its_own_scratch_directory(tmp_path: Path) -> None:
    with open_area(RUN_ID, str(tmp_path)) as area:
        assert area.scratch == tmp_path / run_key(RUN_ID) and not area.remote
        path = area.scratch / "x.txt"
        path.write_text("x")
        assert area.put(path) == str(path)  # nothing copied
        assert area.local(str(path)) == path
        calls: list[dict[str, str]] = []

        def compute(result: dict[str, str]) -> Callable[[], dict[str, Any]]:
            return lambda: calls.append(result) or dict(result)  # type: ignore[func-returns-value]

        first = area.checkpoint("stage", compute({"x_uri": str(path)}))
        assert area.checkpoint("stage", compute({})) == first and calls == [first]
        path.unlink()  # a record naming a file that is gone is not trusted
        assert area.checkpoint("stage", compute({"x_uri": "y"})) == {"x_uri": "y"}
        assert calls == [first, {"x_uri": "y"}]


def test_an_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkAreaError, match=f"{WORK_URL_ENV}='gs://b/w'"), open_area(RUN_ID, "gs://b/w"):
        pass


@pytest.fixture
def s3_area(s3: S3Server, s3_credentials: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """A work-area root on the moto store, reached with the DVC remote's endpoint (as the DAG's tasks do)."""
    bucket = f"work-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    monkeypatch.setenv("DVC_REMOTE_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("DVC_REMOTE_REGION", "us-east-1")
    return f"s3://{bucket}/training-work"


def _stage(root: str, scratches: list[Path], body: Any) -> dict[str, Any]:
    """``body(area)`` in a task process's view of the run's area: a fresh scratch directory, removed after."""
    with open_area(RUN_ID, root) as area:
        assert area.remote and not any(area.scratch.iterdir())  # nothing inherited from another task
        scratches.append(area.scratch)
        result: dict[str, Any] = body(area)
    assert not area.scratch.exists()
    return result


def test_stages_hand_each_other_uris_on_the_store_and_no_path(s3_area: str, s3: S3Server) -> None:
    config = tasks.training_config({"max_iter": 20})
    scratches: list[Path] = []
    ingested = _stage(s3_area, scratches, lambda a: tasks.ingest(a, rows=ROWS, seed=5))
    validated = _stage(s3_area, scratches, lambda a: tasks.validate_data(a, ingested["data_uri"], config))
    splits = _stage(s3_area, scratches, lambda a: tasks.split_data(a, validated["clean_uri"], config))
    fitted = _stage(s3_area, scratches, lambda a: tasks.fit_transformer_task(a, splits["train_uri"], config))
    trained = _stage(
        s3_area,
        scratches,
        lambda a: tasks.train_task(
            a,
            transformer_uri=fitted["transformer_uri"],
            train_uri=splits["train_uri"],
            validation_uri=splits["validation_uri"],
            config=config,
        ),
    )
    evaluated = _stage(
        s3_area,
        scratches,
        lambda a: tasks.evaluate_task(
            a,
            data_hash=ingested["data_hash"],
            transformer_uri=fitted["transformer_uri"],
            model_uri=trained["model_uri"],
            split_uris=splits,
            config=config,
        ),
    )
    assert len(set(scratches)) == 6

    area_url = f"{s3_area}/{run_key(RUN_ID)}"
    results = [ingested, validated, splits, fitted, trained, evaluated]
    uris = [v for r in results for k, v in r.items() if k.endswith("_uri")]
    assert len(uris) == 8 and all(uri.startswith(area_url + "/") for uri in uris)
    assert all(len(json.dumps(r)) < 2000 for r in results)  # what XCom carries

    bucket, prefix = area_url.removeprefix("s3://").split("/", 1)
    keys = {item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    stored = {key.removeprefix(prefix + "/") for key in keys}
    assert {"raw/flights.csv", "clean.parquet", "transformer.skops", "model.skops", "bundle/metadata.json"} <= stored
    assert {f"{stage}.json" for stage in ("ingest", "validate", "split", "fit_transformer", "train", "evaluate")} <= (
        stored
    )

    # A rerun of the same DAG run, on yet another worker, reuses each stage's record: the bundle (whose hash covers
    # its creation time) is not made again.
    again = _stage(s3_area, scratches, lambda a: tasks.ingest(a, rows=ROWS, seed=999))
    assert again == ingested
    redone = _stage(
        s3_area,
        scratches,
        lambda a: tasks.evaluate_task(
            a,
            data_hash="other",
            transformer_uri=fitted["transformer_uri"],
            model_uri=trained["model_uri"],
            split_uris=splits,
            config=config,
        ),
    )
    assert redone["content_hash"] == evaluated["content_hash"]

    # The gate and publish read the stored bundle back on their own worker.
    with open_area(RUN_ID, s3_area) as area:
        bundle = area.local(evaluated["bundle_uri"])
        assert json.loads((bundle / "metadata.json").read_text())["content_hash"] == evaluated["content_hash"]
