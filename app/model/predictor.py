"""The serving predictor: ``Bundle.predict`` with the per-call overhead taken out, bit-identical to it.

A scikit-learn ``HistGradientBoostingRegressor`` costs milliseconds per ``predict`` call whatever the row
count: input validation, its internal ``_preprocessor`` (a ColumnTransformer that ordinal-encodes the
categorical columns again and reorders them first), and one Python-level call per tree. For a model of
that kind this module does the same arithmetic directly:

- the ordinal re-encoding as one ``searchsorted`` per categorical column (unknown or NaN -> NaN, as the
  OrdinalEncoder's ``use_encoded_value`` does), columns in the ColumnTransformer's order; when the encoder's
  categories are the codes 0..k-1 (what ``FeatureTransformer`` emits), one vectorised rule for all columns;
- the rows binned once, as the model's own ``_BinMapper`` bins its training data (scikit-learn's compiled
  ``_map_to_bins``), then each tree through scikit-learn's compiled ``_predict_from_binned_data`` (the walk
  its training uses), summed in the same order, starting from the same baseline, through the same inverse
  link. A value falls in bin ``i`` exactly when ``thresholds[i - 1] < value <= thresholds[i]`` and a split's
  raw threshold is ``thresholds[bin_threshold]`` (``+inf`` for a split on missing values, which the last
  bin reproduces), so every split turns as ``_predict_from_raw_data`` (what ``TreePredictor.predict``
  calls) would turn it on the raw value; comparing one byte instead of a float makes the walk about 1.4x
  faster. The categorical codes are those of the whole training set (the bin mapper knows them all), and an
  unknown category is NaN, the missing-values bin.

For a few rows (up to ``SMALL_BATCH_ROWS``, what single-record requests and their micro-batches are) one call
per tree costs more than the walk itself (each call acquires its arrays anew, about 4-8 us), so there every tree
is walked at once: the trees' nodes are packed into flat arrays and all (row, tree) pairs step down one level
per numpy operation, with the same comparisons as scikit-learn's ``_predict_one_from_raw_data`` (NaN and
negative or unknown categories follow ``missing_go_to_left``); the leaf values are then added in tree order,
starting from the baseline, by a sequential ``np.add.accumulate``.

So the predictions are the same floats, not approximately equal ones. That is checked when the predictor
is built: it predicts a probe set (the bundle's example and rows drawn across every feature's range) both
ways, whole and in batches of each size at either end of every walk the row count selects (``CHECKED_BATCHES``),
and keeps the direct path only if every value is bit-identical; any other model, or any difference, uses
``Bundle.predict`` itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.contract.bundle import Bundle, Metadata
from app.contract.features import Columns
from app.observability import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

PROBE_ROWS: Final = 512
# Up to this many rows every tree is walked at once (``_Forest``); above it, one compiled call per tree is faster.
SMALL_BATCH_ROWS: Final = 24
# Up to this many rows the walk's layout is filled row by row with Python floats (cheaper than numpy's calls).
LAYOUT_BY_ROW: Final = 6
# Above SMALL_BATCH_ROWS, the trees' values are summed this many trees at a time (one numpy call per block).
TREES_PER_SUM: Final = 32
# The batch sizes the load-time check predicts besides the whole probe: the first and last row count of each walk
# the direct path chooses by row count. One row: Python floats throughout; 2..LAYOUT_BY_ROW: the layout filled row
# by row, then every tree at once; up to SMALL_BATCH_ROWS: the layout by numpy, every tree at once; above: the
# binned rows, every block of TREES_PER_SUM trees (the whole probe too). Without the all-at-once walk (``_Forest``
# unusable) one row and several rows still differ (the reordering). Together at most PROBE_ROWS rows.
CHECKED_BATCHES: Final = (1, 2, LAYOUT_BY_ROW, LAYOUT_BY_ROW + 1, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1)
Matrix = npt.NDArray[np.float64]


class Predictor:
    """Predicts exactly what ``bundle.predict`` predicts; ``direct`` tells whether the fast path is in use."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        self.bundle = bundle
        self.threads = threads
        direct = _direct_path(bundle.model, threads)
        self._direct: Callable[[Matrix], Matrix] | None = None if direct is None else direct[0]
        self._walked_at_once = 0 if direct is None else direct[1]
        if self._direct is not None and not self._agrees(probe_columns(bundle.metadata, PROBE_ROWS)):
            log.warning("direct prediction path differs from Bundle.predict; using Bundle.predict")
            self._direct, self._walked_at_once = None, 0

    @property
    def direct(self) -> bool:
        return self._direct is not None

    def bounded(self, n_rows: int) -> bool:
        """Whether predicting ``n_rows`` rows is the all-trees numpy walk: a fixed number of numpy operations on
        small arrays, with no call into scikit-learn, so it cannot hang and takes well under a millisecond."""
        return 0 < n_rows <= self._walked_at_once

    def predict_columns(self, columns: Columns) -> npt.NDArray[np.float64]:
        """Column mapping (dict of lists or DataFrame) -> the same predictions as ``Bundle.predict``."""
        if self._direct is None:
            return self.bundle.predict(columns)
        return self._direct(self.bundle.transformer.transform(columns))

    def _agrees(self, columns: dict[str, list[Any]]) -> bool:
        """Whether the direct path predicts ``columns`` as ``Bundle.predict`` does, bit for bit: whole, then in
        consecutive batches of ``CHECKED_BATCHES``' sizes (the first: the bundle's example alone)."""
        expected = self.bundle.predict(columns)
        batches = [slice(None)]
        start = 0
        for size in CHECKED_BATCHES:
            batches.append(slice(start, start + size))
            start += size
        for rows in batches:
            part = {name: values[rows] for name, values in columns.items()}
            if not np.array_equal(self.predict_columns(part), expected[rows], equal_nan=True):
                return False
        return True


