"""What tests/orchestration/test_dag.py runs in its Airflow subprocess: ``python -m tests.harness.airflow_process ...``.

Airflow reads its configuration when first imported, so it gets a process of its own, with the environment
(``AIRFLOW_HOME``, sqlite metadata DB, the stack's variables) the test prepared. This module imports only
the standard library at the top, to keep the subprocess's start-up short. It prints one JSON line per
result, prefixed with ``RESULT``; everything else on stdout/stderr is Airflow's and the tasks' log.

    describe                      the DagBag's view of the DAG file: import errors, tasks, edges, retries
    run SCENARIOS_JSON            ``dag.test()`` for each {"name", "when", "conf"} in order, in one process
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

DAGS: Final = Path(__file__).resolve().parents[2] / "orchestration" / "dags"
DAG_ID: Final = "train_flight_price_model"
RESULT: Final = "DAG-TEST-RESULT "


def _seconds(delay: timedelta | float) -> float:
    return delay.total_seconds() if isinstance(delay, timedelta) else float(delay)


def describe() -> dict[str, Any]:
    """Parse the DAG folder the way the dag-processor does and describe what it found."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    dag = bag.dags.get(DAG_ID)
    return {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dags),
        "params": sorted(dag.params) if dag else [],
        "tasks": {
            t.task_id: {
                "upstream": sorted(t.upstream_task_ids),
                "retries": t.retries,
                "backoff": float(t.retry_exponential_backoff),
                "retry_delay_s": _seconds(t.retry_delay),
                "max_retry_delay_s": _seconds(t.max_retry_delay) if t.max_retry_delay else None,
            }
            for t in (dag.tasks if dag else [])
        },
    }


def run(name: str, when: str, conf: dict[str, Any]) -> dict[str, Any]:
    """One ``dag.test()``; the same ``when`` gives the same run id, so a repeat reruns the same DAG run."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = DagBag(dag_folder=str(DAGS)).dags[DAG_ID]
    moment = datetime.fromisoformat(when)
    started = time.perf_counter()
    dag_run = dag.test(run_after=moment, logical_date=moment, run_conf=conf)
    seconds = time.perf_counter() - started
    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.run_id == dag_run.run_id, XComModel.key == "return_value")
        xcom = {row.task_id: row.value for row in rows}
    return {
        "name": name,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "tasks": {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()},
        "xcom": xcom,
        "seconds": seconds,
    }


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "describe":
        print(RESULT + json.dumps(describe(), default=str), flush=True)
        return
    for scenario in json.loads(args[0]):  # each result printed as soon as its run ends: it closes its log
        print(RESULT + json.dumps(run(**scenario), default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
