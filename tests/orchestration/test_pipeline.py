"""The pipeline end to end as code: the quality gate, the CLI, and bring-your-own data (the model's behaviour is
tested in ``test_model_behaviour``, the data in ``test_data`` and ``test_validate``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_diabetes

from app.contract.bundle import load_bundle
from app.model.schema import RecordSchema, RequestError
from orchestration.__main__ import main
from orchestration.config import ConfigError, load_config
from orchestration.data import read_data
from orchestration.evaluate import QualityGateError
from orchestration.pipeline import Progress, TrainResult, run_pipeline
from orchestration.split import split
from orchestration.train import train_model
from orchestration.transform import fit_transformer
from orchestration.validate import validate


def test_quality_gate_refuses_a_weak_model(flight_csv: Path, tmp_path: Path) -> None:
    """One boosting step of 0.01 barely moves off the mean: refused at the default margin (10%)."""
    config = load_config()
    weak = config.model_copy(update={"model": config.model.model_copy(update={"max_iter": 1, "learning_rate": 0.01})})
    with pytest.raises(QualityGateError, match=r"does not beat the naive baseline.*10%.*evaluate\.baseline_margin"):
        run_pipeline(flight_csv, weak, tmp_path / "bundle", Progress(stream=None))
    assert not (tmp_path / "bundle").exists()


def test_cli_trains_and_prints_metrics(
    flight_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # with it, train records its run: a 7th stage
    assert main(["train", "--data", str(flight_csv), "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "rmse" in captured.out and "baseline" in captured.out
    assert "[1/6] ingest" in captured.err and "[6/6] evaluate and bundle" in captured.err
    assert "the training run is not recorded" in captured.err
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


def unbounded_file(directory: Path) -> Path:
    """A data set with a number and a date, no configured bounds, and validation and test rows beyond the range
    of its train split (the split depends on the row count and the seed only)."""
    rng = np.random.default_rng(8)
    rows = 3000
    frame = pd.DataFrame(
        {
            "x": rng.uniform(10, 20, rows).round(3),
            "kind": rng.choice(["a", "b"], rows),
            "day": (pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 300, rows), unit="D")).strftime(
                "%Y-%m-%d"
            ),
        }
    )
    held_out = split(pd.DataFrame({"row": range(rows)}), load_config().split)
    for row, x, day in [
        (held_out.validation["row"].iloc[0], -5.0, "2020-02-29"),
        (held_out.test["row"].iloc[0], 1e6, "2099-12-31"),
    ]:
        frame.loc[row, "x"] = x
        frame.loc[row, "day"] = day
    frame["y"] = frame["x"].clip(10, 20) * 3 + (frame["kind"] == "a") * 10 + rng.normal(0, 1, rows)
    frame.to_csv(directory / "unbounded.csv", index=False)
    return directory / "unbounded.csv"


@pytest.mark.parametrize("enforce", [False, True])
def test_observed_ranges_are_recorded_and_enforced_only_when_asked(tmp_path: Path, enforce: bool) -> None:
    """Without bounds, every row of the training file is a valid request (a validation or test row beyond the
    train split's range included): the range seen in training is recorded, not enforced, unless
    ``enforce_observed_ranges`` asks for it."""
    data = unbounded_file(tmp_path)
    asked = {"enforce_observed_ranges": True} if enforce else {}  # the default: not enforced
    params = {
        "data": {"target": "y", "numeric": ["x"], "categorical": ["kind"], "dates": ["day"], **asked},
        "evaluate": {"baseline_margin": 0.1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["train", "--data", str(data), "--config", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "b")]
    assert main(args) == 0
    metadata = load_bundle(tmp_path / "b").metadata
    schema = RecordSchema.from_metadata(metadata, 10)
    records = pd.read_csv(data)[list(schema.features)].to_dict(orient="records")
    if not enforce:  # every row of the training file is a valid request
        assert [schema.parse_record(json.dumps(r).encode()) for r in records] == [tuple(r.values()) for r in records]
    features = {f.name: f for f in metadata.features}
    x, day = features["x"], features["day"]
    assert isinstance(x.observed_minimum, float) and isinstance(x.observed_maximum, float)
    assert 10 <= x.observed_minimum < x.observed_maximum <= 20  # the train split's, without the rows put beyond it
    assert day.observed_minimum == "2024-01-01" and day.observed_maximum is not None
    limits = (x.minimum, x.maximum, day.minimum, day.maximum)
    observed = (x.observed_minimum, x.observed_maximum, day.observed_minimum, day.observed_maximum)
    assert limits == (observed if enforce else (None, None, None, None))
    seen: dict[str, tuple[Any, Any]] = {"x": observed[:2], "day": observed[2:]}
    beyond = [{name for name, (low, high) in seen.items() if not low <= r[name] <= high} for r in records]
    assert sum(bool(names) for names in beyond) >= 2  # the rows put there, and any other the split left out
    for record, outside in zip(records, beyond, strict=True):
        encoded = json.dumps(record).encode()
        if enforce and outside:  # the old behaviour, asked for
            with pytest.raises(RequestError) as caught:
                schema.parse_record(encoded)
            assert {e["field"] for e in caught.value.errors} == outside
        else:
            assert schema.parse_record(encoded) == tuple(record.values())


def test_a_long_fit_reports_how_far_it_got_as_it_goes(flight_csv: Path) -> None:
    """``train`` says what it fits, then every few seconds (here 20 ms) the iterations done so far."""
    config = load_config()
    clean, _ = validate(read_data(flight_csv, config.data).head(5000), config.data)
    splits = split(clean, config.split)
    transformer = fit_transformer(splits.train, config.data)
    lines: list[str] = []
    model = train_model(transformer, splits.train, splits.validation, config.data, config.model,
                        report=lines.append, every=0.02)  # fmt: skip
    assert lines[0].startswith(f"fitting up to 300 iterations on {len(splits.train):,} rows")
    counts = [int(m.group(1)) for line in lines[1:] if (m := re.fullmatch(r"(\d+)/300 iterations after \d+ s", line))]
    assert len(counts) == len(lines) - 1 >= 2 and counts == sorted(counts)
    assert counts[-1] <= model.n_iter_ and counts[-1] > 0
