"""Defaults of a training run that the DAG file needs when it is parsed: the generated data set's size and seed,
and the promotion gate's margin.

Standard library only: the dag-processor parses the DAG file periodically, and every task process parses it
again before it runs, so what the file imports is paid each time. ``orchestration.data`` and
``orchestration.gate`` (pandas, the contract's models) take these values from here.
"""

from __future__ import annotations

from typing import Final

# Rows of the generated flight data set (the size of the original data set) and its seed.
DEFAULT_ROWS: Final = 271_888
DEFAULT_SEED: Final = 7
# Relative improvement in RMSE a new model needs over the champion: 1% by default.
DEFAULT_MARGIN: Final = 0.01
