"""Build the serving form's compiled walk (``walk.c``): one shared library per architecture, next to the source.

``python -m app.contract.walk_build`` compiles ``walk.c`` with zig's C compiler (the ``ziglang`` wheel of the
``build`` dependency group, so no system compiler is needed) for every architecture the serving image is made for,
cross-compiling from whichever machine runs it: ``walk-x86_64.so`` and ``walk-aarch64.so``. Each is built for the
architecture's baseline CPU (no ``-march=native``: the image runs on other machines), with no C library linked and
floating-point contraction off, and carries the digest of the source it was built from (``walk_kernel`` calls only a
library whose digest matches the ``walk.c`` beside it). Each library is written under a temporary name, then
renamed, so a concurrent build or a running server never sees half a file.

The serving image's build runs it in its own builder stage (``ci/src/flight_price/main.py``); the quickstart and
the test suite run it before serving. Without a library, the server predicts with the numpy walk, which is slower
and says so in its log and on ``GET /model``.

This module imports only the standard library: the image's builder runs it with nothing but the ``build`` group.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).with_name("walk.c")
# The architectures a library is built for (the serving image's platforms, by ``platform.machine()``), and zig's
# target for each.
TARGETS: Final[dict[str, str]] = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
FLAGS: Final = ("-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-nostdlib")
BUILD_TIMEOUT_S: Final = 300  # zig's first run builds nothing it needs from the C library (-nostdlib): seconds


class WalkBuildError(Exception):
    """The compiled walk could not be built (zig missing or failing); the message says why."""


def library_name(machine: str) -> str:
    return f"walk-{machine}.so"


def library_here() -> Path:
    """Where this machine's library lies (or goes): beside ``walk.c``, named for ``platform.machine()``."""
    return SOURCE.with_name(library_name(platform.machine()))


def build_here() -> Path:
    """This machine's library only: what the quickstart, the test suite and the benchmarks build before they serve
    (``WalkBuildError`` for an architecture with no zig target, e.g. ``arm64`` on macOS)."""
    [library] = build(machines=(platform.machine(),))
    return library


def source_digest(source: Path = SOURCE) -> int:
    """The digest a library built from ``source`` carries: the first 8 bytes of its SHA-256, as an integer."""
    return int.from_bytes(hashlib.sha256(source.read_bytes()).digest()[:8], "big")


def build(
    output_dir: Path = SOURCE.parent, machines: tuple[str, ...] = tuple(TARGETS), source: Path = SOURCE
) -> list[Path]:
    """Compile ``source`` (``walk.c``) for each of ``machines`` into ``output_dir``; the libraries written."""
    unknown = [m for m in machines if m not in TARGETS]
    if unknown:
        raise WalkBuildError(f"no zig target for {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    define = f"-DWALK_SOURCE={source_digest(source)}ULL"
    written = []
    with tempfile.TemporaryDirectory(prefix="walk-build-") as cache:
        env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": cache, "ZIG_LOCAL_CACHE_DIR": cache}
        for machine in machines:
            target = output_dir / library_name(machine)
            partial = output_dir / f".{target.name}.{os.getpid()}.partial"
            command = [sys.executable, "-m", "ziglang", "cc", "-target", TARGETS[machine], *FLAGS, define]
            try:
                done = subprocess.run(
                    [*command, "-o", str(partial), str(source)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                partial.unlink(missing_ok=True)
                raise WalkBuildError(f"zig cc for {machine} took more than {BUILD_TIMEOUT_S} s") from None
            if done.returncode != 0:
                partial.unlink(missing_ok=True)
                detail = (done.stderr or done.stdout).strip()[-2000:]
                if "No module named ziglang" in detail:
                    detail = "the ziglang package is not installed (uv sync --group build)"
                raise WalkBuildError(f"zig cc for {machine} failed: {detail}")
            os.replace(partial, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.contract.walk_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=SOURCE.parent, help="where the libraries go")
    parser.add_argument("--machine", action="append", choices=list(TARGETS), help="only these (default: all)")
    args = parser.parse_args(argv)
    try:
        for path in build(args.output_dir, tuple(args.machine or TARGETS)):
            print(f"walk_build: wrote {path} ({path.stat().st_size} bytes)")
    except WalkBuildError as exc:
        print(f"walk_build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
