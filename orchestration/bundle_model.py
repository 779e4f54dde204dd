"""The bundle as an MLflow pyfunc model, logged as code (MLflow's "models from code"), so nothing is pickled.

``orchestration.publish`` logs this file with the bundle directory as the model's ``bundle`` artifact; MLflow
runs it when loading the model (``mlflow models serve``, ``mlflow.pyfunc.load_model``). The modules of ``app``
it needs (``CODE_FILES``) are logged with it as the model's ``code_paths``, which MLflow puts first on
``sys.path`` before running this file: the model loads in any directory, without this repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from app.contract.bundle import Bundle, load_bundle

BUNDLE_ARTIFACT: Final = "bundle"  # the bundle directory's key among the pyfunc model's artifacts
# The project's files this model imports: this module's import, what it imports in turn (at module level or
# inside functions), and ``app/features.py``, the old home of the transformer that bundles written before
# ``app.contract`` existed name (``app.contract.bundle.TRUSTED_TYPES``). Logged as the model's code, under ``app/``;
# tests/orchestration/test_bundle_model.py checks that the list is closed under the project's imports.
CODE_FILES: Final = (
    "app/__init__.py",
    "app/features.py",
    "app/contract/__init__.py",
    "app/contract/bundle.py",
    "app/contract/encoding.py",
    "app/contract/features.py",
    "app/contract/hashing.py",
    "app/contract/serving_form.py",
    "app/contract/walk_build.py",
    "app/contract/walk_kernel.py",
)


class BundleModel(PythonModel):
    """Predictions of a verified bundle; the bundle's own loader refuses anything tampered or untrusted."""

    def load_context(self, context: PythonModelContext) -> None:
        self._bundle: Bundle = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> Any:
        return self._bundle.predict(model_input)


set_model(BundleModel())
