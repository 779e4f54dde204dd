"""Your own data end to end: a CSV and a params file declaring a float column, trained with the CLI, served from
``BUNDLE_DIR`` by the container's entrypoint (a real uvicorn) under the bundle's own name."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from app.contract.bundle import load_bundle
from orchestration.__main__ import main
from tests.harness.services import LOOPBACK, free_port
from tests.integration.conftest import ROOT, serving


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def predict(url: str, record: dict[str, Any]) -> float:
    request = urllib.request.Request(
        f"{url}/predict", data=json.dumps(record).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        prediction: float = json.loads(response.read())["prediction"]
        return prediction


def test_a_float_column_of_whole_numbers_declared_float_is_served_under_the_bundles_name(tmp_path: Path) -> None:
    """``age`` holds only whole numbers written as floats (59.0), declared float in a params file that names no
    model: the bundle takes its target's name, ``charges``, and the entrypoint serves it under that name with
    MODEL_NAME unset, taking 59.5 for ``age``."""
    rng = np.random.default_rng(4)
    rows = 600
    frame = pd.DataFrame({"age": rng.integers(18, 90, rows).astype(float), "smoker": rng.choice(["yes", "no"], rows)})
    frame["charges"] = 200 * frame["age"] + (frame["smoker"] == "yes") * 9000 + rng.normal(0, 2000, rows)
    frame.to_csv(tmp_path / "insurance.csv", index=False, float_format="%.1f")
    assert pd.read_csv(tmp_path / "insurance.csv")["age"].apply(float.is_integer).all()
    params = {"data": {"target": "charges", "numeric": ["age"], "categorical": ["smoker"], "dtypes": {"age": "float"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bundle_dir = tmp_path / "bundle"
    assert main(["train", "--data", str(tmp_path / "insurance.csv"), "--config", str(tmp_path / "params.yaml"),
                 "--out", str(bundle_dir)]) == 0  # fmt: skip
    bundle = load_bundle(bundle_dir)
    assert bundle.metadata.name == "charges"
    assert next(f for f in bundle.metadata.features if f.name == "age").dtype == "float"

    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = {"BUNDLE_DIR": str(bundle_dir), "HOST": LOOPBACK, "PORT": str(port), "LOG_FORMAT": "text",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    log = tmp_path / "server.log"
    with serving(env, log):
        example = get(f"{url}/model")["metadata"]["example"]
        half = {**example, "age": 59.5}
        answers = [predict(url, example), predict(url, half)]
        v2 = get(f"{url}/v2/models/charges")
        with pytest.raises(urllib.error.HTTPError) as caught:
            get(f"{url}/v2/models/flight-price")
    assert caught.value.code == 404
    assert "entrypoint: name: serving the bundle as charges, the name it records" in log.read_text()
    assert v2["name"] == "charges" and {i["name"]: i["datatype"] for i in v2["inputs"]}["age"] == "FP64"
    assert answers[1] == bundle.predict({"age": [59.5], "smoker": [example["smoker"]]})[0]
    assert answers[0] == bundle.predict({name: [value] for name, value in example.items()})[0]
