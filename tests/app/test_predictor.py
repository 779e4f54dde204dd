"""The serving predictor's direct path: the same floats as ``Bundle.predict``, on every kind of row.

``Bundle.predict`` (the transformer, then the scikit-learn model's own ``predict``) is the reference. Every
comparison is exact (``np.array_equal``), never approximate: the direct path exists only because it is
bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression

import app.model.predictor as predictor_module
from app.contract.bundle import Bundle, Metadata, load_bundle
from app.model.predictor import (
    CHECKED_BATCHES,
    LAYOUT_BY_ROW,
    PROBE_ROWS,
    SMALL_BATCH_ROWS,
    TREES_PER_SUM,
    Predictor,
    _Forest,
    probe_columns,
)
from orchestration.config import load_config
from orchestration.data import read_data
from orchestration.pipeline import TrainResult

Matrix = npt.NDArray[np.float64]
UNKNOWN = "Atlantis"  # in no training vocabulary
FAR_NUMBERS = (-1e9, -1.0, 0.0, 1e12)
FAR_DATES = ("1900-01-01", "1970-01-01", "2000-02-29", "2999-12-31")


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def predictor(bundle: Bundle) -> Predictor:
    predictor = Predictor(bundle)
    assert predictor.direct  # the fast path is what is under test: a silent fallback would make this file vacuous
    return predictor


@pytest.fixture(scope="module")
def training_rows(flight_csv: Path, trained: TrainResult) -> tuple[Matrix, Matrix]:
    """The training data set, transformed by the bundle's transformer, and its target."""
    frame = read_data(flight_csv, load_config().data)
    transformer = load_bundle(trained.bundle_dir).transformer
    target = frame[trained.metadata.target.name].to_numpy(dtype=np.float64)
    return transformer.transform(frame), target


def kinds(metadata: Metadata, kind: str) -> list[str]:
    return [f.name for f in metadata.features if f.kind == kind]


def as_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def edge_rows(metadata: Metadata) -> list[dict[str, Any]]:
    """The example with one feature (or all categoricals) pushed to an edge: unknown, at a bound, far away."""
    example = metadata.example
    rows: list[dict[str, Any]] = [dict(example)]
    categorical = kinds(metadata, "categorical")
    for name in categorical:
        rows += [{**example, name: UNKNOWN}, {**example, name: ""}]
    rows.append({**example, **dict.fromkeys(categorical, UNKNOWN)})
    for feature in metadata.features:
        if feature.kind == "numeric":
            assert isinstance(feature.minimum, float) and isinstance(feature.maximum, float)
            bounds = (feature.minimum, feature.maximum)
            rows += [{**example, feature.name: float(v)} for v in (*bounds, *FAR_NUMBERS)]
        elif feature.kind == "date":
            assert isinstance(feature.minimum, str) and isinstance(feature.maximum, str)
            rows += [{**example, feature.name: d} for d in (feature.minimum, feature.maximum, *FAR_DATES)]
    everything_far = {**example, **dict.fromkeys(categorical, UNKNOWN)}
    everything_far.update(dict.fromkeys(kinds(metadata, "numeric"), 1e12))
    everything_far.update(dict.fromkeys(kinds(metadata, "date"), "2999-12-31"))
    rows.append(everything_far)
    return rows


