"""Every container of the flight-price stack, defined in Python.

`build` is the serving image, `airflow` the orchestration image, `smoke` starts the serving image against
mock S3 and MLflow services and checks its predictions, `test` runs the checks and the smoke test, `publish`
pushes both images for linux/amd64 and linux/arm64, and `serve` runs the image with its mocks locally.
"""

from .main import FlightPrice as FlightPrice
