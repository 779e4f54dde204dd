"""How fast each candidate walk predicts a 1,000-row batch, on one thread, on two, and beside a parsing thread.

The serving predictor needs a walk of every tree that releases the GIL (so two batches use two cores and the
event loop parses the next request meanwhile) and gives the very floats of ``Bundle.predict``. The candidates:

- ``per-tree``: scikit-learn's compiled ``_predict_from_binned_data`` once per tree (what the predictor did
  before; the GIL is taken back after every tree);
- ``stacked``: the predictor's ``_StackedTrees``, the same compiled walk called once for every tree;
- ``treelite-gtil``: treelite's GTIL (its C++ walk, one call per batch, through ctypes, which releases the
  GIL), the model rebuilt with treelite's model builder, the baseline folded into the first tree's leaves so the
  sum runs in scikit-learn's order. treelite needs scipy and is not in the project's lock: it runs in its own
  venv, ``bench/.venvs/treelite-<version>``, made with uv beside the peers' (``bench.peers.install``).

Each walk predicts the same binned/transformed 1,000 rows for ``--seconds`` per setting; "beside a parser" runs
a thread that keeps decoding a 1,000-record JSON body with ``json.loads`` (holding the GIL, as the event loop
does while it parses a request) and reports both rates. Every walk's answers on 20,000 probe rows are compared
bit for bit with ``Bundle.predict``.

Usage: ``uv run --frozen python -m bench.walk [--bundle DIR | --rows 200000] [--seconds 3] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

ROOT: Final = Path(__file__).resolve().parents[1]
TREELITE_VERSION: Final = "4.8.1"
BATCH_ROWS: Final = 1000
CHECK_ROWS: Final = 20_000
Matrix = npt.NDArray[np.float64]
Walk = Callable[[Matrix], Matrix]  # transformed features -> predictions


def rates(walk: Walk, features: Matrix, seconds: float) -> dict[str, float]:
    """Rows/s of ``walk`` on one thread, on two, and on one beside a thread parsing JSON (and that thread's rate)."""
    records = [dict(enumerate(map(float, row))) for row in features]
    body = json.dumps({"records": records})
    out: dict[str, float] = {}
    for threads, parser in ((1, False), (2, False), (1, True)):
        done = [0] * threads
        parsed = [0]
        stop = threading.Event()

        def loop(i: int, done: list[int] = done, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                walk(features)
                done[i] += 1

        def parse(parsed: list[int] = parsed, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                json.loads(body)
                parsed[0] += 1

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        if parser:
            workers.append(threading.Thread(target=parse))
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        time.sleep(seconds)
        stop.set()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - began
        key = "beside_parser" if parser else f"threads_{threads}"
        out[key] = sum(done) * len(features) / elapsed
        if parser:
            out["parser_rows_per_s"] = parsed[0] * len(features) / elapsed
    return out


def sklearn_walks(model: Any) -> dict[str, Walk]:
    """The per-tree walk (reproduced here as the predictor ran it) and the stacked one, on the model's input."""
    from sklearn.ensemble._hist_gradient_boosting._binning import _map_to_bins
    from sklearn.ensemble._hist_gradient_boosting._predictor import _predict_from_binned_data

    from app.model.predictor import _direct_path, _preprocessor

    reorder = _preprocessor(model._preprocessor)
    assert reorder is not None
    mapper = model._bin_mapper
    trees = [tree for iteration in model._predictors for tree in iteration]
    baseline = float(model._baseline_prediction[0, 0])

    def per_tree(features: Matrix) -> Matrix:
        data = reorder(features)
        binned = np.empty(data.shape, dtype=np.uint8, order="F")
        _map_to_bins(data, mapper.bin_thresholds_, mapper.is_categorical_, mapper.missing_values_bin_idx_, 1, binned)
        leaves = np.empty((len(trees) + 1, len(data)), dtype=np.float64)
        leaves[0] = baseline + 0.0
        for row, tree in enumerate(trees, start=1):
            _predict_from_binned_data(
                tree.nodes, binned, tree.binned_left_cat_bitsets, mapper.missing_values_bin_idx_, 1, leaves[row]
            )
        return np.asarray(np.add.accumulate(leaves, axis=0)[-1], dtype=np.float64)

    path = _direct_path(model, 1)
    assert path is not None
    return {"per-tree": per_tree, "stacked": path[0]}


def gtil_walk(model: Any) -> Walk:
    """treelite's GTIL on the model rebuilt with treelite's builder (run inside the treelite venv)."""
    import treelite  # type: ignore[import-not-found]
    from treelite import model_builder as mb

    from app.model.predictor import _preprocessor

    pre = model._preprocessor
    order = [*np.flatnonzero(pre.transformers_[0][2]), *np.flatnonzero(pre.transformers_[1][2])]
    trees = [tree for iteration in model._predictors for tree in iteration]
    baseline = float(model._baseline_prediction[0, 0])
    builder = mb.ModelBuilder(
        threshold_type="float64",
        leaf_output_type="float64",
        metadata=mb.Metadata(len(order), "kRegressor", False, 1, [1], (1, 1)),  # one float64 output per row
        tree_annotation=mb.TreeAnnotation(num_tree=len(trees), target_id=[0] * len(trees), class_id=[0] * len(trees)),
        postprocessor=mb.PostProcessorFunc(name="identity"),
        base_scores=[0.0],
    )
    for number, tree in enumerate(trees):
        builder.start_tree()
        for key, node in enumerate(tree.nodes):
            builder.start_node(key)
            if node["is_leaf"]:  # the baseline folded into the first tree: (baseline + leaf) + next leaf + ...
                builder.leaf((baseline + 0.0) + float(node["value"]) if number == 0 else float(node["value"]))
            else:
                children = {"left_child_key": int(node["left"]), "right_child_key": int(node["right"])}
                default_left = bool(node["missing_go_to_left"])
                if node["is_categorical"]:
                    words = tree.raw_left_cat_bitsets[node["bitset_idx"]]
                    left = [c for c in range(256) if (int(words[c // 32]) >> (c % 32)) & 1]
                    builder.categorical_test(
                        int(order[node["feature_idx"]]), default_left=default_left, category_list=left,
                        category_list_right_child=False, **children,
                    )  # fmt: skip
                else:
                    builder.numerical_test(
                        int(order[node["feature_idx"]]), float(node["num_threshold"]), default_left=default_left,
                        opname="<=", **children,
                    )  # fmt: skip
            builder.end_node()
        builder.end_tree()
    forest = builder.commit()
    # the model's own encoder, as the predictor applies it (unknown codes NaN), then the transformer's column order
    reorder = _preprocessor(pre)
    assert reorder is not None
    back = np.argsort(order)

    def predict(features: Matrix) -> Matrix:
        data = np.ascontiguousarray(reorder(features)[:, back])
        return np.asarray(treelite.gtil.predict(forest, data, nthread=1), dtype=np.float64).reshape(-1)

    return predict


def measure(bundle_dir: Path, names: list[str], seconds: float) -> dict[str, Any]:
    from app.contract.bundle import load_bundle
    from app.model.predictor import probe_columns

    bundle = load_bundle(bundle_dir)
    columns = probe_columns(bundle.metadata, CHECK_ROWS, seed=21)
    features = bundle.transformer.transform(columns)
    expected = bundle.predict(columns)
    walks = sklearn_walks(bundle.model) if "per-tree" in names else {}
    if "treelite-gtil" in names:
        walks["treelite-gtil"] = gtil_walk(bundle.model)
    batch = np.ascontiguousarray(features[:BATCH_ROWS])
    results: dict[str, Any] = {}
    for name, walk in walks.items():
        got = walk(features)
        identical = bool(np.array_equal(got, expected))
        differing = int(np.count_nonzero(got != expected))
        results[name] = {"identical": identical, "rows_differing": differing, **rates(walk, batch, seconds)}
    return results


def gtil_in_its_venv(bundle_dir: Path, seconds: float) -> dict[str, Any]:
    from bench.peers import Peer, install, lock_versions, peer_env

    pydantic = lock_versions(("pydantic",))["pydantic"]
    peer = Peer("treelite", f"treelite {TREELITE_VERSION}", f"treelite-{TREELITE_VERSION}",
                (f"treelite=={TREELITE_VERSION}", f"pydantic=={pydantic}"))  # fmt: skip
    python = install(peer, lambda line: print(line, flush=True)) / "python"
    args = [str(python), "-m", "bench.walk", "--worker", "treelite-gtil", "--bundle", str(bundle_dir)]
    completed = subprocess.run(
        [*args, "--seconds", str(seconds)], cwd=ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, **peer_env({"OMP_NUM_THREADS": "1"})},
    )  # fmt: skip
    if completed.returncode != 0:
        raise SystemExit(f"the treelite run failed: {completed.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle directory (default: train one on --rows rows)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to train the bundle on (without --bundle)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per walk and setting")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "walk.json")
    parser.add_argument("--no-treelite", action="store_true", help="leave treelite's GTIL out (no venv made)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # inside another venv: measure these walks, print JSON
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.worker:
        print(json.dumps(measure(args.bundle, args.worker.split(","), args.seconds)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        bundle_dir = args.bundle
        if bundle_dir is None:
            from bench.serve import train_bundle

            print(f"training the bench bundle on {args.rows:,} rows ...", flush=True)
            bundle_dir = train_bundle(args.rows, Path(scratch))
        results = measure(bundle_dir, ["per-tree", "stacked"], args.seconds)
        if not args.no_treelite:
            results.update(gtil_in_its_venv(bundle_dir, args.seconds))
    load = os.getloadavg()
    print(f"{BATCH_ROWS:,}-row batches, rows/s (load average {load[0]:.2f}); identical: all {CHECK_ROWS:,} probe rows")
    print(f"{'walk':15s} {'1 thread':>10s} {'2 threads':>10s} {'x1':>6s} {'parser':>10s} {'its parser':>11s} identical")
    for name, r in results.items():
        print(
            f"{name:15s} {r['threads_1']:10,.0f} {r['threads_2']:10,.0f} {r['threads_2'] / r['threads_1']:6.2f} "
            f"{r['beside_parser']:10,.0f} {r['parser_rows_per_s']:11,.0f} {r['identical']} ({r['rows_differing']})"
        )
    report = {"benchmark": "walk", "cpus": os.cpu_count(), "python": sys.version.split()[0], "load": load,
              "batch_rows": BATCH_ROWS, "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