def refused(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("the direct path called model.predict")


def assert_identical(predictor: Predictor, columns: dict[str, list[Any]]) -> Matrix:
    """The direct path's predictions equal ``Bundle.predict``'s bit for bit, without calling ``model.predict``."""
    expected = predictor.bundle.predict(columns)
    model = predictor.bundle.model
    model.__dict__["predict"] = refused  # shadows the method for this instance only
    try:
        got = predictor.predict_columns(columns)
    finally:
        del model.__dict__["predict"]
    n_rows = len(next(iter(columns.values())))
    assert got.dtype == np.float64 and got.shape == expected.shape == (n_rows,)
    assert np.array_equal(got, expected, equal_nan=True)
    return got


def test_the_trained_bundle_uses_the_direct_path(predictor: Predictor, bundle: Bundle) -> None:
    assert predictor.direct is True
    assert type(bundle.model) is HistGradientBoostingRegressor and predictor.bundle is bundle


def test_the_bundle_example_alone(predictor: Predictor, bundle: Bundle) -> None:
    one = {name: [value] for name, value in bundle.metadata.example.items()}
    got = assert_identical(predictor, one)
    assert math.isfinite(got[0])


def test_unknown_category_of_each_feature(predictor: Predictor, bundle: Bundle) -> None:
    metadata = bundle.metadata
    categorical = kinds(metadata, "categorical")
    assert categorical
    for feature in metadata.features:
        if feature.kind == "categorical":
            assert feature.categories and UNKNOWN not in feature.categories
    rows = [{**metadata.example, name: UNKNOWN} for name in categorical]
    rows.append({**metadata.example, **dict.fromkeys(categorical, UNKNOWN)})
    columns = as_columns(rows)
    transformed = bundle.transformer.transform(columns)
    assert np.isnan(transformed).any()  # the transformer's unknown -> NaN is really exercised
    got = assert_identical(predictor, columns)
    assert np.all(np.isfinite(got))


def test_each_edge_row_alone(predictor: Predictor, bundle: Bundle) -> None:
    for row in edge_rows(bundle.metadata):
        got = assert_identical(predictor, {name: [value] for name, value in row.items()})
        assert math.isfinite(got[0]), row


def test_edge_rows_together(predictor: Predictor, bundle: Bundle) -> None:
    rows = edge_rows(bundle.metadata)
    assert len(rows) <= 64  # the transformer's small-batch (dict look-up) path
    got = assert_identical(predictor, as_columns(rows))
    assert np.all(np.isfinite(got))
    assert len(np.unique(got)) > 1  # the edges do reach different leaves: the comparison is not of constants


def test_edge_rows_in_a_large_batch(predictor: Predictor, bundle: Bundle) -> None:
    rows = edge_rows(bundle.metadata)
    many = (rows * (1 + 1000 // len(rows)))[:1000]  # the transformer's vectorised (searchsorted) path
    got = assert_identical(predictor, as_columns(many))
    alone = predictor.predict_columns(as_columns(rows))
    assert np.array_equal(got[: len(rows)], alone)  # a row's prediction does not depend on its batch


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_a_thousand_probe_rows(predictor: Predictor, bundle: Bundle, seed: int) -> None:
    columns = probe_columns(bundle.metadata, 1000, seed=seed)
    assert all(len(values) == 1000 for values in columns.values())
    got = assert_identical(predictor, columns)
    assert np.all(np.isfinite(got)) and len(np.unique(got)) > 100


def test_a_thousand_rows_with_unknowns(predictor: Predictor, bundle: Bundle) -> None:
    assert_identical(predictor, rows_with_unknowns(bundle.metadata, 1000, seed=7))


def assert_identical_in_chunks(predictor: Predictor, columns: dict[str, list[Any]], size: int) -> None:
    n_rows = len(next(iter(columns.values())))
    for start in range(0, n_rows, size):
        assert_identical(predictor, {name: values[start : start + size] for name, values in columns.items()})


def rows_with_unknowns(metadata: Metadata, n_rows: int, seed: int) -> dict[str, list[Any]]:
    columns = probe_columns(metadata, n_rows, seed=seed)
    for offset, name in enumerate(kinds(metadata, "categorical")):
        columns[name][offset::5] = [UNKNOWN] * len(columns[name][offset::5])
    return columns


@pytest.mark.parametrize("size", [1, 2, 7, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1])
def test_small_batches_walk_every_tree_at_once_and_agree(predictor: Predictor, bundle: Bundle, size: int) -> None:
    """Up to SMALL_BATCH_ROWS rows all trees are walked at once (not one compiled call per tree): the same floats."""
    assert_identical_in_chunks(predictor, as_columns(edge_rows(bundle.metadata)), size)
    assert_identical_in_chunks(predictor, rows_with_unknowns(bundle.metadata, 300, seed=11), size)


def test_the_walk_of_every_tree_at_once_is_what_serves_small_batches(
    predictor: Predictor, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.ensemble._hist_gradient_boosting import _predictor as compiled

    calls = 0
    real = compiled._predict_from_binned_data

    def counted(*args: Any) -> None:
        nonlocal calls
        calls += 1
        real(*args)

    monkeypatch.setattr(compiled, "_predict_from_binned_data", counted)
    fresh = Predictor(bundle)  # built while the compiled walk is counted (its probe calls it)
    assert fresh.direct
    calls = 0
    columns = probe_columns(bundle.metadata, SMALL_BATCH_ROWS, seed=12)
    assert_identical(fresh, columns)
    small = calls
    assert_identical(fresh, probe_columns(bundle.metadata, SMALL_BATCH_ROWS + 1, seed=12))
    assert small == 0 and calls > 0  # the per-tree compiled calls serve larger batches only
    assert fresh.bounded(1) and fresh.bounded(SMALL_BATCH_ROWS)
    assert not fresh.bounded(0) and not fresh.bounded(SMALL_BATCH_ROWS + 1)


def test_values_on_beside_and_beyond_every_bin_threshold(predictor: Predictor, bundle: Bundle) -> None:
    """Larger batches walk the binned rows: a value exactly on a threshold, one float either side of it, +-inf
    and NaN, in every numeric column the model splits on, turn as the raw comparison turns them."""
    model = bundle.model
    path = predictor_module._direct_path(model, 1)
    assert path is not None
    direct, _ = path
    base = bundle.transformer.transform(probe_columns(bundle.metadata, 7, seed=14))
    numeric = np.flatnonzero(~np.asarray(bundle.transformer.categorical_mask_, dtype=bool))
    n_categorical = base.shape[1] - len(numeric)
    blocks = []
    for model_column, column in enumerate(numeric, start=n_categorical):  # the model puts categoricals first
        thresholds = model._bin_mapper.bin_thresholds_[model_column]
        values = np.concatenate(
            [thresholds, np.nextafter(thresholds, -np.inf), np.nextafter(thresholds, np.inf), [-np.inf, np.inf, np.nan]]
        )
        block = np.repeat(base, len(values) // len(base) + 1, axis=0)[: len(values)].copy()
        block[:, column] = values
        blocks.append(block)
    features = np.concatenate(blocks)
    assert len(features) > 1000 and np.isinf(features).any() and np.isnan(features).any()
    expected = np.asarray(model.predict(features), dtype=np.float64)
    assert len(np.unique(expected)) > 100
    assert np.array_equal(direct(features), expected)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_do_not_change_predictions(bundle: Bundle, threads: int) -> None:
    threaded = Predictor(bundle, threads=threads)
    assert threaded.direct and threaded.threads == threads
    columns = probe_columns(bundle.metadata, 1000, seed=3)
    assert_identical(threaded, columns)
    assert_identical(threaded, as_columns(edge_rows(bundle.metadata)))


def test_probe_columns_cover_the_metadata(bundle: Bundle) -> None:
    metadata = bundle.metadata
    columns = probe_columns(metadata, PROBE_ROWS, seed=5)
    assert list(columns) == metadata.feature_names()
    assert {name: values[0] for name, values in columns.items()} == metadata.example
    for feature in metadata.features:
        values = columns[feature.name]
        assert len(values) == PROBE_ROWS
        if feature.kind == "categorical":
            assert feature.categories is not None and set(values[1:]) <= set(feature.categories)
        else:
            assert feature.minimum is not None and feature.maximum is not None
            assert all(feature.minimum <= v <= feature.maximum for v in values[1:]), feature.name
    assert probe_columns(metadata, 50, seed=5) == probe_columns(metadata, 50, seed=5)
    assert probe_columns(metadata, 50, seed=5) != probe_columns(metadata, 50, seed=6)


# --- models the direct path does not handle fall back to Bundle.predict ---


def test_an_unknown_model_falls_back(bundle: Bundle, training_rows: tuple[Matrix, Matrix]) -> None:
    features, target = training_rows
    linear = replace(bundle, model=LinearRegression().fit(features, target))
    fallback = Predictor(linear)
    assert fallback.direct is False and not fallback.bounded(1)
    columns = probe_columns(bundle.metadata, 300, seed=8)  # every category known: no NaN for the linear model
    got = fallback.predict_columns(columns)
    assert np.array_equal(got, linear.predict(columns))
    assert not np.array_equal(got, bundle.predict(columns))  # it really is the other model's predictions


def test_a_disagreeing_direct_path_is_dropped(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    real = predictor_module._direct_path

    def off_by_one_ulp(model: Any, threads: int) -> tuple[Callable[[Matrix], Matrix], int] | None:
        path = real(model, threads)
        assert path is not None
        direct, walked_at_once = path
        return lambda features: np.nextafter(direct(features), np.inf), walked_at_once

    monkeypatch.setattr(predictor_module, "_direct_path", off_by_one_ulp)
    careful = Predictor(bundle)
    assert careful.direct is False and not careful.bounded(1)
    columns = probe_columns(bundle.metadata, 100, seed=9)
    assert np.array_equal(careful.predict_columns(columns), bundle.predict(columns))


# The walks the direct path chooses by row count, each as (fewest, most) rows: one row, the layout filled row by row,
# the layout by numpy (both walking every tree at once), the binned walk in blocks of TREES_PER_SUM trees.
WALKS: Final = {
    "one-row": (1, 1),
    "layout-by-row": (2, LAYOUT_BY_ROW),
    "every-tree-at-once": (LAYOUT_BY_ROW + 1, SMALL_BATCH_ROWS),
    "binned-blocks": (SMALL_BATCH_ROWS + 1, PROBE_ROWS),
}


def test_the_checked_batches_fit_the_probe_and_cover_each_walk_at_both_ends() -> None:
    assert sum(CHECKED_BATCHES) <= PROBE_ROWS
    assert {size for low, high in WALKS.values() for size in (low, high)} == {*CHECKED_BATCHES, PROBE_ROWS}


@pytest.mark.parametrize("walk", list(WALKS))
def test_the_load_time_check_catches_a_difference_in_any_one_walk(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch, walk: str
) -> None:
    """A direct path off by one ulp only for the row counts of one walk is dropped: the check tries them all."""
    low, high = WALKS[walk]
    real = predictor_module._direct_path

    def wrong_in_one_walk(model: Any, threads: int) -> tuple[Callable[[Matrix], Matrix], int] | None:
        path = real(model, threads)
        assert path is not None
        direct, walked_at_once = path

        def predict(features: Matrix) -> Matrix:
            got = direct(features)
            return np.nextafter(got, np.inf) if low <= len(features) <= high else got

        return predict, walked_at_once

    monkeypatch.setattr(predictor_module, "_direct_path", wrong_in_one_walk)
    assert Predictor(bundle).direct is False


def test_the_load_time_check_takes_every_walk_of_the_served_bundle(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the predictor walks one row, several rows laid out row by row and by numpy (every tree at once),
    and the binned rows through every block of TREES_PER_SUM trees, on the real internals."""
    from sklearn.ensemble._hist_gradient_boosting import _predictor as compiled

    raw_rows: list[int] = []
    layout_rows: list[int] = []
    binned_rows: list[int] = []
    trees_per_batch: dict[int, int] = {}
    real_raw, real_layout, real_binned = _Forest.raw, _Forest._layout, compiled._predict_from_binned_data

    def raw(self: _Forest, data: Matrix) -> Matrix:
        raw_rows.append(len(data))
        return real_raw(self, data)

    def layout(self: _Forest, data: Matrix) -> Matrix:
        layout_rows.append(len(data))
        return real_layout(self, data)

    def binned(*args: Any) -> None:
        n_rows = args[1].shape[0]
        binned_rows.append(n_rows)
        trees_per_batch[n_rows] = trees_per_batch.get(n_rows, 0) + 1
        real_binned(*args)

    monkeypatch.setattr(_Forest, "raw", raw)
    monkeypatch.setattr(_Forest, "_layout", layout)
    monkeypatch.setattr(compiled, "_predict_from_binned_data", binned)
    built = Predictor(bundle)
    assert built.direct
    assert 1 in raw_rows
    assert any(1 < n <= LAYOUT_BY_ROW for n in raw_rows)
    assert any(LAYOUT_BY_ROW < n <= SMALL_BATCH_ROWS for n in layout_rows)
    assert all(n > SMALL_BATCH_ROWS for n in binned_rows) and len(set(binned_rows)) >= 2
    n_trees = sum(len(iteration) for iteration in bundle.model._predictors)
    assert n_trees > TREES_PER_SUM  # more than one block, so the blocks' hand-over is checked too
    assert all(count == n_trees for count in trees_per_batch.values())  # every tree of every block, each batch


@pytest.mark.parametrize(
    "params",
    [
        {"categorical_features": None},  # no internal preprocessor at all: unknowns stay NaN (missing)
        {"categorical_features": "mask", "loss": "poisson"},  # a log link: the inverse link is exp
    ],
    ids=["numeric-only", "poisson"],
)
def test_other_gradient_boosting_models_stay_identical(
    bundle: Bundle, training_rows: tuple[Matrix, Matrix], params: dict[str, Any]
) -> None:
    features, target = training_rows
    if params["categorical_features"] == "mask":
        params = {**params, "categorical_features": bundle.transformer.categorical_mask_}
    model = HistGradientBoostingRegressor(max_iter=20, random_state=0, **params).fit(features[:5000], target[:5000])
    other = Predictor(replace(bundle, model=model))
    assert other.direct
    assert_identical(other, probe_columns(bundle.metadata, 1000, seed=10))
    assert_identical(other, as_columns(edge_rows(bundle.metadata)))
    assert_identical_in_chunks(other, rows_with_unknowns(bundle.metadata, 200, seed=13), SMALL_BATCH_ROWS)
    assert_identical_in_chunks(other, as_columns(edge_rows(bundle.metadata)), 1)


@pytest.mark.parametrize("spread", [1, 3], ids=["codes-0-to-k", "codes-0-3-6"])
def test_odd_category_codes_turn_as_the_models_own_encoder_turns_them(
    bundle: Bundle, training_rows: tuple[Matrix, Matrix], spread: int
) -> None:
    """The model's own encoder maps codes to positions by look-up; when its codes are 0..k-1 (what the bundle's
    transformer emits) a cheaper rule does. Either way unseen, negative, fractional and far codes are unknown."""
    features, target = training_rows
    mask = np.asarray(bundle.transformer.categorical_mask_, dtype=bool)
    spread_features = features.copy()
    spread_features[:, mask] *= spread
    model = HistGradientBoostingRegressor(max_iter=20, categorical_features=mask, random_state=0)
    model.fit(spread_features[:5000], target[:5000])
    path = predictor_module._direct_path(model, 1)
    assert path is not None
    direct, _ = path
    rows = bundle.transformer.transform(probe_columns(bundle.metadata, 200, seed=15))
    rows[:, mask] *= spread
    seen = len(next(iter(bundle.transformer.categories_.values())))  # the first categorical column's codes
    odd = np.array([seen * spread, -3.0, 0.5, 1e6, -0.0, np.nan, 2.0, 255.0])  # unseen, negative, fractional, far
    rows[: len(odd) * 4, np.flatnonzero(mask)[0]] = np.repeat(odd, 4)
    for size in (1, SMALL_BATCH_ROWS, len(rows)):
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            assert np.array_equal(direct(part), model.predict(part)), (size, start)
