"""Offline scoring (``python -m app.score``): CSV and Parquet files scored through the server's request schema and
predictor give ``Bundle.predict``'s floats, whatever the chunk size; a bad file or row is refused by name."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from app.contract.bundle import Bundle, load_bundle, load_serving_bundle
from app.score import PREDICTION, ScoreError, main, score
from tests.harness.serving import records

ROOT = Path(__file__).resolve().parents[2]
ROWS = 600


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def rows(bundle: Bundle) -> list[dict[str, Any]]:
    """Valid records across every feature's range, each with an id first (a column the model does not read)."""
    return [{"id": f"r{i}", **record} for i, record in enumerate(records(bundle.metadata, ROWS, seed=5))]


@pytest.fixture(scope="module")
def expected(bundle: Bundle, rows: list[dict[str, Any]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return bundle.predict(pd.DataFrame(rows))


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """The records as CSV: Python's ``str`` of a float is its shortest round-trip text."""
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def csv_file(rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(rows, tmp_path_factory.mktemp("score") / "flights.csv")


@pytest.fixture(scope="module")
def parquet_file(rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The records as Parquet, the dates as ``date32`` (what a dataframe library writes for a date column)."""
    frame = pd.DataFrame(rows)
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    path = tmp_path_factory.mktemp("score") / "flights.parquet"
    frame.to_parquet(path, index=False, row_group_size=250)
    return path


def scored(bundle_dir: Path, source: Path, out: Path, *args: str) -> pa.Table:
    assert main([str(source), str(out), "--bundle", str(bundle_dir), "--no-progress", *args]) == 0
    return pq.read_table(out)


def same_floats(actual: Any, expected: Any) -> bool:
    return bool(np.array_equal(np.asarray(actual, dtype=np.float64).view(np.int64), expected.view(np.int64)))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_scoring_a_file_predicts_bundle_predict_bit_for_bit(
    kind: str, bundle_dir: Path, csv_file: Path, parquet_file: Path, expected: Any, tmp_path: Path
) -> None:
    source = csv_file if kind == "csv" else parquet_file
    table = scored(bundle_dir, source, tmp_path / "out.parquet")
    assert table.column_names == [*pd.read_csv(csv_file, nrows=0).columns, PREDICTION]
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(ROWS)]
    assert table.schema.field(PREDICTION).type == pa.float64()
    assert same_floats(table.column(PREDICTION).to_numpy(), expected)


def test_the_chunk_size_changes_no_answer(
    bundle_dir: Path, csv_file: Path, parquet_file: Path, expected: Any, tmp_path: Path
) -> None:
    small = scored(bundle_dir, csv_file, tmp_path / "small.parquet", "--chunk-rows", "7", "--keep", "id")
    large = scored(bundle_dir, parquet_file, tmp_path / "large.parquet", "--chunk-rows", "100000", "--keep", "id")
    assert small.column_names == large.column_names == ["id", PREDICTION]
    assert pq.ParquetFile(tmp_path / "small.parquet").metadata.num_row_groups == -(-ROWS // 7)  # chunks of 7 rows
    assert small.column("id").to_pylist() == large.column("id").to_pylist()
    assert same_floats(small.column(PREDICTION).to_numpy(), expected)
    assert same_floats(large.column(PREDICTION).to_numpy(), expected)


def refused(bundle_dir: Path, source: Path, out: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([str(source), str(out), "--bundle", str(bundle_dir), "--no-progress", *args])
    assert exit_.value.code == 1
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing left behind
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("distance", "far", "column distance: 'far' is not a number"),
        ("distance", "", "column distance: '' is not a number"),
        ("time", "inf", "column time: Input should be a finite number (value inf)"),
        ("agency", "NoSuchAgency", "column agency: Input should be 'CloudFy'"),
        ("date", "2021-02-30", "column date: Value error, day is out of range for month"),
    ],
)
def test_a_bad_row_fails_the_file_naming_its_row_and_column(
    column: str, value: str, says: str, bundle: Bundle, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    bad = [dict(row) for row in rows]
    bad[456][column] = value  # data row 457, in the 66th chunk of 7
    source = write_csv(bad, tmp_path / "bad.csv")
    out = tmp_path / "out.parquet"
    with pytest.raises(ScoreError) as refusal:  # main() prints it after the file's name and exits 1 (below)
        score(load_serving_bundle(bundle.path), source, out, chunk_rows=7, progress=False)
    assert str(refusal.value).startswith(f"row 457, {says}"), refusal.value
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))  # nothing left behind


def test_a_file_without_a_feature_or_of_another_kind_is_refused(
    bundle_dir: Path, rows: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv([{k: v for k, v in row.items() if k != "agency"} for row in rows], tmp_path / "no.csv")
    err = refused(bundle_dir, source, tmp_path / "out.parquet", capsys)
    assert f"{source}: no column agency (every feature of the model is required)" in err
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(source.read_text() + "1,2\n")
    assert "cannot be read" in refused(bundle_dir, ragged, tmp_path / "out.parquet", capsys)
    other = tmp_path / "flights.json"
    other.write_text("{}")
    assert "not a .csv or .parquet file" in refused(bundle_dir, other, tmp_path / "out.parquet", capsys)


def test_the_command_runs_with_its_help_and_its_progress(
    bundle_dir: Path, csv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    help_ = capsys.readouterr().out
    assert exit_.value.code == 0 and "--chunk-rows" in help_ and "models:/NAME@ALIAS" in help_
    out = tmp_path / "out.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "app.score", str(csv_file), str(out), "--bundle", str(bundle_dir), "--chunk-rows=100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"{ROWS}/?" in done.stderr or f"{ROWS} rows" in done.stderr  # tqdm's count on stderr
    assert f"score: {ROWS} rows in 6 chunks of up to 100" in done.stderr
    assert pq.read_metadata(out).num_rows == ROWS
