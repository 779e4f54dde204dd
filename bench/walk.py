"""How fast each candidate walk predicts a 1,000-row batch, on one thread, on two, and beside a parsing thread.

The server predicts with the bundle's serving form (``app.contract.serving_form``: the trees as reachable-leaf
tables, numpy only). Before it, the server walked a batch with scikit-learn's compiled binned walk, one call per
tree, each call taking the GIL back; this benchmark measured one-call alternatives against that walk, and keeps
them as the figures the serving form is compared with:

- ``serving-form``: what the server runs now, the form's compiled walk (``app/contract/walk.c``, one ctypes call
  per batch with the GIL released; built by ``app.contract.walk_build`` at the start), on the transformer's output
  (its bucketing included);
- ``serving-form-numpy``: the same form's numpy walk, which serves where the compiled walk is not built;
- ``per-tree``: scikit-learn's ``_predict_from_binned_data`` once per tree, after ``_map_to_bins``;
- ``stacked``: ``StackedTrees`` below, the same compiled walk called once for every tree: the trees stacked under
  a dispatch tree that splits on an extra binned column, the tree's number, each row repeated once per tree;
- ``treelite-gtil``: treelite's GTIL (its C++ walk, one call per batch through ctypes, which releases the GIL),
  the model rebuilt with treelite's model builder and the baseline folded into the first tree's leaves so the
  sum runs in scikit-learn's order. treelite needs scipy and is not in the project's lock: it runs in its own
  venv, ``bench/.venvs/treelite-<version>``, made with uv as the peers' are (``bench.peers.install``).

The three scikit-learn-based walks take the model's input, its preprocessing done once outside their timing.
Each walk predicts the same 1,000 rows for ``--seconds`` per setting, with ``OMP_NUM_THREADS=1``;
"beside a parser" runs a thread that keeps decoding a 1,000-record JSON body with ``json.loads`` (holding the GIL
throughout, the worst case of an event loop parsing requests) and reports both rates. Every walk's answers on
20,000 probe rows are compared bit for bit with ``Bundle.predict``.

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
# The stacked walk covers at most this many (row, tree) pairs per call: about 3 MB of repeated binned rows.
ROW_TREE_PAIRS: Final = 1 << 18
APP_IMPORTS: Final = ("pydantic", "orjson", "prometheus-client")
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


def model_input(model: Any, features: Matrix) -> Matrix:
    """The model's own input for the transformer's output: its internal preprocessor (categorical columns first,
    each category code as the model's encoder numbers it, unknown NaN), as ``model.predict`` applies it."""
    preprocessor = getattr(model, "_preprocessor", None)
    data = features if preprocessor is None else preprocessor.transform(features)
    return np.ascontiguousarray(data, dtype=np.float64)


def sklearn_walks(model: Any) -> dict[str, Walk]:
    """scikit-learn's compiled binned walk, one call per tree (what the server ran before its serving form), and
    the stacked one, on the model's input (``model_input``)."""
    from sklearn.ensemble._hist_gradient_boosting._binning import _map_to_bins
    from sklearn.ensemble._hist_gradient_boosting._predictor import _predict_from_binned_data

    mapper = model._bin_mapper
    trees = [tree for iteration in model._predictors for tree in iteration]
    missing_bin = mapper.missing_values_bin_idx_
    baseline = float(model._baseline_prediction[0, 0])
    stacked = StackedTrees(trees, len(mapper.bin_thresholds_), missing_bin, baseline, _predict_from_binned_data)

    def binned_rows(data: Matrix) -> npt.NDArray[np.uint8]:
        binned = np.empty(data.shape, dtype=np.uint8, order="F")
        _map_to_bins(data, mapper.bin_thresholds_, mapper.is_categorical_, missing_bin, 1, binned)
        return binned

    def per_tree_walk(data: Matrix) -> Matrix:
        binned = binned_rows(data)
        raw = np.full(len(data), baseline + 0.0)  # as scikit-learn starts: zeros plus the baseline
        values = np.empty(len(data), dtype=np.float64)
        for tree in trees:
            _predict_from_binned_data(tree.nodes, binned, tree.binned_left_cat_bitsets, missing_bin, 1, values)
            raw += values
        return raw

    def stacked_walk(data: Matrix) -> Matrix:
        return stacked.raw(binned_rows(data), 1)  # the squared error's link is the identity

    return {"per-tree": per_tree_walk, "stacked": stacked_walk}


class StackedTrees:
    """Every tree of a HistGradientBoostingRegressor under one dispatch tree, so one compiled call walks them all.

    scikit-learn's ``_predict_from_binned_data`` walks one tree for every row, and between two such calls the
    thread must win the GIL back: for a batch, one call per tree was about 170 hand-offs, each a wait behind the
    event loop's parsing, so two batches never used two cores. Here the trees' nodes are laid end to end after a
    balanced dispatch tree that splits on one extra binned column, the tree number (``bin <= k`` goes left), and
    every row is repeated once per tree with that column set: one call, the GIL released throughout, finds every
    (row, tree) leaf with the very comparisons the per-tree walk makes. The leaf values are then added in tree
    order, starting from the baseline, by a sequential ``np.add.accumulate``: the same additions in the same order.

    The tree number must stay below the missing-values bin, so trees go in groups of at most that many (one call
    per group), and rows in chunks of ``ROW_TREE_PAIRS`` (row, tree) pairs, to bound the repeated rows' memory.
    """

    def __init__(
        self, trees: list[Any], width: int, missing_bin: int, baseline: float, walk: Callable[..., None]
    ) -> None:
        self.width = width
        self.missing_bin = missing_bin
        self.baseline = baseline
        self.walk = walk
        size = max(missing_bin, 1)  # tree numbers 0..size-1, never the missing-values bin
        self.groups = [self._stack(trees[first : first + size]) for first in range(0, len(trees), size)]
        self.n_trees = len(trees)

    def _stack(self, trees: list[Any]) -> tuple[Any, npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
        """One group's nodes (the dispatch tree first, from node 0), its category bitsets and tree numbers."""
        dispatch: list[tuple[int, int, int]] = []  # (bin threshold, left, right); a child < 0 is tree -1 - child

        def split(low: int, high: int) -> int:
            if high - low == 1:
                return -1 - low
            at = len(dispatch)
            dispatch.append((0, 0, 0))
            middle = (low + high) // 2
            dispatch[at] = (middle - 1, split(low, middle), split(middle, high))
            return at

        split(0, len(trees))
        sizes = [len(tree.nodes) for tree in trees]
        starts = len(dispatch) + np.cumsum([0, *sizes[:-1]])
        bitset_starts = np.cumsum([0, *[len(tree.binned_left_cat_bitsets) for tree in trees[:-1]]])
        nodes = np.zeros(len(dispatch) + sum(sizes), dtype=trees[0].nodes.dtype)
        for at, (threshold, left, right) in enumerate(dispatch):
            node = nodes[at]
            node["feature_idx"], node["bin_threshold"] = self.width, threshold
            node["left"] = left if left >= 0 else starts[-1 - left]
            node["right"] = right if right >= 0 else starts[-1 - right]
        for start, bitset_start, tree in zip(starts, bitset_starts, trees, strict=True):
            own = tree.nodes.copy()
            split_node = ~own["is_leaf"].astype(bool)
            own["left"][split_node] += int(start)
            own["right"][split_node] += int(start)
            own["bitset_idx"][split_node] += int(bitset_start)
            nodes[start : start + len(own)] = own
        bitsets = np.concatenate([np.asarray(tree.binned_left_cat_bitsets) for tree in trees]).astype(np.uint32)
        return nodes, np.ascontiguousarray(bitsets.reshape(-1, 8)), np.arange(len(trees), dtype=np.uint8)

    def raw(self, binned: npt.NDArray[np.uint8], threads: int) -> Matrix:
        """The raw predictions (before the inverse link) of the binned rows (the model's column order)."""
        n_rows = binned.shape[0]
        out = np.empty(n_rows, dtype=np.float64)
        chunk = max(1, ROW_TREE_PAIRS // max(len(group[2]) for group in self.groups))
        for first in range(0, n_rows, chunk):
            rows = binned[first : first + chunk]
            n = rows.shape[0]
            leaves = np.empty((self.n_trees + 1, n), dtype=np.float64)
            leaves[0] = self.baseline + 0.0  # as scikit-learn starts: zeros plus the baseline (never -0.0)
            done = 1
            for nodes, bitsets, numbers in self.groups:
                repeated = np.empty((len(numbers) * n, self.width + 1), dtype=np.uint8)
                repeated[:, : self.width].reshape(len(numbers), n, self.width)[:] = rows
                repeated[:, self.width] = np.repeat(numbers, n)
                values = leaves[done : done + len(numbers)].ravel()  # a view: rows of one C-contiguous array
                self.walk(nodes, repeated, bitsets, self.missing_bin, threads, values)
                done += len(numbers)
            np.add.accumulate(leaves, axis=0, out=leaves)
            out[first : first + n] = leaves[-1]
        return out


def gtil_walk(model: Any) -> Walk:
    """treelite's GTIL on the model rebuilt with treelite's builder (run inside the treelite venv)."""
    import treelite  # type: ignore[import-not-found]
    from treelite import model_builder as mb

    trees = [tree for iteration in model._predictors for tree in iteration]
    baseline = float(model._baseline_prediction[0, 0])
    builder = mb.ModelBuilder(
        threshold_type="float64",
        leaf_output_type="float64",
        metadata=mb.Metadata(model.n_features_in_, "kRegressor", False, 1, [1], (1, 1)),  # one float64 output per row
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
                        int(node["feature_idx"]), default_left=default_left, category_list=left,
                        category_list_right_child=False, **children,
                    )  # fmt: skip
                else:
                    builder.numerical_test(
                        int(node["feature_idx"]), float(node["num_threshold"]), default_left=default_left,
                        opname="<=", **children,
                    )  # fmt: skip
            builder.end_node()
        builder.end_tree()
    forest = builder.commit()

    def predict(data: Matrix) -> Matrix:
        return np.asarray(treelite.gtil.predict(forest, data, nthread=1), dtype=np.float64).reshape(-1)

    return predict


def measure(bundle_dir: Path, names: list[str], seconds: float) -> dict[str, Any]:
    """Each walk of ``names`` on the same rows: the serving form on the transformer's output, the others on the
    model's input (its preprocessing done once beforehand, outside their timing)."""
    from app.contract.bundle import load_bundle
    from app.contract.serving_form import compile_serving_form, probe_columns

    bundle = load_bundle(bundle_dir)
    columns = probe_columns(bundle.metadata, CHECK_ROWS, seed=21)
    features = bundle.transformer.transform(columns)
    data = model_input(bundle.model, features)
    expected = bundle.predict(columns)
    walks: dict[str, tuple[Walk, Matrix]] = {}
    if "serving-form" in names:
        form = compile_serving_form(bundle.transformer, bundle.model)
        walks["serving-form"] = (form.using("compiled").predict_encoded, features)
        walks["serving-form-numpy"] = (form.using("numpy").predict_encoded, features)
    if "per-tree" in names:
        walks.update({name: (walk, data) for name, walk in sklearn_walks(bundle.model).items()})
    if "treelite-gtil" in names:
        walks["treelite-gtil"] = (gtil_walk(bundle.model), data)
    results: dict[str, Any] = {}
    for name, (walk, rows) in walks.items():
        got = walk(rows)
        identical = bool(np.array_equal(got, expected))
        differing = int(np.count_nonzero(got != expected))
        batch = np.ascontiguousarray(rows[:BATCH_ROWS])
        results[name] = {"identical": identical, "rows_differing": differing, **rates(walk, batch, seconds)}
    return results


def gtil_in_its_venv(bundle_dir: Path, seconds: float) -> dict[str, Any]:
    from bench.peers import Peer, install, lock_versions, peer_env

    # what app.contract.bundle imports besides the bundle's libraries, at the lock's versions
    pins = tuple(f"{name}=={version}" for name, version in lock_versions(APP_IMPORTS).items())
    peer = Peer("treelite", f"treelite {TREELITE_VERSION}", f"treelite-{TREELITE_VERSION}",
                (f"treelite=={TREELITE_VERSION}", *pins))  # fmt: skip
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
    from bench.peers import compiled_walk

    compiled_walk(lambda line: print(line, flush=True))
    with tempfile.TemporaryDirectory() as scratch:
        bundle_dir = args.bundle
        if bundle_dir is None:
            from bench.serve import train_bundle

            print(f"training the bench bundle on {args.rows:,} rows ...", flush=True)
            bundle_dir = train_bundle(args.rows, Path(scratch))
        results = measure(bundle_dir, ["serving-form", "per-tree"], args.seconds)
        if not args.no_treelite:
            results.update(gtil_in_its_venv(bundle_dir, args.seconds))
    load = os.getloadavg()
    print(f"{BATCH_ROWS:,}-row batches, rows/s (load average {load[0]:.2f}); identical: all {CHECK_ROWS:,} probe rows")
    print(f"{'walk':18s} {'1 thread':>10s} {'2 threads':>10s} {'x1':>6s} {'parser':>10s} {'its parser':>11s} identical")
    for name, r in results.items():
        print(
            f"{name:18s} {r['threads_1']:10,.0f} {r['threads_2']:10,.0f} {r['threads_2'] / r['threads_1']:6.2f} "
            f"{r['beside_parser']:10,.0f} {r['parser_rows_per_s']:11,.0f} {r['identical']} ({r['rows_differing']})"
        )
    report = {"benchmark": "walk", "cpus": os.cpu_count(), "python": sys.version.split()[0], "load": load,
              "batch_rows": BATCH_ROWS, "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
