"""Build what the container tests replay ahead of them, so ``.ci/run`` overlaps it with its other steps.

    python -m tests.containers.warm

Makes the stand-in bases, then replays the serving image (``build()``), the seed step (the tools container and
its bundle) and the Airflow image (``airflow()`` on the Airflow stand-in) on the engine, and builds the compose
stack's other stand-ins. The replay caches the steps that succeed, so the container tests later find them
done; they run every check themselves (the smoke checker and ``checks()`` among them).
"""

from __future__ import annotations

import sys
import time
import typing
from pathlib import Path
from typing import Any, Final

from dagger import Ignore, dag

from tests.containers.engine import Engine, EngineError, start
from tests.containers.replay import Replay, ReplayError
from tests.containers.standins import airflow_standin, postgres_standin, python_standin, s3_standin, uv_standin

REPO: Final = Path(__file__).resolve().parents[2]
MODULE_SOURCE: Final = REPO / "ci" / "src"
if str(MODULE_SOURCE) not in sys.path:
    sys.path.insert(0, str(MODULE_SOURCE))

from flight_price.main import AIRFLOW_VERSION, FlightPrice  # noqa: E402 (the module's source is on the path above)


def source_ignore() -> list[str]:
    """The ``Ignore`` patterns the module declares on its ``source`` directory."""
    metadata = typing.get_type_hints(FlightPrice, include_extras=True)["source"].__metadata__
    return list(next(m for m in metadata if isinstance(m, Ignore)).patterns)


def module_on_standins(engine: Engine, *, airflow: bool = False) -> FlightPrice:
    """The module object as ``dagger call`` makes it, on the stand-ins, its source uploaded as Dagger uploads it.

    With ``airflow``, its Airflow base is the Airflow stand-in too (built once per recipe: minutes the first time).
    """
    constructor: Any = FlightPrice  # see tests/ci/test_plan.py: mypy sees no constructor arguments
    bases = {"python_image": python_standin(engine), "uv_image": uv_standin(engine)}
    if airflow:
        bases["airflow_image"] = airflow_standin(engine, AIRFLOW_VERSION)
    module_object: FlightPrice = constructor(source=dag.host().directory(str(REPO), exclude=source_ignore()), **bases)
    return module_object


def main() -> int:
    started = time.monotonic()
    try:
        engine = start()
        flight_price = module_on_standins(engine)
        with Replay(engine, prune=False) as replay:  # another run may be using steps this one does not
            replay.image(flight_price.build())
            replay.evaluate(flight_price.seed())
            # the compose stack's images: the Airflow image on its stand-in base, and the other services' stand-ins
            replay.image(module_on_standins(engine, airflow=True).airflow())
            postgres_standin(engine)
            s3_standin(engine)
            # not checks(): its unit tests would run beside the host's, and timing-sensitive ones fail under that load
    except (EngineError, ReplayError) as error:
        print(f"warm: {error}", file=sys.stderr)
        return 1
    print(f"warm: the container tests' images are built ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
