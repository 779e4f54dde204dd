"""The bundle round trip: identical predictions, tamper detection, and loading without ``orchestration``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

from app.contract.bundle import METADATA_FILE, MODEL_FILE, TRANSFORMER_FILE, BundleError, load_bundle
from orchestration.data import generate
from orchestration.pipeline import TrainResult

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def test_round_trip_predictions_equal(trained: TrainResult) -> None:
    records = generate(300, seed=99)
    bundle = load_bundle(trained.bundle_dir)
    from_frame = bundle.predict(records)
    from_lists = bundle.predict({c: records[c].tolist() for c in records.columns})
    one_by_one = [bundle.predict({c: [records[c].iloc[i]] for c in records.columns})[0] for i in range(20)]
    np.testing.assert_array_equal(from_frame, from_lists)
    np.testing.assert_array_equal(from_frame[:20], one_by_one)
    assert bundle.metadata.content_hash == trained.metadata.content_hash


def test_metadata_describes_the_model(bundle_dir: Path) -> None:
    metadata = load_bundle(bundle_dir).metadata
    assert metadata.feature_names() == [
        "time",
        "distance",
        "from_location",
        "to_location",
        "flight_type",
        "agency",
        "date",
    ]
    kinds = {f.name: f.kind for f in metadata.features}
    assert kinds["agency"] == "categorical" and kinds["date"] == "date" and kinds["distance"] == "numeric"
    assert set(metadata.metrics) == {"rmse", "mae", "r2"} and metadata.target.name == "price"
    assert len(metadata.data_hash) == 64 and {"scikit-learn", "skops", "numpy", "python"} <= set(
        metadata.library_versions
    )
    assert set(metadata.example) == set(metadata.feature_names())


@pytest.mark.parametrize("name", [TRANSFORMER_FILE, MODEL_FILE, METADATA_FILE])
def test_tampering_with_any_file_is_detected(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    if name == METADATA_FILE:
        metadata = json.loads(path.read_text())
        metadata["metrics"]["rmse"] = 0.001
        path.write_text(json.dumps(metadata))
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="tampered"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", [TRANSFORMER_FILE, MODEL_FILE, METADATA_FILE])
def test_incomplete_bundle_is_refused(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=f"incomplete: missing {name}"):
        load_bundle(bundle_copy)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_untrusted_type_is_refused(bundle_copy: Path) -> None:
    """A well-formed bundle whose model holds a type outside the allowlist does not load."""
    from app.contract.bundle import content_hash, read_metadata
    from app.contract.hashing import file_digest

    metadata = read_metadata(bundle_copy)
    sio.dump({"predict": np.float64(1.0), "sneaky": Path("/etc/passwd")}, bundle_copy / MODEL_FILE)
    files = {**metadata.files, MODEL_FILE: file_digest(bundle_copy / MODEL_FILE)}
    forged = metadata.model_copy(update={"files": files})
    forged = forged.model_copy(update={"content_hash": content_hash(forged)})
    (bundle_copy / METADATA_FILE).write_text(forged.model_dump_json())
    with pytest.raises(BundleError, match=r"not trusted: pathlib\.(Posix)?Path$"):
        load_bundle(bundle_copy)


def test_loads_without_orchestration(bundle_dir: Path, tmp_path: Path) -> None:
    """Only ``app/`` on the path and imports of training libraries blocked: the bundle still loads and predicts."""
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    records = generate(50, seed=8)
    expected = load_bundle(bundle_dir).predict(records)
    script = f"""
import sys, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {{'orchestration', 'pandas', 'mlflow', 'airflow', 'tests'}}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from pathlib import Path
from app.contract.bundle import load_bundle
try:
    import orchestration
    sys.exit('orchestration importable')
except ImportError:
    pass
