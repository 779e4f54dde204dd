"""``bench.serve``'s peers in several setups: which setups ``--servers`` selects, which setup of each peer is
taken per scenario (the best in that run, among its setups that answered every request), the ratios and targets
computed against it, and the BentoML service file of each setup.

Unit tests: synthetic load results, no peer venv and no server (the bench itself makes those).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from app.contract.bundle import Bundle, load_bundle
from bench import serve
from bench.load import LoadResult
from bench.peers import BENTOML_MAX_BATCH_SIZE, BENTOML_MAX_LATENCY_MS, BENTOML_SERVICE


def run(rps: float, p99_ms: float, errors: int = 0, seconds: float = 8.0) -> LoadResult:
    return LoadResult("wrk", 1, round(rps * seconds), errors, seconds, p50_ms=p99_ms / 4, p99_ms=p99_ms)


def test_aliases_select_every_setup_of_a_peer() -> None:
    assert serve.selection("bentoml") == ["bentoml-nobatch", "bentoml-batch"]
    assert serve.selection("mlserver") == [
        "mlserver-p0",
        "mlserver-default",
        "mlserver-p0-batch",
        "mlserver-default-batch",
    ]
    peers = serve.selection("peers")
    assert peers == [*serve.BENTOMLS, *serve.MLSERVERS, serve.MLFLOW]
    assert serve.selection("peers,floor") == [serve.FLOOR, *peers]
    assert serve.selection("all") == list(serve.SERVER_KEYS)
    assert serve.selection("mlserver-default-batch,this") == [serve.THIS, "mlserver-default-batch"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown server 'bentoml-async'"):
        serve.selection("bentoml-async")


def test_every_setup_belongs_to_one_peer_and_says_what_it_runs() -> None:
    setups = [key for keys in serve.PEERS.values() for key in keys]
    assert len(setups) == len(set(setups)) == len(serve.PEER_KEYS)
    assert set(serve.PEER_KEYS) == set(serve.SERVER_KEYS) - {serve.THIS, serve.FLOOR}
    assert set(serve.DIFFERENCES) == set(serve.SERVER_KEYS)


def test_each_peer_is_taken_at_its_best_setup_per_measure() -> None:
    by = {
        "bentoml-nobatch": run(120, p99_ms=40),
        "bentoml-batch": run(400, p99_ms=300),
        "mlserver-p0": run(150, p99_ms=30),
        "mlserver-default": run(0, p99_ms=0),  # no answer for the whole run
        "mlserver-p0-batch": run(900, p99_ms=5, errors=12),  # refusing: fast answers that are not predictions
        serve.THIS: run(3000, p99_ms=10),
    }
    taken = serve.peer_bests(by)
    assert taken == {
        "bentoml": {"setups": ["bentoml-nobatch", "bentoml-batch"], "rps": "bentoml-batch", "p99": "bentoml-nobatch"},
        "mlserver": {
            "setups": ["mlserver-p0", "mlserver-default", "mlserver-p0-batch"],
            "rps": "mlserver-p0",
            "p99": "mlserver-p0",
        },
    }
    fastest, steadiest = serve.best_peer(taken, by)
    assert fastest is not None and fastest[0] == "bentoml-batch"
    assert steadiest is not None and steadiest[0] == "mlserver-p0"


def test_a_peer_none_of_whose_setups_answered_every_request_has_no_figure() -> None:
    by = {"bentoml-nobatch": run(50, p99_ms=900, errors=3), "bentoml-batch": run(0, p99_ms=0)}
    taken = serve.peer_bests(by)
    assert taken == {"bentoml": {"setups": ["bentoml-nobatch", "bentoml-batch"], "rps": None, "p99": None}}
    assert serve.best_peer(taken, by) == (None, None)
    (line,) = serve.describe_taken({"single c32": taken}, {"single c32": by})
    assert "none: no setup answered every request" in line
    assert "left out: bentoml-nobatch (3 errors in 400), bentoml-batch (0 errors in 0)" in line


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``summarise`` over one synthetic run of this server, the floor and two setups of each peer."""
    results = {
        "single c1": {
            serve.THIS: run(2400, 1.0),
            serve.FLOOR: run(5000, 0.5),
            "bentoml-nobatch": run(130, 12.0),
            "bentoml-batch": run(20, 60.0),
            "mlserver-p0": run(150, 14.0),
            "mlserver-p0-batch": run(140, 9.0),
        },
        "single c32": {
            serve.THIS: run(4000, 10.0),
            serve.FLOOR: run(6000, 9.0),
            "bentoml-nobatch": run(110, 400.0),
            "bentoml-batch": run(420, 290.0),
            "mlserver-p0": run(150, 52.0, errors=1),
            "mlserver-p0-batch": run(300, 120.0),
        },
        "batch1000 c4": {
            serve.THIS: run(90, 80.0),
            serve.FLOOR: run(330, 20.0),
            "bentoml-nobatch": run(28, 300.0),
            "bentoml-batch": run(27, 310.0),
            "mlserver-p0": run(50, 180.0),
            "mlserver-p0-batch": run(58, 170.0),
        },
        serve.V2_SCENARIO: {serve.THIS: run(120, 40.0)},
    }
    keys = [serve.THIS, serve.FLOOR, "bentoml-nobatch", "bentoml-batch", "mlserver-p0", "mlserver-p0-batch"]
    rss = {serve.THIS: 170.0, serve.FLOOR: 60.0, "bentoml-nobatch": 230.0, "bentoml-batch": 232.0}
    rss |= {"mlserver-p0": 200.0, "mlserver-p0-batch": 215.0}
    memory = {
        k: {
            "worker_rss_mb": rss[k],
            "processes": 1,
            "worker_threads": 2,
            "request_log_lines_per_request": 1.0,
            "idle_cpu_pct": 0.0,
        }
        for k in keys
    }
    status = {k: {"status": "measured", "start_s": 3.0, "check": None} for k in keys}
    figures = {"server_predictor_1_ms": 0.07, "bundle_predict_1_ms": 3.6, "server_predictor_1000_ms": 9.0}
    metadata = types.SimpleNamespace(rows=1000)
    bundle = cast(
        "Bundle", types.SimpleNamespace(metadata=metadata, content_hash="h", path=tmp_path_factory.mktemp("b"))
    )
    args = argparse.Namespace(duration=8.0)
    load = {"before": [0.5, 0.5, 0.5], "after": [1.0, 1.0, 1.0]}
    return serve.summarise(results, memory, status, figures, "wrk", args, bundle, load, {})


