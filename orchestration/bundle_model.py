"""The bundle as an MLflow pyfunc model, logged as code (MLflow's "models from code"), so nothing is pickled.

``orchestration.publish`` logs this file with the bundle directory as the model's ``bundle`` artifact; MLflow
runs it when loading the model (``mlflow models serve``, ``mlflow.pyfunc.load_model``), which needs the
project's ``app`` package importable, as serving the bundle always does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from app.contract.bundle import Bundle, load_bundle

BUNDLE_ARTIFACT: Final = "bundle"  # the bundle directory's key among the pyfunc model's artifacts


class BundleModel(PythonModel):
    """Predictions of a verified bundle; the bundle's own loader refuses anything tampered or untrusted."""

    def load_context(self, context: PythonModelContext) -> None:
        self._bundle: Bundle = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> Any:
        return self._bundle.predict(model_input)


set_model(BundleModel())
