"""Build what the container tests replay ahead of them, so ``.ci/run`` overlaps it with its other steps.

    python -m tests.harness.warm

Seeds the module's uv cache volume from the host's uv cache (once per engine), then, in order: the stand-in bases
and the serving image (``build()``), the ``serving`` phase; the seed step and ``checks()`` up to its unit tests
(the tools container), the ``tools`` phase; the Airflow image (``airflow()`` on the Airflow stand-in) and the
compose stack's other stand-ins, the ``airflow`` phase. Beside them, on a thread, the ``emulated`` phase: the arm64
stand-ins, and both images ``publish()`` pushes for every platform of the module. The replay caches
the steps that succeed, so the container tests later find them done (each phase's tests wait for it); they run
every check themselves (the smoke checker and ``checks()``'s unit tests among them).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

from dagger import Ignore, dag

from tests.harness.engine import DOCKER, Engine, EngineError, engine_dir, start
from tests.harness.replay import Replay, ReplayError
from tests.harness.services import BIN
from tests.harness.standins import (
    NATIVE_PLATFORM,
    airflow_standin,
    postgres_standin,
    python_standin,
    s3_standin,
    standin_variants,
    uv_standin,
)

REPO: Final = Path(__file__).resolve().parents[2]
MODULE_SOURCE: Final = REPO / "ci" / "src"
if str(MODULE_SOURCE) not in sys.path:
    sys.path.insert(0, str(MODULE_SOURCE))

from flight_price.main import AIRFLOW_VERSION, PLATFORMS, UV_CACHE_VOLUME, FlightPrice  # noqa: E402 (the module's source is on the path above)


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


def phase_lock(phase: str) -> Path:
    """The lock of one phase of the warm-up (``PHASES``): ``serving`` (the serving image, which most container
    tests use), ``tools`` (the tools container: the seed step, ``checks()``), ``airflow`` (the Airflow image and
    the compose stack's other stand-ins) or ``emulated`` (the other platforms' images, for the publish tests)."""
    return engine_dir() / f"warm-{phase}.lock"


@contextmanager
def warming(phase: str) -> Iterator[None]:
    """Hold ``phase``'s lock while its images are made, so the tests that need them wait instead of making them
    a second time beside the warm-up."""
    lock = phase_lock(phase)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def wait_for_warm_up(phase: str) -> None:
    """Return once a running warm-up has made ``phase``'s images (at once when none runs)."""
    lock = phase_lock(phase)
    if not lock.exists():
        return
    with lock.open() as held:
        try:
            fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"\nwaiting for the warm-up's {phase} images ({lock})", file=sys.stderr, flush=True)
            fcntl.flock(held, fcntl.LOCK_SH)


def host_uv_cache() -> Path:
    """The host's uv cache (``uv cache dir``: ``UV_CACHE_DIR`` or uv's default), where ``uv sync`` put the lock's
    wheels for this platform."""
    found = subprocess.run([str(BIN / "uv"), "cache", "dir"], capture_output=True, text=True, check=True)
    return Path(found.stdout.strip())