def test_the_ratios_are_to_the_best_peers_best_setup_in_the_run(summary: dict[str, Any]) -> None:
    c1, c32, batch = (summary["ratios_to_best_peer"][s] for s in ("single c1", "single c32", "batch1000 c4"))
    assert (c1["best_peer_rps"], c1["rps"]) == ("mlserver-p0", round(2400 / 150, 2))
    assert (c1["lowest_p99_peer"], c1["p99"]) == ("mlserver-p0-batch", round(1.0 / 9.0, 2))
    assert (c32["best_peer_rps"], c32["rps"]) == ("bentoml-batch", round(4000 / 420, 2))
    # mlserver-p0's lower p99 came with an error: its setup without errors is taken
    assert (c32["lowest_p99_peer"], c32["p99"]) == ("mlserver-p0-batch", round(10.0 / 120.0, 2))
    assert (batch["best_peer_rps"], batch["rps"]) == ("mlserver-p0-batch", round(90 / 58, 2))
    assert summary["setups_taken"]["single c32"]["mlserver"] == {
        "setups": ["mlserver-p0", "mlserver-p0-batch"],
        "rps": "mlserver-p0-batch",
        "p99": "mlserver-p0-batch",
    }


def test_issue_28s_targets_are_judged_against_the_best_setups(summary: dict[str, Any]) -> None:
    assert summary["targets_issue_28"] == {
        "single c1 throughput >= 0.6 of the floor": False,  # 2400 / 5000
        "single c8 throughput >= 0.6 of the floor": None,  # not run
        "single c32 throughput >= 0.6 of the floor": True,  # 4000 / 6000
        "batch1000 c4 rows/s >= 2x best peer's best setup": False,  # 90 / 58 = 1.55
        "batch1000 c4 rows/s >= 0.35 of the floor": False,  # 90 / 330
        f"{serve.V2_SCENARIO} rows/s >= 2x best peer's best setup (batches)": True,  # 120 / 58
        f"{serve.V2_SCENARIO} rows/s >= 0.35 of the floor's batches": True,  # 120 / 330
        "single c32 p99 <= 1/5 lowest peer p99 (any setup)": True,  # 10 / 120
        "worker RSS <= 0.8x lowest peer's (any setup)": False,  # 170 > 0.8 x 200
    }
    lines = summary["summary"]
    assert "target MISS (issue 28) batch1000 c4 rows/s >= 2x best peer's best setup" in lines
    taken = lines[lines.index(next(x for x in lines if x.startswith("== each peer's setup taken"))) + 1 :]
    assert any(
        x.startswith("single c32     mlserver  throughput mlserver-p0-batch (300 req/s), p99 mlserver-p0-batch")
        and x.endswith("left out: mlserver-p0 (1 errors in 1200)")
        for x in taken
    )


