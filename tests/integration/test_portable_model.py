"""The registered MLflow model loads and serves outside this checkout: a fresh interpreter in another directory,
without the repository on its path, loads ``models:/<name>@<alias>`` from the real ``mlflow server`` (the model's
``code_paths`` carry the modules of ``app`` it imports) and predicts what the server predicts, bit for bit; so
does ``mlflow models serve`` started there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from contextlib import chdir
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from app.contract.bundle import Bundle, load_bundle, load_serving_bundle
from app.contract.registry import mlflow_client
from app.score import main as score_main
from orchestration import bundle_model
from orchestration.publish import Published, PublishTarget, publish_bundle
from tests.harness.services import S3Server, free_port, running
from tests.harness.serving import records
from tests.integration.conftest import ROOT, fresh_target

pytestmark = pytest.mark.integration

# Loads the model the way a user elsewhere would, and says where ``app`` came from and what it predicted (as hex:
# the exact float).
LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
record = json.loads(sys.argv[2])
[value] = list(model.predict(pd.DataFrame([record])))
print(json.dumps({"app": sys.modules["app"].__file__, "prediction": float(value).hex()}))
"""


@pytest.fixture(scope="module")
def target(s3: S3Server, mlflow_uri: str, s3_credentials: None) -> PublishTarget:
    return fresh_target(s3, mlflow_uri, "portable")


@pytest.fixture(scope="module")
def published(bundle_dir: Path, target: PublishTarget) -> Published:
    return publish_bundle(bundle_dir, target)


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


def elsewhere_env(target: PublishTarget, s3: S3Server) -> dict[str, str]:
    """A user's environment in another directory: MLflow's and S3's variables, and nothing naming this checkout."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    return {**env, **s3.env(), "MLFLOW_TRACKING_URI": target.tracking_uri}


def served(bundle: Bundle, record: dict[str, Any]) -> float:
    """What the prediction server answers for ``record``: its serving form, which equals ``Bundle.predict`` bit for
    bit."""
    columns = {name: [value] for name, value in record.items()}
    [value] = load_serving_bundle(bundle.path).predict(columns).tolist()
    [expected] = bundle.predict(pd.DataFrame([record])).tolist()
    assert value.hex() == expected.hex()
    return float(value)


def test_the_registered_model_loads_and_predicts_in_a_fresh_process_elsewhere(
    target: PublishTarget, published: Published, bundle: Bundle, s3: S3Server, tmp_path: Path
) -> None:
    record = bundle.metadata.example
    uri = f"models:/{target.model_name}@{published.alias}"
    done = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_AND_PREDICT, uri, json.dumps(record)],
        cwd=tmp_path,
        env=elsewhere_env(target, s3),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert not Path(answer["app"]).resolve().is_relative_to(ROOT)  # the model's own copy of app, not this checkout
    assert float.fromhex(answer["prediction"]) == served(bundle, record)


def test_the_registered_model_holds_only_the_code_and_requirements_it_needs(
    target: PublishTarget, published: Published, bundle: Bundle, tmp_path: Path
) -> None:
    client = mlflow_client(target.tracking_uri)
    source = client.get_model_version_by_alias(target.model_name, str(published.alias)).source
    where = mlflow.artifacts.download_artifacts(source, dst_path=os.fspath(tmp_path), tracking_uri=target.tracking_uri)
    model = Path(where)
    code = sorted(p.relative_to(model / "code").as_posix() for p in (model / "code").rglob("*.py"))
    assert code == sorted(bundle_model.CODE_FILES)
    assert not (model / "uv.lock").exists() and not (model / "pyproject.toml").exists()  # not this project's lock
    versions = bundle.metadata.library_versions
    assert (model / "requirements.txt").read_text().splitlines() == [
        f"mlflow=={version('mlflow')}",
        *(f"{name}=={versions[name]}" for name in ("scikit-learn", "numpy", "skops")),
        f"pandas=={version('pandas')}",
        f"pydantic=={version('pydantic')}",
    ]


def test_mlflow_models_serve_answers_elsewhere_with_the_served_prediction(
    target: PublishTarget, published: Published, bundle: Bundle, s3: S3Server, tmp_path: Path
) -> None:
    record = bundle.metadata.example
    port = free_port()
    mlflow = os.fspath(Path(sys.executable).parent / "mlflow")
    args = [mlflow, "models", "serve", "-m", f"models:/{target.model_name}@{published.alias}"]
    args += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = tmp_path / "serve.log"
    # ``running`` starts it with this process's environment updated by ours: the checkout must not be on the path
    env = {**elsewhere_env(target, s3), "PYTHONPATH": "", "PYTHONSAFEPATH": "1"}
    with chdir(tmp_path), running(args, f"http://127.0.0.1:{port}/ping", env=env, timeout=120, log=log):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_records": [record]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    [value] = answer["predictions"]
    assert float(value) == served(bundle, record)


def test_offline_scoring_of_models_uri_delivers_the_bundle_as_the_server_does(
    target: PublishTarget,
    published: Published,
    bundle: Bundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m app.score --model models:/NAME@ALIAS``: resolved in the registry, pulled from the DVC remote and
    verified (``app.delivery``), then scored: the same floats as ``Bundle.predict``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", target.tracking_uri)
    monkeypatch.setenv("DVC_REMOTE_URL", target.remote_url)
    monkeypatch.setenv("DVC_REMOTE_ENDPOINT_URL", target.endpoint_url or "")
    frame = pd.DataFrame(records(bundle.metadata, 40, seed=9))
    source = tmp_path / "flights.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "scored.parquet"
    uri = f"models:/{target.model_name}@{published.alias}"
    assert score_main([str(source), str(out), "--model", uri, "--model-dir", str(tmp_path / "models")]) == 0
    err = capsys.readouterr().err
    assert f"version {published.version}: bundle {published.dvc_hash}" in err
    predictions = pq.read_table(out).column("prediction").to_numpy()
    expected = bundle.predict(pd.read_csv(source, float_precision="round_trip"))
    assert predictions.view(np.int64).tolist() == expected.view(np.int64).tolist()
