"""The test suite; ``tests/harness/`` is its tooling.

Each pytest-xdist worker's OpenMP (scikit-learn's: training, and ``Bundle.predict``'s walk of every tree) gets its
share of the cores, as scikit-learn's own suite does: with two workers on two cores, each worker's OpenMP threads
otherwise outnumber the cores, and every parallel region of a small prediction waits on a thread that is not
running (a test of per-row predictions took 6.7 s instead of 1.6 s beside two busy processes). Set here, before
anything imports scikit-learn, and inherited by the servers and commands the tests start.
"""

import os

if _workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):  # in a worker (not its controller: -n 0)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _workers)))