@pytest.fixture(scope="module")
def bentoml_stub() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """A stand-in ``bentoml`` module recording what the service file declares (``bentoml`` is not installed here)."""
    declared: list[tuple[str, dict[str, Any]]] = []
    stub = types.ModuleType("bentoml")

    def service(**options: Any) -> Callable[[type], type]:
        declared.append(("service", options))
        return lambda cls: cls

    def api(function: Callable[..., Any] | None = None, **options: Any) -> Any:
        if function is not None:  # bare @bentoml.api
            declared.append((function.__name__, {}))
            return function

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            declared.append((f.__name__, options))
            return f

        return decorate

    stub.service = service  # type: ignore[attr-defined]
    stub.api = api  # type: ignore[attr-defined]
    sys.modules["bentoml"] = stub
    try:
        yield declared
    finally:
        del sys.modules["bentoml"]


@pytest.mark.parametrize("batching", [False, True])
def test_the_bentoml_service_file_declares_each_setup_and_predicts_as_the_bundle(
    batching: bool,
    bentoml_stub: list[tuple[str, dict[str, Any]]],
    bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_BUNDLE_DIR", str(bundle_dir))
    monkeypatch.setenv("BENCH_BENTOML_BATCHING", "1" if batching else "0")
    monkeypatch.setenv("BENCH_BENTOML_MAX_BATCH_SIZE", str(BENTOML_MAX_BATCH_SIZE))
    monkeypatch.setenv("BENCH_BENTOML_MAX_LATENCY_MS", str(BENTOML_MAX_LATENCY_MS))
    bentoml_stub.clear()
    path = tmp_path / "bench_bentoml_service.py"
    path.write_text(BENTOML_SERVICE)  # imported from its file, as `bentoml serve` does
    spec = importlib.util.spec_from_file_location("bench_bentoml_service", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    single = {"batchable": True, "max_batch_size": 100, "max_latency_ms": 60_000} if batching else {}
    assert bentoml_stub == [("service", {"workers": 1}), ("predict", single), ("predict_batch", {})]

    bundle = load_bundle(bundle_dir)
    rows = serve.records(bundle, 5, seed=3)
    service = module.FlightPrice()
    got = service.predict([module.Record(**row) for row in rows])
    assert np.array_equal(np.asarray(got), bundle.predict(serve.as_columns(rows)))