def seed_uv_cache(engine: Engine) -> None:
    """Fill the module's uv cache volume (``UV_CACHE_VOLUME``) from the host's uv cache, once per engine.

    The host's ``uv sync --frozen`` fetched the wheels the lock pins; the module's uv steps fetch the same ones
    (uv checks each against the lock's hashes), and the engine keeps them on that volume between runs as Dagger keeps
    a cache volume. Seeding spares the first run those downloads (minutes here); what is built is the same."""
    volume = Replay.volume_name(UV_CACHE_VOLUME)
    if subprocess.run([DOCKER, "volume", "inspect", volume], env=engine.env(), capture_output=True).returncode == 0:
        return
    source = host_uv_cache()
    if not source.is_dir():
        print(f"warm: no host uv cache at {source}: the module's uv steps download", file=sys.stderr)
        return
    image = python_standin(engine)
    started = time.monotonic()
    copied = subprocess.run(
        [DOCKER, "run", "--rm", f"--volume={source}:/host-cache:ro", f"--volume={volume}:/cache",
         "--entrypoint", "cp", image, "-a", "/host-cache/.", "/cache/"],
        env=engine.env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if copied.returncode != 0:  # a partial copy is not kept: the volume is made again, empty, by the first step
        subprocess.run([DOCKER, "volume", "rm", "--force", volume], env=engine.env(), capture_output=True)
        raise EngineError(f"seeding {volume} from {source} failed:\n{copied.stderr[-2000:]}")
    print(f"warm: {volume} seeded from {source} ({time.monotonic() - started:.0f} s)", file=sys.stderr)


PHASES: Final = ("serving", "tools", "airflow", "emulated")


class Phases:
    """The warm-up's phase locks, all taken at its start; each is released once its images are made (or the
    warm-up failed: the tests then make what they need themselves)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.stacks = {phase: ExitStack() for phase in PHASES}
        for phase, stack in self.stacks.items():
            stack.enter_context(warming(phase))

    def done(self, phase: str, what: str) -> None:
        self.stacks[phase].close()
        print(f"warm: {what} ({time.monotonic() - self.started:.0f} s)", file=sys.stderr, flush=True)

    def release(self) -> None:
        for stack in self.stacks.values():
            stack.close()


def native_phases(engine: Engine, phases: Phases) -> None:
    """The serving image, then the tools container (the seed step, ``checks()`` up to its unit tests), then the
    Airflow image and the compose stack's other stand-ins."""
    flight_price = module_on_standins(engine)
    with Replay(engine, prune=False) as replay:  # another run may be using steps this one does not
        replay.image(flight_price.build())
        phases.done("serving", "the serving image is built")
        replay.evaluate(flight_price.seed())
        # checks() up to its unit tests (lint and type check): its unit tests would run beside the host's, and
        # timing-sensitive ones fail then
        replay.evaluate_selections(list(flight_price.checks()._ctx.selections)[:-1])
        phases.done("tools", "the tools container is built")
        replay.image(module_on_standins(engine, airflow=True).airflow())
        postgres_standin(engine)
        s3_standin(engine)
        phases.done("airflow", "the Airflow image and the compose stack's stand-ins are built")


def emulated_phase(engine: Engine, phases: Phases, seeded: threading.Event) -> None:
    """What ``publish()`` pushes: both images for every platform, the non-native ones made under emulation. The
    non-native python stand-ins first (debootstrap under qemu-user, the longest part), then the other stand-ins;
    the images once the uv cache volume is seeded. Independent of the native phases, so it runs beside them."""
    for platform in PLATFORMS:
        if platform != NATIVE_PLATFORM:
            python_standin(engine, platform)
    variants = standin_variants(engine, airflow_version=AIRFLOW_VERSION)
    seeded.wait()
    with Replay(engine, prune=False, variants=variants) as replay:
        with_airflow = module_on_standins(engine, airflow=True)
        for platform in PLATFORMS:
            replay.image(with_airflow.build(platform))
            replay.image(with_airflow.airflow(platform))
    phases.done("emulated", "both platforms' images are built")


def main() -> int:
    phases = Phases()
    try:
        engine = start()
        seeded = threading.Event()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="emulated") as pool:
            # mostly qemu-user's CPU work, where the native phases mostly wait on downloads
            emulated = pool.submit(emulated_phase, engine, phases, seeded)
            try:
                try:
                    seed_uv_cache(engine)  # before any uv step uses the volume
                finally:
                    seeded.set()
                native_phases(engine, phases)
            finally:
                emulated.result()
    except (EngineError, ReplayError) as error:
        print(f"warm: {error}", file=sys.stderr)
        return 1
    finally:
        phases.release()
    print(f"warm: the container tests' images are built ({time.monotonic() - phases.started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