def _direct_path(model: Any, threads: int) -> tuple[Callable[[Matrix], Matrix], int] | None:
    """The direct predict function for a fitted single-output HistGradientBoostingRegressor and up to how many
    rows it walks every tree at once (0: never), else None."""
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.ensemble._hist_gradient_boosting._binning import _map_to_bins
        from sklearn.ensemble._hist_gradient_boosting._predictor import _predict_from_binned_data
    except ImportError:  # scikit-learn moved its internals: stay on the public path
        return None
    if type(model) is not HistGradientBoostingRegressor or getattr(model, "n_trees_per_iteration_", 0) != 1:
        return None
    reorder = _preprocessor(getattr(model, "_preprocessor", None))
    if reorder is None:
        return None
    bin_mapper = model._bin_mapper
    known_cat_bitsets, f_idx_map = bin_mapper.make_known_categories_bitsets()
    bin_thresholds = bin_mapper.bin_thresholds_
    is_categorical = bin_mapper.is_categorical_
    missing_bin = bin_mapper.missing_values_bin_idx_
    predictors = [predictor for predictors_of_iteration in model._predictors for predictor in predictors_of_iteration]
    trees = [(predictor.nodes, predictor.binned_left_cat_bitsets) for predictor in predictors]
    baseline = model._baseline_prediction
    inverse_link = model._loss.link.inverse
    every_tree = _Forest(predictors, len(bin_thresholds), known_cat_bitsets, f_idx_map, float(baseline[0, 0]))
    forest = every_tree if every_tree.usable() else None

    def predict(features: Matrix) -> Matrix:
        data = reorder(features)
        n_rows = data.shape[0]
        if forest is not None and n_rows <= SMALL_BATCH_ROWS:
            return np.asarray(inverse_link(forest.raw(data)), dtype=np.float64)
        binned = np.empty(data.shape, dtype=np.uint8, order="F")
        _map_to_bins(data, bin_thresholds, is_categorical, missing_bin, threads, binned)
        # row 0 the sum so far (the baseline first), then up to TREES_PER_SUM trees' values, one row each, summed
        # down the rows by one sequential np.add.accumulate: the same additions in the same order as adding each
        # tree's values in turn, with one numpy call per block instead of one per tree (each of which, on a worker
        # thread, gives the GIL up and must win it back)
        block = np.empty((min(TREES_PER_SUM, len(trees)) + 1, n_rows), dtype=np.float64)
        block[0] = baseline[0, 0] + 0.0  # as scikit-learn starts: zeros plus the baseline (never -0.0)
        for first in range(0, len(trees), TREES_PER_SUM):
            chunk = trees[first : first + TREES_PER_SUM]
            for row, (nodes, binned_left_cat_bitsets) in enumerate(chunk, start=1):
                _predict_from_binned_data(nodes, binned, binned_left_cat_bitsets, missing_bin, threads, block[row])
            np.add.accumulate(block[: len(chunk) + 1], axis=0, out=block[: len(chunk) + 1])
            block[0] = block[len(chunk)]
        return np.asarray(inverse_link(block[0]), dtype=np.float64)

    return predict, SMALL_BATCH_ROWS if forest is not None else 0


