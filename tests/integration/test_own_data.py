"""Your own data end to end, as README's "Bring your own data" walks it: a CSV and a params file declaring a float
column, given to ``quickstart --data --config``, which trains on them and serves the bundle from ``BUNDLE_DIR`` with
the container's entrypoint (a real uvicorn) under the bundle's own name; its printed request answers."""

from __future__ import annotations

import json
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from app.contract.bundle import load_bundle
from tests.harness.services import LOOPBACK, free_port, printed, running
from tests.integration.conftest import ROOT


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        prediction: float = json.loads(response.read())["prediction"]
        return prediction


def test_quickstart_on_your_csv_serves_a_float_column_of_whole_numbers_under_the_bundles_name(tmp_path: Path) -> None:
    """``age`` holds only whole numbers written as floats (59.0), declared float in a params file that names no
    model: the bundle takes its target's name, ``charges``, and the quickstart's entrypoint serves it under that
    name with MODEL_NAME unset, taking 59.5 for ``age``; the request the quickstart prints answers."""
    rng = np.random.default_rng(4)
    rows = 600
    frame = pd.DataFrame({"age": rng.integers(18, 90, rows).astype(float), "smoker": rng.choice(["yes", "no"], rows)})
    frame["charges"] = 200 * frame["age"] + (frame["smoker"] == "yes") * 9000 + rng.normal(0, 2000, rows)
    frame.to_csv(tmp_path / "insurance.csv", index=False, float_format="%.1f")
    assert pd.read_csv(tmp_path / "insurance.csv")["age"].apply(float.is_integer).all()
    params = {"data": {"target": "charges", "numeric": ["age"], "categorical": ["smoker"], "dtypes": {"age": "float"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    state = tmp_path / ".quickstart"
    args = [sys.executable, "-m", "orchestration", "quickstart", "--data", str(tmp_path / "insurance.csv"),
            "--config", str(tmp_path / "params.yaml"), "--port", str(port), "--state", str(state)]  # fmt: skip
    log = tmp_path / "quickstart.log"
    with running(args, f"{url}/health/ready", env={"PYTHONPATH": str(ROOT)}, log=log, timeout=180):
        output = printed(log, "curl ")  # the banner follows readiness
        [curl] = [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]
        words = shlex.split(curl)
        assert words[words.index("-X") + 2] == f"{url}/predict"
        example = json.loads(words[words.index("-d") + 1])
        answers = [
            post(f"{url}/predict", json.dumps(record).encode()) for record in (example, {**example, "age": 59.5})
        ]
        v2 = get(f"{url}/v2/models/charges")
        with pytest.raises(urllib.error.HTTPError) as caught:
            get(f"{url}/v2/models/flight-price")
    assert caught.value.code == 404
    assert "entrypoint: name: serving the bundle as charges, the name it records" in output
    bundle = load_bundle(state / "own-data" / "bundle")
    assert bundle.metadata.name == "charges"
    assert next(f for f in bundle.metadata.features if f.name == "age").dtype == "float"
    assert set(example) == {"age", "smoker"}  # a record of the user's data, not the flights'
    assert v2["name"] == "charges" and {i["name"]: i["datatype"] for i in v2["inputs"]}["age"] == "FP64"
    assert answers[1] == bundle.predict({"age": [59.5], "smoker": [example["smoker"]]})[0]
    assert answers[0] == bundle.predict({name: [value] for name, value in example.items()})[0]
