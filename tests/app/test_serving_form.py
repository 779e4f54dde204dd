"""The serving form: the same floats as ``Bundle.predict`` on every kind of row, with numpy alone.

``Bundle.predict`` (the transformer, then the scikit-learn model's own ``predict``) is the reference. Every
comparison is exact (``np.array_equal``), never approximate: the serving form exists only because it is
bit-identical, and loading refuses one that is not.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression

from app.contract.bundle import (
    METADATA_FILE,
    Bundle,
    BundleError,
    Metadata,
    content_hash,
    load_bundle,
    load_serving_bundle,
)
from app.contract.hashing import file_digest
from app.contract.serving_form import (
    BLOCK_ROWS,
    CHECKED_BATCHES,
    FEW_ROWS,
    PROBE_ROWS,
    SERVING_FILE,
    WALKS,
    NoServingForm,
    ServingForm,
    ServingFormError,
    StoredForm,
    compile_serving_form,
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
def loaded(bundle_dir: Path) -> ServingForm:
    """The trained bundle's serving form as the server loads it (its stored probe re-checked): the compiled walk,
    which the suite builds before it starts (tests/conftest.py)."""
    form = load_serving_bundle(bundle_dir).form
    assert form.walk == "compiled", form.walk_note
    return form


@pytest.fixture(scope="module", params=WALKS)
def form(loaded: ServingForm, request: pytest.FixtureRequest) -> ServingForm:
    """The same form with each walk: every test below holds for both."""
    return loaded.using(request.param)


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


def assert_identical(form: ServingForm, bundle: Bundle, columns: dict[str, list[Any]]) -> Matrix:
    """The serving form's predictions equal ``Bundle.predict``'s bit for bit."""
    expected = bundle.predict(columns)
    got = form.predict(columns)
    n_rows = len(next(iter(columns.values())))
    assert got.dtype == np.float64 and got.shape == expected.shape == (n_rows,)
    assert np.array_equal(got, expected, equal_nan=True)
    return got


def assert_identical_in_chunks(form: ServingForm, bundle: Bundle, columns: dict[str, list[Any]], size: int) -> None:
    n_rows = len(next(iter(columns.values())))
    for start in range(0, n_rows, size):
        assert_identical(form, bundle, {name: values[start : start + size] for name, values in columns.items()})


def rows_with_unknowns(metadata: Metadata, n_rows: int, seed: int) -> dict[str, list[Any]]:
    columns = probe_columns(metadata, n_rows, seed=seed)
    for offset, name in enumerate(kinds(metadata, "categorical")):
        columns[name][offset::5] = [UNKNOWN] * len(columns[name][offset::5])
    return columns


def test_the_trained_bundle_carries_a_serving_form(bundle: Bundle, bundle_dir: Path) -> None:
    assert type(bundle.model) is HistGradientBoostingRegressor
    assert SERVING_FILE in bundle.metadata.files  # hashed with the rest, so the content hash covers it
    stored = StoredForm.load(bundle_dir / SERVING_FILE)
    assert len(stored.expected) == PROBE_ROWS and list(stored.probe) == bundle.metadata.feature_names()
    assert np.array_equal(stored.expected, bundle.predict({k: list(v) for k, v in stored.probe.items()}))


def test_the_bundle_example_alone(form: ServingForm, bundle: Bundle) -> None:
    one = {name: [value] for name, value in bundle.metadata.example.items()}
    got = assert_identical(form, bundle, one)
    assert math.isfinite(got[0])


def test_unknown_category_of_each_feature(form: ServingForm, bundle: Bundle) -> None:
    metadata = bundle.metadata
    categorical = kinds(metadata, "categorical")
    assert categorical
    for feature in metadata.features:
        if feature.kind == "categorical":
            assert feature.categories and UNKNOWN not in feature.categories
    rows = [{**metadata.example, name: UNKNOWN} for name in categorical]
    rows.append({**metadata.example, **dict.fromkeys(categorical, UNKNOWN)})
    columns = as_columns(rows)
    assert np.isnan(form.encoding.transform(columns)).any()  # unknown -> NaN is really exercised
    got = assert_identical(form, bundle, columns)
    assert np.all(np.isfinite(got))


def test_each_edge_row_alone(form: ServingForm, bundle: Bundle) -> None:
    for row in edge_rows(bundle.metadata):
        got = assert_identical(form, bundle, {name: [value] for name, value in row.items()})
        assert math.isfinite(got[0]), row


def test_edge_rows_together(form: ServingForm, bundle: Bundle) -> None:
    rows = edge_rows(bundle.metadata)
    got = assert_identical(form, bundle, as_columns(rows))
    assert np.all(np.isfinite(got))
    assert len(np.unique(got)) > 1  # the edges do reach different leaves: the comparison is not of constants


def test_edge_rows_in_a_large_batch(form: ServingForm, bundle: Bundle) -> None:
    rows = edge_rows(bundle.metadata)
    many = (rows * (1 + 1000 // len(rows)))[:1000]
    got = assert_identical(form, bundle, as_columns(many))
    alone = form.predict(as_columns(rows))
    assert np.array_equal(got[: len(rows)], alone)  # a row's prediction does not depend on its batch


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_a_thousand_probe_rows(form: ServingForm, bundle: Bundle, seed: int) -> None:
    columns = probe_columns(bundle.metadata, 1000, seed=seed)
    assert all(len(values) == 1000 for values in columns.values())
    got = assert_identical(form, bundle, columns)
    assert np.all(np.isfinite(got)) and len(np.unique(got)) > 100


def test_a_thousand_rows_with_unknowns(form: ServingForm, bundle: Bundle) -> None:
    assert_identical(form, bundle, rows_with_unknowns(bundle.metadata, 1000, seed=7))


@pytest.mark.parametrize("size", [1, 2, 7, FEW_ROWS, FEW_ROWS + 1, 64, 65])
def test_every_batch_size_agrees(form: ServingForm, bundle: Bundle, size: int) -> None:
    """Up to FEW_ROWS rows the buckets are found in Python, above by numpy (and the encoding switches at 64)."""
    assert_identical_in_chunks(form, bundle, as_columns(edge_rows(bundle.metadata)), size)
    assert_identical_in_chunks(form, bundle, rows_with_unknowns(bundle.metadata, 300, seed=11), size)


def test_values_on_beside_and_beyond_every_split_threshold(form: ServingForm, bundle: Bundle) -> None:
    """A value exactly on a split threshold, one float either side of it, +-inf and NaN, in every numeric column the
    model splits on, turn as scikit-learn's raw comparison turns them, in both paths."""
    base = form.encoding.transform(probe_columns(bundle.metadata, 7, seed=14))
    blocks = []
    numeric = [column for column in form.columns if column.edges is not None]
    assert numeric and all(len(column.edges) > 0 for column in numeric if column.edges is not None)
    for column in numeric:
        assert column.edges is not None
        edges = column.edges
        values = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf), [-np.inf, np.inf]])
        values = np.concatenate([values, [np.nan]])
        block = np.repeat(base, len(values) // len(base) + 1, axis=0)[: len(values)].copy()
        block[:, column.source] = values
        blocks.append(block)
    features = np.concatenate(blocks)
    assert len(features) > 500 and np.isinf(features).any() and np.isnan(features).any()
    expected = np.asarray(bundle.model.predict(features), dtype=np.float64)
    assert len(np.unique(expected)) > 100
    assert np.array_equal(form.predict_encoded(features), expected)
    for start in range(0, 200, 5):  # the few-rows path on the same rows
        assert np.array_equal(form.predict_encoded(features[start : start + 5]), expected[start : start + 5])


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


# --- models without a serving form, and other gradient-boosting models ---


def test_other_models_have_no_serving_form(bundle: Bundle, training_rows: tuple[Matrix, Matrix]) -> None:
    features, target = training_rows
    with pytest.raises(NoServingForm, match="LinearRegression, not a HistGradientBoostingRegressor"):
        compile_serving_form(bundle.transformer, LinearRegression().fit(features[:2000], target[:2000]))
    mask = bundle.transformer.categorical_mask_
    poisson = HistGradientBoostingRegressor(max_iter=5, loss="poisson", categorical_features=mask)
    with pytest.raises(NoServingForm, match="identity link"):
        compile_serving_form(bundle.transformer, poisson.fit(features[:2000], target[:2000]))


@pytest.mark.parametrize(
    "params",
    [
        {"categorical_features": None},  # no internal preprocessor at all: the codes go in as numbers
        {"categorical_features": "mask", "max_leaf_nodes": 60},  # more than 32 leaves: 64-bit masks
    ],
    ids=["numeric-only", "64-leaves"],
)
def test_other_gradient_boosting_models_stay_identical(
    bundle: Bundle, training_rows: tuple[Matrix, Matrix], params: dict[str, Any]
) -> None:
    features, target = training_rows
    if params["categorical_features"] == "mask":
        params = {**params, "categorical_features": bundle.transformer.categorical_mask_}
    model = HistGradientBoostingRegressor(max_iter=20, random_state=0, **params).fit(features[:5000], target[:5000])
    other = Bundle(path=bundle.path, metadata=bundle.metadata, transformer=bundle.transformer, model=model)
    compiled = compile_serving_form(bundle.transformer, model)
    assert compiled.reachable.dtype == (np.uint64 if params.get("max_leaf_nodes", 31) > 32 else np.uint32)
    for walk in WALKS:
        form = compiled.using(walk)
        assert_identical(form, other, probe_columns(bundle.metadata, 1000, seed=10))
        assert_identical(form, other, as_columns(edge_rows(bundle.metadata)))
        assert_identical_in_chunks(form, other, rows_with_unknowns(bundle.metadata, 200, seed=13), FEW_ROWS)
        assert_identical_in_chunks(form, other, as_columns(edge_rows(bundle.metadata)), 1)


# --- the load-time check ---

# The paths the form takes by row count, each as (fewest, most) rows: buckets found in Python; by numpy in one block;
# in several blocks of BLOCK_ROWS rows.
PATHS: Final = {"few-rows": (1, FEW_ROWS), "one-block": (FEW_ROWS + 1, BLOCK_ROWS), "blocks": (BLOCK_ROWS + 1, 10**6)}


def test_the_checked_batches_fit_the_probe_and_cover_each_path_at_both_ends() -> None:
    assert sum(CHECKED_BATCHES) <= PROBE_ROWS
    for low, _ in PATHS.values():  # the fewest rows of each path
        assert low in CHECKED_BATCHES
    assert FEW_ROWS in CHECKED_BATCHES  # the most rows of the few-rows path
    assert PROBE_ROWS % BLOCK_ROWS == 0 and PROBE_ROWS > BLOCK_ROWS  # the whole probe: full blocks, several


@pytest.mark.parametrize("path", list(PATHS))
def test_the_check_catches_a_difference_in_any_one_path(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A form off by one ulp only for the row counts of one path fails the check: it tries them all."""
    stored = StoredForm.load(bundle_dir / SERVING_FILE)
    stored.check()
    low, high = PATHS[path]
    real = ServingForm.predict_encoded

    def wrong_in_one_path(self: ServingForm, matrix: Matrix) -> Matrix:
        got = real(self, matrix)
        return np.nextafter(got, np.inf) if low <= len(matrix) <= high else got

    monkeypatch.setattr(ServingForm, "predict_encoded", wrong_in_one_path)
    with pytest.raises(ServingFormError, match="bit for bit"):
        stored.check()


def rehash(bundle_copy: Path) -> None:
    """Re-record the serving file's hash and the content hash, as a bundle written that way would hold them."""
    metadata = Metadata.model_validate_json((bundle_copy / METADATA_FILE).read_bytes())
    files = {**metadata.files, SERVING_FILE: file_digest(bundle_copy / SERVING_FILE)}
    metadata = metadata.model_copy(update={"files": files})
    metadata = metadata.model_copy(update={"content_hash": content_hash(metadata)})
    (bundle_copy / METADATA_FILE).write_text(json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n")


def test_a_form_whose_leaves_differ_by_one_ulp_is_refused_at_load(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    stored = StoredForm.load(copy / SERVING_FILE)
    stored.form.leaf_values[:] = np.nextafter(stored.form.leaf_values, np.inf)
    stored.save(copy / SERVING_FILE)
    with pytest.raises(BundleError, match="does not match its recorded sha256"):
        load_serving_bundle(copy)  # the content hash catches it first
    rehash(copy)
    with pytest.raises(BundleError, match=r"serving\.npz: it does not predict its stored probe records bit for bit"):
        load_serving_bundle(copy)


def test_a_malformed_form_is_refused_with_the_reason(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    (copy / SERVING_FILE).write_bytes(b"not a zip archive")
    rehash(copy)
    with pytest.raises(BundleError, match=r"serving\.npz: it cannot be read"):
        load_serving_bundle(copy)


def test_a_form_disagreeing_on_the_test_split_is_not_written(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At bundle time a form that differs from the model anywhere on the checked rows is an error, not a bundle."""
    from app.contract.bundle import save_bundle

    real = ServingForm.agrees
    calls = 0

    def second_call_differs(self: ServingForm, columns: Any, expected: Matrix) -> bool:
        nonlocal calls
        calls += 1
        return real(self, columns, expected) and calls == 1  # the probe passes, the test split does not

    monkeypatch.setattr(ServingForm, "agrees", second_call_differs)
    metadata = bundle.metadata
    with pytest.raises(BundleError, match="does not predict the test split bit for bit"):
        save_bundle(
            tmp_path / "b",
            transformer=bundle.transformer,
            model=bundle.model,
            features=metadata.features,
            target=metadata.target,
            metrics=metadata.metrics,
            baseline_metrics=metadata.baseline_metrics,
            data_hash=metadata.data_hash,
            example=metadata.example,
            check_columns=probe_columns(metadata, 100, seed=3),
        )
    assert calls == 2 and not (tmp_path / "b" / SERVING_FILE).exists()


def test_the_server_path_loads_and_predicts_without_scikit_learn(bundle_dir: Path, bundle: Bundle) -> None:
    """The serving modules, the bundle load and a prediction import neither scikit-learn, scipy nor skops."""
    record = bundle.metadata.example
    code = f"""
import json, sys
from pathlib import Path
import app.api.server
from app.contract.bundle import load_serving_bundle
served = load_serving_bundle(Path({str(bundle_dir)!r}))
value = served.predict({{k: [v] for k, v in {record!r}.items()}})[0]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {{"sklearn", "scipy", "skops", "threadpoolctl", "joblib"}})
print(json.dumps([float(value), heavy]))
"""
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    value, heavy = json.loads(ran.stdout)
    assert heavy == []
    assert value == float(bundle.predict({k: [v] for k, v in record.items()})[0])
