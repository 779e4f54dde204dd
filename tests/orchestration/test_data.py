"""The generator: deterministic, the original schema, and believable price structure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from orchestration.data import CITIES, COLUMNS, generate, write_csv


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = write_csv(generate(5_000, seed=3), tmp_path / "a.csv").read_bytes()
    second = write_csv(generate(5_000, seed=3), tmp_path / "b.csv").read_bytes()
    other = write_csv(generate(5_000, seed=4), tmp_path / "c.csv").read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert first != other


def test_schema_and_domains() -> None:
    frame = generate(10_000, seed=1)
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == 10_000
    assert set(frame.from_location) == set(CITIES) == set(frame.to_location)
    assert (frame.from_location != frame.to_location).all()
    assert set(frame.flight_type) == {"economic", "premium", "firstClass"}
    assert frame.agency.nunique() == 3
    assert (frame.price > 0).all() and (frame.distance > 0).all() and (frame.time > 0).all()
    assert pd.to_datetime(frame.date, format="%Y-%m-%d").notna().all()


def test_price_structure() -> None:
    frame = generate(50_000, seed=2)
    by_class = frame.groupby("flight_type").price.mean()
    assert by_class["economic"] < by_class["premium"] < by_class["firstClass"]
    assert frame.price.corr(frame.distance) > 0.4
    route = frame.groupby(["from_location", "to_location"])
    assert (route.distance.nunique() == 1).all()  # a route has one distance, as in the original data
    months = pd.to_datetime(frame.date).dt.month
    assert frame.price[months == 12].mean() > frame.price[months == 5].mean()  # holiday season costs more
