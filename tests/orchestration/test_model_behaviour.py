"""The trained model's behaviour (the Made-With-ML split: code, data, model): quality against the naive
baseline, and directional tests on predictions that follow from how prices are made.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from app.contract.bundle import load_bundle
from orchestration.config import load_config
from orchestration.data import CITIES
from orchestration.pipeline import TrainResult


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


def test_holiday_season_costs_more_than_may(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    december = bundle.predict(_grid(date="2021-12-20"))
    may = bundle.predict(_grid(date="2021-05-18"))
    assert december.mean() > may.mean()


def test_a_prediction_does_not_depend_on_the_other_rows(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    grid = _grid(flight_type="premium")
    together = bundle.predict(grid)
    alone = [bundle.predict(grid.iloc[[i]])[0] for i in (0, len(grid) // 2, len(grid) - 1)]
    assert alone == [together[0], together[len(grid) // 2], together[len(grid) - 1]]
