"""The model bundle: the one definition of its format, written by training and read by serving.

A bundle is a directory::

    transformer.skops   the fitted FeatureTransformer
    model.skops         the fitted regressor
    serving.npz         the serving form: the transformer and the trees as arrays (``app.contract.serving_form``)
    metadata.json       feature schema, target, metrics, data hash, library versions, file hashes

The server loads only the metadata and the serving form (``load_serving_bundle``), with numpy alone: the form was
checked against the model at bundle time and carries a probe that loading re-predicts bit for bit. A bundle
whose model has no serving form (any model but a single-output ``HistGradientBoostingRegressor`` with the
identity link), or one written before bundles carried one, is refused by the server with that reason.
Training, evaluation and offline checks load the scikit-learn artifacts (``load_bundle``). They are saved
with skops, whose loader refuses any type that is not explicitly trusted, so loading a bundle never executes
arbitrary code. ``content_hash`` covers every artifact file and the metadata itself;
loading recomputes it and refuses a tampered or incomplete bundle. Trusted types are not trusted structure:
a gradient-boosting model's trees are walked by compiled code that follows their child and feature indices
without checks, so loading also checks those (``check_trees``) and refuses a model that would loop or read
out of bounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from app.contract.hashing import file_digest
from app.contract.serving_form import (
    PROBE_ROWS,
    SERVING_FILE,
    NoServingForm,
    ServingForm,
    ServingFormError,
    StoredForm,
    compile_serving_form,
    probe_columns,
)

if TYPE_CHECKING:  # scikit-learn and skops load only when artifacts do: verifying a bundle stays cheap
    from app.contract.encoding import Columns
    from app.contract.features import FeatureTransformer

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
TRANSFORMER_FILE: Final = "transformer.skops"
MODEL_FILE: Final = "model.skops"
METADATA_FILE: Final = "metadata.json"
ARTIFACT_FILES: Final = (TRANSFORMER_FILE, MODEL_FILE)
DATE_FORMAT: Final = "%Y-%m-%d"

# Every type a bundle's skops files may contain beyond skops' built-in safe set. Anything else is refused.
TRUSTED_TYPES: Final[frozenset[str]] = frozenset(
    {
        "app.contract.features.FeatureTransformer",
        # Bundles written before the contract package existed name the transformer by its old module, which
        # ``app/features.py`` keeps importable.
        "app.features.FeatureTransformer",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.Interval",
        "sklearn._loss._loss.CyHalfSquaredError",
        "collections.OrderedDict",
        # HistGradientBoosting's internal categorical preprocessor wraps sklearn's own input check.
        "functools.partial",
        "sklearn.utils.validation.check_array",
    }
)


class BundleError(Exception):
    """A bundle is missing, incomplete, tampered with, or holds an untrusted type."""


Limit = float | str | None  # a number, or a date as an ISO ``YYYY-MM-DD`` string


def _unset(value: Any) -> bool:
    return value is None


class Feature(BaseModel):
    """One input column as the model saw it in training.

    ``minimum``/``maximum`` are the limits the server enforces (a date's as ISO strings): the configured bound,
    or, if training was asked to (``enforce_observed_ranges``), the range seen in the training split; none
    otherwise. ``observed_minimum``/``observed_maximum`` are the range seen in the training split, recorded and
    reported, never enforced. A bundle written before the observed range was recorded apart has no observed
    fields (they are left out of ``metadata.json`` when unset, so its content hash is unchanged): there the
    numeric minimum/maximum are enforced as they always were, and a date's, the range seen in training, are not.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["numeric", "categorical", "date"]
    dtype: Literal["float", "int", "str", "date"]
    minimum: Limit = None
    maximum: Limit = None
    categories: list[str] | None = None
    format: str | None = None  # dates only
    observed_minimum: Limit = Field(None, exclude_if=_unset)
    observed_maximum: Limit = Field(None, exclude_if=_unset)

    @property
    def records_observed(self) -> bool:
        """Whether the bundle recorded the range seen in training apart from the limits (bundles since then do)."""
        return self.observed_minimum is not None or self.observed_maximum is not None

    def limits(self) -> tuple[Limit, Limit]:
        """What the server enforces: ``minimum``/``maximum``, except an older bundle's date range (never enforced)."""
        if self.kind == "date" and not self.records_observed:
            return None, None
        return self.minimum, self.maximum

    def training_range(self) -> tuple[Limit, Limit]:
        """The range seen in the training split, if the bundle says: the observed fields, or an older bundle's date
        range; an older bundle's numeric range may be a configured bound, so it is not taken for one."""
        if self.records_observed:
            return self.observed_minimum, self.observed_maximum
        if self.kind == "date":
            return self.minimum, self.maximum
        return None, None


class Target(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    minimum: float
    maximum: float
    mean: float


class Metadata(BaseModel):
    """``metadata.json``: everything serving needs to know about the model without loading it.

    ``name`` is the model's name (the params file's ``name``, else the target's): the entrypoint serves a
    ``BUNDLE_DIR`` under it unless ``MODEL_NAME`` is set. A bundle written before bundles recorded a name has none
    (left out of ``metadata.json`` when unset, so its content hash is unchanged).
    """

    format_version: int = FORMAT_VERSION
    name: str | None = Field(None, exclude_if=_unset)
    created_at: str
    features: list[Feature]
    target: Target
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    params: dict[str, Any] = Field(default_factory=dict)
    data_hash: str
    rows: dict[str, int] = Field(default_factory=dict)
    library_versions: dict[str, str]
    example: dict[str, Any]
    files: dict[str, str]
    content_hash: str = ""

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


# What a serving form's arrays depend on: the server compares these with the bundle's and reports a difference.
SERVING_LIBRARIES: Final = ("python", "numpy")


def library_versions() -> dict[str, str]:
    """Versions that must match between training and serving for the artifacts to load identically (those of
    scikit-learn and skops only where they are installed: the serving image has neither)."""
    found = {"python": platform.python_version()}
    for name in ("scikit-learn", "numpy", "skops"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


# How many leading version parts must match for a library's stored form to be the one this server reads:
# scikit-learn's estimators and skops' file format change between minor releases, numpy's between majors.
# A bundle from another series is refused; any other difference is only reported (``library_differences``).
FORMAT_SERIES: Final[dict[str, int]] = {"scikit-learn": 2, "skops": 2, "numpy": 1}


def library_differences(recorded: dict[str, str], names: tuple[str, ...] | None = None) -> dict[str, dict[str, str]]:
    """Libraries (of ``names``, default all) whose version differs between a bundle's training (``recorded``) and
    this process: ``{name: {"bundle": ..., "server": ...}}``."""
    here = library_versions()
    return {
        name: {"bundle": version, "server": here.get(name, "absent")}
        for name, version in sorted(recorded.items())
        if here.get(name) != version and (names is None or name in names)
    }


def format_differences(recorded: dict[str, str], names: tuple[str, ...] | None = None) -> list[str]:
    """The differences that change a stored format (``FORMAT_SERIES``, of ``names``), each as "name bundle ->
    server"."""
    found = []
    for name, versions in library_differences(recorded, names).items():
        parts = FORMAT_SERIES.get(name)
        if parts and versions["bundle"].split(".")[:parts] != versions["server"].split(".")[:parts]:
            found.append(f"{name} {versions['bundle']} (server {versions['server']})")
    return found


def content_hash(metadata: Metadata) -> str:
    """sha256 over the metadata (minus this field), which itself lists every artifact file's sha256."""
    body = metadata.model_dump(mode="json", exclude={"content_hash"})
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def training_fingerprint(metadata: Metadata) -> str:
    """sha256 over what a model was trained from and how it scored: the metadata without its creation time, its
    artifact files' hashes (skops archives hold timestamps, so retraining changes them) and the content hash.
    Two bundles trained on the same data with the same parameters and library versions, scoring the very same
    metrics, share it: retraining the same way is not a new model."""
    body = metadata.model_dump(mode="json", exclude={"content_hash", "created_at", "files"})
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle directory whose hashes all hold, and its metadata."""

    path: Path
    metadata: Metadata

    @property
    def content_hash(self) -> str:
        return self.metadata.content_hash


@dataclass(frozen=True)
class Bundle(VerifiedBundle):
    """A loaded, verified bundle: its scikit-learn artifacts (training, evaluation, offline checks)."""

    transformer: FeatureTransformer
    model: Any

    def predict(self, columns: Columns) -> npt.NDArray[np.float64]:
        """Column mapping (DataFrame or dict of lists) -> predictions."""
        return np.asarray(self.model.predict(self.transformer.transform(columns)), dtype=np.float64)


@dataclass(frozen=True)
class ServingBundle(VerifiedBundle):
    """What the server loads of a bundle: its verified metadata and serving form (numpy only)."""

    form: ServingForm

    def predict(self, columns: Columns) -> npt.NDArray[np.float64]:
        """Column mapping -> the same predictions as ``Bundle.predict``."""
        return self.form.predict(columns)


def save_bundle(
    path: Path,
    *,
    transformer: FeatureTransformer,
    model: Any,
    features: list[Feature],
    target: Target,
    metrics: dict[str, float],
    baseline_metrics: dict[str, float],
    data_hash: str,
    example: dict[str, Any],
    params: dict[str, Any] | None = None,
    rows: dict[str, int] | None = None,
    name: str | None = None,
    check_columns: Columns | None = None,
) -> Metadata:
    """Write a bundle directory (created if needed; existing bundle files are replaced) and return its metadata.

    The serving form is written when the model has one, checked bit for bit against the model on the probe set and
    on ``check_columns`` (the test split) first: ``BundleError`` if it differs anywhere. A model without one gives a
    bundle without it, with a warning: the server refuses such a bundle."""
    path.mkdir(parents=True, exist_ok=True)
    import skops.io as sio

    sio.dump(transformer, path / TRANSFORMER_FILE)
    sio.dump(model, path / MODEL_FILE)
    (path / SERVING_FILE).unlink(missing_ok=True)
    metadata = Metadata(
        name=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        features=features,
        target=target,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        params=params or {},
        data_hash=data_hash,
        rows=rows or {},
        library_versions=library_versions(),
        example=example,
        files={},
    )
    files = [*ARTIFACT_FILES]
    if _write_serving_form(path, transformer, model, metadata, check_columns):
        files.append(SERVING_FILE)
    metadata = metadata.model_copy(update={"files": {name: file_digest(path / name) for name in files}})
    metadata = metadata.model_copy(update={"content_hash": content_hash(metadata)})
    (path / METADATA_FILE).write_text(json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n")
    return metadata


def _write_serving_form(
    path: Path, transformer: FeatureTransformer, model: Any, metadata: Metadata, check_columns: Columns | None
) -> bool:
    """Write ``serving.npz`` if the model has a serving form that predicts as the model does; whether it did."""
    try:
        form = compile_serving_form(transformer, model)
    except NoServingForm as exc:
        log.warning("bundle %s gets no serving form, so the server will refuse it: %s", path, exc)
        return False

    def reference(columns: Columns) -> npt.NDArray[np.float64]:
        return np.asarray(model.predict(transformer.transform(columns)), dtype=np.float64)

    probe = {name: np.asarray(values) for name, values in probe_columns(metadata, PROBE_ROWS).items()}
    stored = StoredForm(form, probe, reference(probe))
    try:
        stored.check()
    except ServingFormError as exc:
        raise BundleError(f"bundle {path}: the serving form {exc}") from None
    if check_columns is not None and not form.agrees(check_columns, reference(check_columns)):
        raise BundleError(f"bundle {path}: the serving form does not predict the test split bit for bit as the model")
    stored.save(path / SERVING_FILE)
    return True


def read_metadata(path: Path) -> Metadata:
    """Read and verify ``metadata.json`` and the artifact files' hashes, without loading the artifacts."""
    if not path.is_dir():
        raise BundleError(f"bundle directory {path} does not exist")
    if not (path / METADATA_FILE).is_file():
        missing = [name for name in (METADATA_FILE, *ARTIFACT_FILES) if not (path / name).is_file()]
        raise BundleError(f"bundle {path} is incomplete: missing {', '.join(missing)}")
    try:
        metadata = Metadata.model_validate_json((path / METADATA_FILE).read_bytes())
    except ValueError as exc:
        raise BundleError(f"bundle {path}: {METADATA_FILE} is not valid bundle metadata: {exc}") from exc
    listed = [*ARTIFACT_FILES, *(name for name in metadata.files if name not in ARTIFACT_FILES)]
    missing = [name for name in listed if not (path / name).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is incomplete: missing {', '.join(missing)}")
    if metadata.format_version != FORMAT_VERSION:
        raise BundleError(f"bundle {path}: format version {metadata.format_version}, expected {FORMAT_VERSION}")
    if content_hash(metadata) != metadata.content_hash:
        raise BundleError(f"bundle {path}: {METADATA_FILE} does not match its content hash (tampered?)")
    for name in listed:
        if metadata.files.get(name) != file_digest(path / name):
            raise BundleError(f"bundle {path}: {name} does not match its recorded sha256 (tampered?)")
    return metadata


def load_trusted(file: Path) -> Any:
    """Load one skops file, refusing any type outside ``TRUSTED_TYPES``: skops audits every type in the file
    against the list before it constructs anything, in the same pass that loads it (asking for the file's
    untrusted types first would read and parse it twice)."""
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return sio.load(file, trusted=sorted(TRUSTED_TYPES))
    except UntrustedTypesFoundException:
        refused = sorted(set(sio.get_untrusted_types(file=file)) - TRUSTED_TYPES)  # only to name them
        raise BundleError(f"{file} contains types that are not trusted: {', '.join(refused)}") from None


def check_trees(model: Any) -> None:
    """For a histogram gradient-boosting model: every split's children lie after it and within its tree (so a
    walk ends), its feature within the model's inputs (categorical only where the model has categories), and
    its category bitset within the tree's. Raises ``BundleError`` naming the first bad tree; other models pass."""
    predictors = getattr(model, "_predictors", None)
    if predictors is None:
        return
    n_features = int(getattr(model, "n_features_in_", 0))
    # Node feature indices count the binned inputs (categorical columns first), as the bin mapper sees them.
    categorical_features = getattr(getattr(model, "_bin_mapper", None), "is_categorical", None)
    for iteration, trees in enumerate(predictors):
        for tree in trees:
            nodes = tree.nodes
            split = ~nodes["is_leaf"].astype(bool)
            at = np.flatnonzero(split)
            left, right = nodes["left"][split].astype(np.int64), nodes["right"][split].astype(np.int64)
            feature = nodes["feature_idx"][split]
            on_category = nodes["is_categorical"][split].astype(bool)
            problem = None
            if ((left <= at) | (right <= at) | (left >= len(nodes)) | (right >= len(nodes))).any():
                problem = "a child index is out of range or not after its parent (a cycle)"
            elif ((feature < 0) | (feature >= n_features)).any():
                problem = f"a split on a feature index outside the model's {n_features} inputs"
            elif on_category.any() and (
                categorical_features is None
                or not np.asarray(categorical_features, dtype=bool)[feature[on_category]].all()
                or (nodes["bitset_idx"][split][on_category] >= len(tree.raw_left_cat_bitsets)).any()
            ):
                problem = "a categorical split on a feature or category set the model does not have"
            if problem is not None:
                raise BundleError(f"{MODEL_FILE}: tree {iteration} is malformed: {problem}")


def load_bundle(path: Path) -> Bundle:
    """Verify and load a bundle; raises ``BundleError`` with what is wrong."""
    metadata = read_metadata(path)
    if differences := format_differences(metadata.library_versions):
        raise BundleError(
            f"bundle {path} was trained with {', '.join(differences)}, whose stored format differs from this "
            "server's: serve it from an image with the same release series, or retrain it"
        )
    transformer = load_trusted(path / TRANSFORMER_FILE)
    from app.contract.features import FeatureTransformer

    if not isinstance(transformer, FeatureTransformer):
        raise BundleError(f"bundle {path}: {TRANSFORMER_FILE} holds {type(transformer).__name__}, not a transformer")
    model = load_trusted(path / MODEL_FILE)
    if not callable(getattr(model, "predict", None)):
        raise BundleError(f"bundle {path}: {MODEL_FILE} holds {type(model).__name__}, which cannot predict")
    try:
        check_trees(model)
    except BundleError as exc:
        raise BundleError(f"bundle {path}: {exc}") from None
    return Bundle(path=path, transformer=transformer, model=model, metadata=metadata)


def load_serving_bundle(path: Path) -> ServingBundle:
    """Verify a bundle and load its serving form, re-predicting the form's stored probe bit for bit (numpy only: no
    scikit-learn, no skops); raises ``BundleError`` with what is wrong."""
    metadata = read_metadata(path)
    if SERVING_FILE not in metadata.files:
        raise BundleError(
            f"bundle {path} has no serving form ({SERVING_FILE}): it was written before bundles carried one, or its "
            "model has none (only a single-output HistGradientBoostingRegressor with squared error does). This "
            "server predicts from serving forms only: retrain the bundle with this version's training pipeline"
        )
    if differences := format_differences(metadata.library_versions, SERVING_LIBRARIES):
        raise BundleError(
            f"bundle {path} was trained with {', '.join(differences)}, whose stored format differs from this "
            "server's: serve it from an image with the same release series, or retrain it"
        )
    try:
        stored = StoredForm.load(path / SERVING_FILE)
        stored.check()
    except ServingFormError as exc:
        raise BundleError(f"bundle {path}: {SERVING_FILE}: {exc}") from None
    encoding = stored.form.encoding
    if sorted([*encoding.numeric, *encoding.categorical, *encoding.dates]) != sorted(metadata.feature_names()):
        raise BundleError(f"bundle {path}: {SERVING_FILE} encodes other features than {METADATA_FILE} lists")
    return ServingBundle(path=path, metadata=metadata, form=stored.form)
