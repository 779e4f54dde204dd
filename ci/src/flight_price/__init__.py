"""Every container of the flight-price stack, defined in Python.

`build` is the serving image, `airflow` the orchestration image; `lint`, `typecheck`, `unit_tests` and `smoke`
are the checks `dagger check` runs (`smoke` starts the serving image against mock S3 and MLflow services and
checks its predictions), `test` runs them all in one call, `publish` pushes both images for linux/amd64 and
linux/arm64, and `serve` runs the image with its mocks locally (`dagger call serve up`).
"""

from .main import FlightPrice as FlightPrice
