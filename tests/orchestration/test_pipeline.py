"""The pipeline end to end: model quality, behaviour, the CLI, and bring-your-own data."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_diabetes

from app.contract.bundle import load_bundle
from orchestration.__main__ import main
from orchestration.config import ConfigError, load_config
from orchestration.data import CITIES
from orchestration.evaluate import QualityGateError
from orchestration.pipeline import Progress, TrainResult, run_pipeline


def test_beats_baseline_by_margin(trained: TrainResult) -> None:
    metadata = trained.metadata
    margin = load_config().evaluate.baseline_margin
    assert metadata.metrics["rmse"] <= (1 - margin) * metadata.baseline_metrics["rmse"]
    assert metadata.metrics["r2"] > 0.9
    assert sum(metadata.rows.values()) == trained.report.rows_out


def _grid(**fixed: float | str) -> pd.DataFrame:
    """Every route x agency x a spread of dates, with ``fixed`` columns overriding."""
    cities = list(CITIES)
    rows = [
        {"from_location": a, "to_location": b, "agency": agency, "date": date, "flight_type": "economic"}
        for a in cities
        for b in cities
        if a != b
        for agency in ("CloudFy", "FlyingDrops", "Rainbow")
        for date in ("2020-01-10", "2021-05-04", "2022-08-19")
    ]
    frame = pd.DataFrame(rows)
    frame["distance"] = 1000.0
    frame["time"] = 1.73
    for name, value in fixed.items():
        frame[name] = value
    return frame


def test_first_class_costs_more_than_economic(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    economic = bundle.predict(_grid(flight_type="economic"))
    first = bundle.predict(_grid(flight_type="firstClass"))
    assert first.mean() > 1.5 * economic.mean()
    assert (first > economic).mean() > 0.95


def test_price_rises_with_distance(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    means = [bundle.predict(_grid(distance=d, time=d / 780 + 0.45)).mean() for d in (300.0, 900.0, 1500.0, 2200.0)]
    assert all(a < b for a, b in itertools.pairwise(means))


def test_quality_gate_refuses_a_weak_model(flight_csv: Path, tmp_path: Path) -> None:
    config = load_config()
    weak = config.model_copy(
        update={
            "model": config.model.model_copy(update={"max_iter": 1, "learning_rate": 0.01}),
            "evaluate": config.evaluate.model_copy(update={"baseline_margin": 0.5}),
        }
    )
    with pytest.raises(QualityGateError, match="does not beat the naive baseline"):
        run_pipeline(flight_csv, weak, tmp_path / "bundle", Progress(stream=None))
    assert not (tmp_path / "bundle").exists()


def test_cli_trains_and_prints_metrics(flight_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(flight_csv), "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "rmse" in captured.out and "baseline" in captured.out
    assert "[1/7] ingest" in captured.err and "[7/7] bundle" in captured.err
    load_bundle(tmp_path / "b")


def test_cli_reports_bad_data(flight_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = pd.read_csv(flight_csv)
    bad.loc[3, "agency"] = "Acme"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "agency: unknown category" in err and "row 3: 'Acme'" in err


def test_cli_reports_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text("data: {target: y, numeric: [y]}\n")
    assert main(["train", "--config", str(tmp_path / "p.yaml"), "--rows", "100", "--out", str(tmp_path / "b")]) == 2
    assert "listed twice" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_bring_your_own_data(tmp_path: Path) -> None:
    """scikit-learn's bundled diabetes set, as Parquet, with its own params file: no code change."""
    frame = load_diabetes(as_frame=True).frame
    frame["sex"] = np.where(frame["sex"] > 0, "m", "f")
    frame.to_parquet(tmp_path / "diabetes.parquet")
    params = {
        "data": {
            "target": "target",
            "numeric": ["age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"],
            "categorical": ["sex"],
        },
        "split": {"validation": 0.15, "test": 0.2, "seed": 1},
        "model": {"learning_rate": 0.05, "max_iter": 200, "min_samples_leaf": 10},
        "evaluate": {"baseline_margin": 0.1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = main(["train", "--data", str(tmp_path / "diabetes.parquet"), "--config", str(tmp_path / "params.yaml"),
                 "--out", str(tmp_path / "bundle")])  # fmt: skip
    assert code == 0
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.metadata.target.name == "target"
    assert [f.name for f in bundle.metadata.features][-1] == "sex"
    assert bundle.metadata.metrics["rmse"] <= 0.9 * bundle.metadata.baseline_metrics["rmse"]
    assert bundle.predict(frame.head(5)).shape == (5,)
