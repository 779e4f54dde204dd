"""What the serving venv holds against what a serving process imports: the measurement a leaner image starts from.

Runs in the image's serving venv (``bench/.venvs/serve``, synced as the image syncs it: ``bench.peers.serving_venv``)
a child process that serves a bundle from ``BUNDLE_DIR`` with the real app on 127.0.0.1 (uvicorn in a thread),
answers a record, a batch, ``/metrics`` and ``/docs``, then lists the top-level packages it imported from
site-packages. Each package's size on disk (its bytecode included, the test suites the image prunes left out) is
then summed by whether serving imported it. Pulling a bundle (DVC, botocore) and tracing (OpenTelemetry) are
other paths, imported only when they run; they show as not imported here.

Usage: ``uv run --frozen python -m bench.venv_use --bundle DIR [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
PRUNED: Final = ("tests", "test")  # ci/src/flight_price/main.py's prune_test_suites

CHILD: Final = r"""
import json, sys, sysconfig, threading, time, urllib.request
from pathlib import Path
import uvicorn
from app.api.server import create_app
from app.settings import get_settings
from tests.harness.services import free_port  # the standard library only, as the serving venv has

port = free_port()
server = uvicorn.Server(uvicorn.Config(create_app(get_settings()), host="127.0.0.1", port=port, log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
url = f"http://127.0.0.1:{port}"
for _ in range(600):
    try:
        urllib.request.urlopen(url + "/health/ready", timeout=2)
        break
    except OSError:
        time.sleep(0.1)
example = json.loads((Path(sys.argv[1]) / "metadata.json").read_text())["example"]
for path, body in (("/predict", example), ("/predict/batch", {"records": [example] * 100})):
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
for path in ("/metrics", "/docs"):
    urllib.request.urlopen(url + path, timeout=30).read()
server.should_exit = True
thread.join(10)
site = Path(sysconfig.get_paths()["purelib"])
used = {Path(m.__file__).relative_to(site).parts[0] for m in list(sys.modules.values())
        if getattr(m, "__file__", None) and m.__file__.startswith(str(site))}
print(json.dumps(sorted(used)))
"""


def size_kb(path: Path) -> int:
    """Bytes under ``path`` in KiB, the pruned test suites left out."""
    if path.is_file():
        return path.stat().st_size // 1024
    total = 0
    for parent, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in PRUNED]
        total += sum((Path(parent) / f).stat().st_size for f in files)
    return total // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle directory to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "venv_use.json")
    args = parser.parse_args()
    from bench.peers import serving_venv, site_packages

    python = serving_venv(lambda line: print(line, flush=True)) / "python"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BUNDLE_DIR": str(args.bundle.resolve()), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [str(python), "-c", CHILD, str(args.bundle.resolve())], capture_output=True, text=True, env=env, check=False
    )
    if completed.returncode != 0:
        sys.exit(f"the serving process failed: {completed.stderr.strip()[-2000:]}")
    imported = {name.removesuffix(".py") for name in json.loads(completed.stdout.strip().splitlines()[-1])}
    site = site_packages(python)
    packages: list[dict[str, Any]] = []
    for entry in sorted(site.iterdir()):
        if entry.name.endswith(".dist-info") or entry.name == "__pycache__":
            continue
        name = entry.name.removesuffix(".py").removesuffix(".libs")  # numpy.libs: numpy's bundled libraries
        packages.append({"package": entry.name, "mb": size_kb(entry) / 1024, "imported": name in imported})
    total = sum(p["mb"] for p in packages)
    used = sum(p["mb"] for p in packages if p["imported"])
    print(f"serving venv {total:.0f} MB (test suites pruned); imported by serving from disk {used:.0f} MB; "
          f"not imported {total - used:.0f} MB")  # fmt: skip
    for package in sorted(packages, key=lambda p: -float(p["mb"]))[:25]:
        print(f"{package['mb']:7.1f} MB  {'imported' if package['imported'] else '        '}  {package['package']}")
    report = {"benchmark": "venv_use", "total_mb": total, "imported_mb": used, "packages": packages}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
