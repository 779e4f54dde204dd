"""The pipeline end to end as code: the quality gate, the CLI, and bring-your-own data (the model's behaviour is
tested in ``test_model_behaviour``, the data in ``test_data`` and ``test_validate``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_diabetes

from app.contract.bundle import load_bundle
from app.schema import RecordSchema
from orchestration.__main__ import main
from orchestration.config import ConfigError, load_config
from orchestration.evaluate import QualityGateError
from orchestration.pipeline import Progress, TrainResult, run_pipeline


def test_quality_gate_refuses_a_weak_model(flight_csv: Path, tmp_path: Path) -> None:
    config = load_config()
    weak = config.model_copy(
        update={
            "model": config.model.model_copy(update={"max_iter": 1, "learning_rate": 0.01}),
            "evaluate": config.evaluate.model_copy(update={"baseline_margin": 0.5}),
        }
    )
    with pytest.raises(QualityGateError, match=r"does not beat the naive baseline.*evaluate\.baseline_margin"):
        run_pipeline(flight_csv, weak, tmp_path / "bundle", Progress(stream=None))
    assert not (tmp_path / "bundle").exists()


def test_cli_trains_and_prints_metrics(flight_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(flight_csv), "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "rmse" in captured.out and "baseline" in captured.out
    assert "[1/6] ingest" in captured.err and "[6/6] evaluate and bundle" in captured.err
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


def test_a_whole_number_column_is_an_integer_feature_whose_example_is_served(tmp_path: Path) -> None:
    """A year stored as floats (2007.0, as pandas writes a column with integers): the API must take its own example
    and any whole-number float for it."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"year": rng.integers(2000, 2020, 3000).astype(float), "kind": rng.choice(["a", "b"], 3000)})
    frame["y"] = (frame["year"] - 2000) * 3 + (frame["kind"] == "a") * 10 + rng.normal(0, 1, len(frame))
    frame.to_parquet(tmp_path / "years.parquet")
    params = {
        "data": {"target": "y", "numeric": ["year"], "categorical": ["kind"]},
        "evaluate": {"baseline_margin": 0.1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = main(["train", "--data", str(tmp_path / "years.parquet"), "--config", str(tmp_path / "params.yaml"),
                 "--out", str(tmp_path / "bundle")])  # fmt: skip
    assert code == 0
    metadata = load_bundle(tmp_path / "bundle").metadata
    assert next(f for f in metadata.features if f.name == "year").dtype == "int"
    assert type(metadata.example["year"]) is int
    schema = RecordSchema.from_metadata(metadata, 10)
    assert schema.parse_record(json.dumps(metadata.example).encode())[0] == metadata.example["year"]
    as_float = {**metadata.example, "year": float(metadata.example["year"])}
    assert schema.parse_record(json.dumps(as_float).encode())[0] == metadata.example["year"]


def test_the_example_record_is_built_from_the_schema_not_copied_from_a_row(
    trained: TrainResult, flight_csv: Path
) -> None:
    """The example /docs and /model publish: medians and most frequent categories, not a row of the data."""
    frame = pd.read_csv(flight_csv)
    example = trained.metadata.example
    assert not (frame[list(example)] == pd.Series(example)).all(axis=1).any()
    for feature in trained.metadata.features:
        value, column = example[feature.name], frame[feature.name]
        if feature.kind == "numeric":
            assert abs(value - column.median()) <= 0.05 * column.median()
        elif feature.kind == "categorical":
            counts = column.value_counts()
            assert counts[value] >= 0.95 * counts.max()  # the training split's most frequent, or near it
        else:
            assert abs(pd.Timestamp(value) - pd.Timestamp(column.sort_values().iloc[len(column) // 2])).days <= 31