class _Forest:
    """Every tree of a HistGradientBoostingRegressor in flat arrays, walked all at once for a few rows.

    Node ``i`` of tree ``t`` is entry ``offsets[t] + i``. A leaf is its own child on both sides, so a walk that
    reached it stays there while deeper trees go on. One row is walked in two steps: every split's turn at once
    (which child this row goes to, for all splits), then one small gather per level to step every tree down. For
    several rows evaluating every node would cost more than the walk, so each level compares only the nodes the
    rows are at: the walk keeps ``2 * node`` so that the left child of any node is ``children2[2 * node]`` and the
    right one ``children2[2 * node + 1]`` (both stored doubled, and the per-node tables stored twice over to be
    read at ``2 * node`` too).

    Every split is one comparison ``value > threshold`` on one slot of the row's layout: the row with NaN as
    -inf (read by numeric splits whose missing values go left), the row with NaN as +inf (those whose missing
    values go right), then one slot per categorical split holding its turn for this row (1.0 right, 0.0 left;
    threshold 0.5). The turns are looked up before the walk, one table per categorical feature indexed by the
    row's code (one more entry for NaN, negative and unknown codes, which turn as missing values do): so each
    level of the walk is the same handful of numpy operations whatever the split.
    """

    def __init__(self, trees: list[Any], width: int, known_cat_bitsets: Any, f_idx_map: Any, baseline: float) -> None:
        sizes = [len(tree.nodes) for tree in trees]
        offsets = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
        nodes = np.concatenate([tree.nodes for tree in trees])
        n_nodes = len(nodes)
        shift = np.repeat(offsets, sizes)
        leaf = nodes["is_leaf"].astype(bool)
        own = np.arange(n_nodes, dtype=np.intp)
        missing_left = nodes["missing_go_to_left"].astype(bool)
        self.categorical = nodes["is_categorical"].astype(bool) & ~leaf
        feature = np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp)
        self.width = width  # the model's columns
        self.numeric_threshold = np.where(leaf, np.inf, nodes["num_threshold"]).astype(np.float64)
        # categorical splits, grouped by feature: split k of the order below reads slot 2 * width + k
        at = np.flatnonzero(self.categorical)
        at = at[np.argsort(feature[at], kind="stable")]
        slot = np.where(missing_left, 0, self.width) + feature
        slot[at] = 2 * self.width + np.arange(len(at))
        threshold = self.numeric_threshold.copy()
        threshold[at] = 0.5
        self.row_width = 2 * self.width + len(at)
        # per categorical feature: (its column, the first slot of its splits, its codes k, the turns table): row c
        # of the table holds every split's turn (True right) for code c < k, row k for NaN, negative and unknown
        # codes, which turn as missing values do (codes k and up are known to no split: unknown)
        bitset_shift = np.cumsum([0, *[len(tree.raw_left_cat_bitsets) for tree in trees[:-1]]]).astype(np.intp)
        left_bitsets = np.concatenate([np.asarray(tree.raw_left_cat_bitsets) for tree in trees]).astype(np.uint32)
        known_bitsets = np.asarray(known_cat_bitsets, dtype=np.uint32)
        bitset = nodes["bitset_idx"].astype(np.intp)[at] + np.repeat(bitset_shift, sizes)[at]
        self.turns: list[tuple[int, int, int, npt.NDArray[np.bool_]]] = []
        codes = np.arange(256)
        for column in np.unique(feature[at]):
            mine = np.flatnonzero(feature[at] == column)  # contiguous: the splits are grouped by feature
            known_words = known_bitsets[int(np.asarray(f_idx_map)[column])]
            known = (known_words[codes // 32] >> (codes % 32).astype(np.uint32)) & 1 == 1
            k = int(np.flatnonzero(known)[-1]) + 1 if known.any() else 0
            word, bit = codes[:k] // 32, (codes[:k] % 32).astype(np.uint32)
            in_left = (left_bitsets[bitset[mine]][:, word] >> bit) & 1 == 1  # (splits, codes)
            goes_left_missing = missing_left[at[mine]]
            table = np.empty((k + 1, len(mine)), dtype=bool)
            table[:k] = ~np.where(in_left, True, np.where(known[:k], False, goes_left_missing[:, None])).T
            table[k] = ~goes_left_missing
            self.turns.append((int(column), int(mine[0]), k, table))
        left = np.where(leaf, own, nodes["left"].astype(np.intp) + shift)
        right = np.where(leaf, own, nodes["right"].astype(np.intp) + shift)
        value = nodes["value"].astype(np.float64)
        self.leaf = leaf
        # for one row the nodes are renumbered, splits first: only the splits' turns are computed, and a leaf's
        # entry in the chosen children is itself
        splits_first = np.concatenate([np.flatnonzero(~leaf), np.flatnonzero(leaf)])
        renumbered = np.empty(n_nodes, dtype=np.intp)
        renumbered[splits_first] = own
        split = splits_first[: int(np.count_nonzero(~leaf))]
        self.split_slot, self.split_threshold = slot[split], threshold[split]
        self.split_left, self.split_right = renumbered[left[split]], renumbered[right[split]]
        self.leaves_stay = np.arange(len(split), n_nodes, dtype=np.intp)
        self.roots = renumbered[offsets]
        self.value = value[splits_first]
        # for several rows, the walk keeps 2 * node (original numbering)
        self.roots2 = 2 * offsets
        self.children2 = np.empty(2 * n_nodes, dtype=np.intp)  # at 2 * node + turn: 2 * the child
        self.children2[0::2] = 2 * left
        self.children2[1::2] = 2 * right
        self.slot2 = np.repeat(slot, 2)  # at 2 * node (and 2 * node + 1): the slot the node's split reads
        self.threshold2 = np.repeat(threshold, 2)
        self.value2 = np.repeat(value, 2)
        self.depth = int(nodes["depth"].max()) if n_nodes else 0
        self.baseline = baseline

    def usable(self) -> bool:
        """Whether ``value > threshold`` decides every numeric split: a +inf threshold would send +inf right."""
        return not bool(np.any(np.isposinf(self.numeric_threshold[~self.leaf & ~self.categorical])))

    def raw(self, data: Matrix) -> Matrix:
        """The raw predictions (before the inverse link) of the rows of ``data`` (the model's column order)."""
        n_rows, n_trees = len(data), len(self.roots)
        rows = self._layout(data)
        if n_rows == 1:
            # one row: every split's turn at once, then each tree steps through the chosen children (one small
            # gather per level instead of five)
            turns = np.where(rows[0][self.split_slot] > self.split_threshold, self.split_right, self.split_left)
            chosen = np.concatenate((turns, self.leaves_stay))
            node = self.roots
            for _ in range(self.depth):
                node = chosen[node]
            values = self.value[node]
        else:
            flat = rows.ravel()
            node2 = np.tile(self.roots2, n_rows)  # never written to: a new array per level
            row_start = np.repeat(np.arange(n_rows, dtype=np.intp) * self.row_width, n_trees)
            for _ in range(self.depth):
                turn = flat[self.slot2[node2] + row_start] > self.threshold2[node2]
                node2 = self.children2[node2 + turn]
            values = self.value2[node2]
        leaves = np.empty((n_rows, n_trees + 1), dtype=np.float64)
        leaves[:, 0] = self.baseline
        leaves[:, 1:] = values.reshape(n_rows, n_trees)
        # tree by tree, in order, as scikit-learn adds them: a sequential sum, not numpy's pairwise one
        return np.ascontiguousarray(np.add.accumulate(leaves, axis=1)[:, -1])

    def _layout(self, data: Matrix) -> Matrix:
        """The rows of ``data`` in the walk's layout: NaN as -inf, NaN as +inf, then each categorical split's turn."""
        n_rows, width = len(data), self.width
        rows = np.empty((n_rows, self.row_width), dtype=np.float64)
        start = 2 * width
        if n_rows <= LAYOUT_BY_ROW:  # the same, one row at a time with Python floats (v != v: NaN)
            for row, values in zip(rows, data.tolist(), strict=True):
                row[:start] = [-math.inf if v != v else v for v in values] + [math.inf if v != v else v for v in values]
                for column, first, k, turns in self.turns:
                    code = values[column]
                    row[start + first : start + first + turns.shape[1]] = turns[int(code) if 0 <= code < k else k]
            return rows
        missing = np.isnan(data)
        rows[:, :width] = np.where(missing, -np.inf, data)
        rows[:, width:start] = np.where(missing, np.inf, data)
        for column, first, k, turns in self.turns:
            code = data[:, column]
            index = np.where((code >= 0) & (code < k), code, k).astype(np.intp)  # NaN, negative, unknown: row k
            rows[:, start + first : start + first + turns.shape[1]] = turns[index]
        return rows


def _preprocessor(preprocessor: Any) -> Callable[[Matrix], Matrix] | None:
    """The model's internal preprocessing as a plain function, if it has the known shape, else None."""
    if preprocessor is None:
        return lambda features: np.ascontiguousarray(features, dtype=np.float64)
    try:
        (enc_name, encoder, enc_mask), (num_name, _, num_mask), *rest = preprocessor.transformers_
    except (AttributeError, ValueError):
        return None
    if (enc_name, num_name) != ("encoder", "numerical") or any(
        name != "remainder" or t != "drop" for name, t, _ in rest
    ):
        return None
    if type(encoder).__name__ != "OrdinalEncoder" or encoder.handle_unknown != "use_encoded_value":
        return None
    if getattr(encoder, "_missing_indices", {}) or getattr(encoder, "_infrequent_enabled", False):
        return None
    if not np.isnan(encoder.unknown_value):
        return None
    categorical = np.flatnonzero(np.asarray(enc_mask, dtype=bool))
    numeric = np.flatnonzero(np.asarray(num_mask, dtype=bool))
    categories = [np.asarray(c, dtype=np.float64) for c in encoder.categories_]
    if len(categories) != len(categorical) or any(not np.all(np.diff(c) > 0) for c in categories):
        return None
    width = len(categorical) + len(numeric)
    if all(np.array_equal(known, np.arange(len(known))) for known in categories):
        # the codes seen in training are 0..k-1 (what FeatureTransformer emits): a code is its own position,
        # anything else (NaN, negative, fractional, k or more) unknown; all columns at once
        sizes = np.array([len(known) for known in categories], dtype=np.float64)
        picked = [(int(column), len(known)) for column, known in zip(categorical, categories, strict=True)]
        numeric_columns = numeric.tolist()

        def reorder_codes(features: Matrix) -> Matrix:
            if features.shape[0] == 1:  # one row: the same rule on Python floats (numpy's calls cost more)
                values = features[0].tolist()
                row = [
                    values[column] + 0.0 if 0 <= values[column] < size and values[column].is_integer() else math.nan
                    for column, size in picked
                ]
                row += [values[column] for column in numeric_columns]
                return np.array([row], dtype=np.float64)
            out = np.empty((features.shape[0], width), dtype=np.float64)
            codes = features[:, categorical]
            known = (codes >= 0) & (codes < sizes) & (codes == np.floor(codes))
            out[:, : len(categorical)] = np.where(known, codes + 0.0, np.nan)  # + 0.0: -0.0 is position 0.0
            out[:, len(categorical) :] = features[:, numeric]
            return out

        return reorder_codes

    def reorder(features: Matrix) -> Matrix:
        out = np.empty((features.shape[0], width), dtype=np.float64)
        for j, (column, known) in enumerate(zip(categorical, categories, strict=True)):
            values = features[:, column]
            position = np.searchsorted(known, values)
            found = known[np.minimum(position, len(known) - 1)] == values  # NaN never equals: unknown
            out[:, j] = np.where(found, position, np.nan)
        out[:, len(categorical) :] = features[:, numeric]
        return out

    return reorder


def probe_columns(metadata: Metadata, rows: int, seed: int = 0) -> dict[str, list[Any]]:
    """The bundle's example then ``rows - 1`` valid records drawn across every feature's range (its limits, else
    the range seen in training), as columns."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {}
    for feature in metadata.features:
        first = metadata.example[feature.name]
        seen_low, seen_high = feature.training_range()
        lowest = next((v for v in (feature.minimum, seen_low, first) if v is not None), first)
        highest = next((v for v in (feature.maximum, seen_high, first) if v is not None), first)
        drawn: list[Any]
        if feature.kind == "categorical":
            drawn = [str(c) for c in rng.choice(np.asarray(feature.categories or [first]), rows - 1)]
        elif feature.kind == "date":
            first_day = date.fromisoformat(str(lowest))
            span = max((date.fromisoformat(str(highest)) - first_day).days, 1)
            drawn = [(first_day + timedelta(days=int(d))).isoformat() for d in rng.integers(0, span + 1, rows - 1)]
        else:
            low, high = float(lowest), float(highest)
            values = rng.uniform(low, high, rows - 1)
            if feature.dtype == "int":
                drawn = [min(max(round(v), math.ceil(low)), math.floor(high)) for v in values]
            else:
                drawn = [float(v) for v in values]
        columns[feature.name] = [first, *drawn]
    return columns
