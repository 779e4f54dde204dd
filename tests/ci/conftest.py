"""The Dagger module lives in ci/src (the layout `dagger init --sdk=python --source=ci` creates)."""

from __future__ import annotations

import sys
from pathlib import Path

MODULE_SOURCE = Path(__file__).resolve().parents[2] / "ci" / "src"
if str(MODULE_SOURCE) not in sys.path:
    sys.path.insert(0, str(MODULE_SOURCE))