records = json.loads(sys.stdin.read())
print(json.dumps(load_bundle(Path({str(bundle_dir)!r})).predict(records).tolist()))
"""
    columns = {c: records[c].tolist() for c in records.columns}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(columns),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.asarray(json.loads(result.stdout)), expected)


OLD_BUNDLE = Path(__file__).parent / "fixtures" / "bundle-written-as-app-features"


def test_new_bundles_name_the_transformer_by_its_contract_module(bundle_dir: Path) -> None:
    untrusted = sio.get_untrusted_types(file=bundle_dir / TRANSFORMER_FILE)
    assert "app.contract.features.FeatureTransformer" in untrusted
    assert "app.features.FeatureTransformer" not in untrusted


def test_a_bundle_written_before_the_contract_package_still_loads_and_predicts() -> None:
    """A real bundle saved when the transformer lived in ``app.features`` (kept importable by a re-export). It was
    written before bundles carried a serving form: the server refuses it, saying so, and its model compiles to one
    that agrees with it bit for bit (what retraining with this version gives)."""
    from app.contract.bundle import load_serving_bundle
    from app.contract.features import FeatureTransformer
    from app.contract.serving_form import compile_serving_form, probe_columns

    assert "app.features.FeatureTransformer" in sio.get_untrusted_types(file=OLD_BUNDLE / TRANSFORMER_FILE)
    bundle = load_bundle(OLD_BUNDLE)
    assert type(bundle.transformer) is FeatureTransformer
    columns = probe_columns(bundle.metadata, 200, seed=5)
    predictions = bundle.predict(columns)
    assert predictions.shape == (200,) and np.isfinite(predictions).all()
    assert np.array_equal(compile_serving_form(bundle.transformer, bundle.model).predict(columns), predictions)
    with pytest.raises(BundleError, match=r"has no serving form \(serving\.npz\).*retrain the bundle"):
        load_serving_bundle(OLD_BUNDLE)


def _with_model(bundle_dir: Path, model: object) -> None:
    """Replace the bundle's model and re-sign it: every hash holds, as if whoever can write the bucket did it."""
    from app.contract.bundle import content_hash, read_metadata
    from app.contract.hashing import file_digest

    metadata = read_metadata(bundle_dir)
    sio.dump(model, bundle_dir / MODEL_FILE)
    forged = metadata.model_copy(update={"files": {**metadata.files, MODEL_FILE: file_digest(bundle_dir / MODEL_FILE)}})
    (bundle_dir / METADATA_FILE).write_text(
        forged.model_copy(update={"content_hash": content_hash(forged)}).model_dump_json()
    )


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("left", 0, "a cycle"),  # the root's left child is the root: the compiled walk would never end
        ("right", 10**6, "out of range"),  # the walk would read past the tree (a segfault)
        ("feature_idx", 999, "outside the model's"),
        ("feature_idx", -1, "outside the model's"),
    ],
)
def test_a_re_signed_model_with_malformed_trees_is_refused(
    bundle_copy: Path, field: str, value: int, fragment: str
) -> None:
    model = load_bundle(bundle_copy).model
    tree = model._predictors[3][0]
    root = int(np.flatnonzero(~tree.nodes["is_leaf"].astype(bool))[0])
    tree.nodes[field][root] = value
    _with_model(bundle_copy, model)
    with pytest.raises(BundleError, match=f"tree 3 is malformed: .*{fragment}"):
        load_bundle(bundle_copy)


def test_a_categorical_split_on_a_numeric_feature_is_refused(bundle_copy: Path) -> None:
    model = load_bundle(bundle_copy).model
    tree = model._predictors[0][0]
    numeric = int(np.flatnonzero(~np.asarray(model._bin_mapper.is_categorical, dtype=bool))[0])
    split = int(np.flatnonzero(~tree.nodes["is_leaf"].astype(bool))[0])
    tree.nodes["is_categorical"][split], tree.nodes["feature_idx"][split] = 1, numeric
    _with_model(bundle_copy, model)
    with pytest.raises(BundleError, match="categorical split"):
        load_bundle(bundle_copy)
