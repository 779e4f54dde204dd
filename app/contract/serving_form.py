"""A bundle's serving form: the model as arrays, predicted with numpy alone, bit-identical to ``Bundle.predict``.

Training writes it next to the scikit-learn artifacts (``serving.npz``, read with ``allow_pickle=False``): the
transformer's vocabularies and columns as data (``app.contract.encoding.FeatureEncoding``), and the model's trees as
look-up tables. It is checked against ``Bundle.predict`` on a probe set (rows drawn across every feature's range,
``probe_columns``) and on the test split before it is written, and the probe records and their predictions are
stored in it: loading re-predicts them and refuses the form unless every value is the same float. So the server
loads and predicts without scikit-learn, scipy or skops, and without skops' type audit.

How the trees are evaluated (QuickScorer, Lucchese et al., SIGIR 2015, in numpy): the leaves of each tree are
numbered left to right, and a split that sends a row right rules out every leaf of its left subtree. The row then
exits at the leftmost leaf no split ruled out, whatever the splits test (a leaf left of the exit leaf lies in the
left subtree of a split on the row's path that went right; the exit leaf itself is in no left subtree of a split
that went right). Every split tests one model column, and which way it sends a row depends only on which *bucket*
of that column the value falls in:

- a numeric column's buckets are cut at every split threshold on it, sorted: bucket ``b`` holds the values
  ``edges[b - 1] < x <= edges[b]``, so a split at ``edges[j]`` sends ``x`` left exactly when ``b <= j``, as
  scikit-learn's ``x <= threshold`` does; one more bucket holds NaN, which goes where the split sends missing values;
- a categorical column's buckets are the positions its encoder gives a category, one more for NaN and unknown
  categories; a split's turn for each is what scikit-learn's raw walk decides (in the left set: left; known to the
  model: right; otherwise as missing values go).

So for each bucket of each column and each tree, the form stores the leaves still reachable (a bit mask, bit ``i``
the ``i``-th leaf): the AND of the masks of every split on that column the bucket sends right. A row's masks for its
buckets, ANDed over the columns, leave the exit leaf as the lowest set bit; multiplied by a de Bruijn sequence, its
top five (six) bits number it, which indexes the tree's leaf values. The trees' values are then added in tree order,
starting from the model's baseline, as scikit-learn adds them. Columns with few buckets are ANDed ahead of time in
groups (at most ``GROUP_ROWS`` combinations each), so a row needs one gather per group. One batch is a handful of
numpy calls over (rows x trees) arrays, with no call per tree and no per-node work.
"""

from __future__ import annotations

import bisect
import math
import threading
import zipfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from app.contract.encoding import Columns, FeatureEncoding
from app.contract.walk_kernel import CompiledWalk, compiled_walk, kernel_tables

if TYPE_CHECKING:
    from app.contract.bundle import Metadata

SERVING_FILE: Final = "serving.npz"
FORM_VERSION: Final = 1
PROBE_ROWS: Final = 2048
# Up to this many rows a row's buckets are found with Python's bisect and the masks ANDed in one reduction; above
# it, with numpy's sorted search, one column at a time.
FEW_ROWS: Final = 16
# Above FEW_ROWS, rows are predicted this many at a time, in work arrays each thread keeps (``_Work``): a block's
# arrays stay in the core's cache, and no batch allocates them anew.
BLOCK_ROWS: Final = 1024
# Columns are ANDed ahead of time in groups of at most this many bucket combinations (the grouped tables' rows): a
# row then needs one gather per group instead of one per column.
GROUP_ROWS: Final = 1024
# The batch sizes the load-time check predicts besides the whole probe: one row, and either end of each path.
CHECKED_BATCHES: Final = (1, 2, FEW_ROWS, FEW_ROWS + 1, BLOCK_ROWS + 1)
# The perfect hash of a single-bit mask (the exit leaf's bit): multiplied by a de Bruijn sequence, its top bits are the
# bit's number, a different one for each of the 32 (64) bits; a multiply and a shift, where numpy's integer remainder
# is not vectorised. Per mask width: (the sequence, the shift).
DE_BRUIJN: Final[dict[type[np.unsignedinteger[Any]], tuple[int, int]]] = {
    np.uint32: (0x077CB531, 27),
    np.uint64: (0x03F79D71B4CA8B09, 58),
}


def leaf_slot(bit: int, mask_type: type[np.unsignedinteger[Any]]) -> int:
    """Where the leaf whose mask bit is ``bit`` keeps its value in its tree's row of leaf values."""
    sequence, shift = DE_BRUIJN[mask_type]
    width = np.dtype(mask_type).itemsize * 8
    return (((1 << bit) * sequence) % (1 << width)) >> shift


Matrix = npt.NDArray[np.float64]
# How a form predicts (``ServingForm.walk``): walk.c's compiled walk, one call per batch with the GIL released
# (``app.contract.walk_kernel``), or numpy's, a few dozen calls per block of rows; the same floats either way.
WALKS: Final = ("compiled", "numpy")


class NoServingForm(Exception):
    """The model has no serving form: not a kind this module compiles (the reason says which part)."""


class ServingFormError(Exception):
    """A serving form that is malformed, or predicts other values than those stored with it."""


@dataclass(frozen=True)
class ModelColumn:
    """One input column of the model: where the encoding puts it, and how its values fall into buckets.

    ``edges`` (numeric): the sorted split thresholds; buckets ``0..len(edges)``, then NaN. ``lookup`` (categorical):
    the table row of each vocabulary position of the encoding's column, the last entry for NaN (unknown)."""

    source: int
    offset: int  # the table row of its first bucket
    edges: npt.NDArray[np.float64] | None = None
    lookup: npt.NDArray[np.intp] | None = None


class _Work:
    """One thread's work arrays for a block of ``BLOCK_ROWS`` rows."""

    def __init__(self, mask_type: np.dtype[Any], n_trees: int, baseline: float) -> None:
        self.masks = np.empty((BLOCK_ROWS, n_trees), dtype=mask_type)
        self.gathered = np.empty((BLOCK_ROWS, n_trees), dtype=mask_type)
        self.leaf = np.empty((BLOCK_ROWS, n_trees), dtype=np.intp)
        self.values = np.empty((BLOCK_ROWS, n_trees), dtype=np.float64)
        self.sums = np.empty((BLOCK_ROWS, n_trees + 1), dtype=np.float64)
        self.sums[:, 0] = baseline  # the first column never changes: the sum starts from the baseline
        self.running = np.empty((BLOCK_ROWS, n_trees + 1), dtype=np.float64)


class ServingForm:
    """The encoding and the trees as reachable-leaf tables: ``predict`` needs numpy only."""

    def __init__(
        self,
        encoding: FeatureEncoding,
        columns: list[ModelColumn],
        reachable: npt.NDArray[np.unsignedinteger[Any]],
        leaf_values: Matrix,
        baseline: float,
        walk: str | None = None,
    ) -> None:
        """``walk``: ``"compiled"`` (``ServingFormError`` if this machine has no compiled walk), ``"numpy"``, or
        None: the compiled walk if this machine has one (``walk_kernel.compiled_walk``), else the numpy walk."""
        if walk not in (None, *WALKS):
            raise ValueError(f"walk {walk!r}: one of {', '.join(WALKS)}, or None")
        self.encoding = encoding
        self.columns = columns
        self.reachable = reachable
        self.leaf_values = leaf_values
        self.baseline = baseline
        self.n_trees = reachable.shape[1]
        mask_type = reachable.dtype.type
        self._sequence, self._shift = (mask_type(value) for value in DE_BRUIJN[mask_type])
        self._tree_rows = np.arange(self.n_trees, dtype=np.intp) * leaf_values.shape[1]
        self._values = np.ascontiguousarray(leaf_values).ravel()
        self._threads = threading.local()  # each thread's work arrays (``_work``)
        # each column's buckets numbered from 0: a numeric column's by its edges, a categorical one's by its look-up
        sizes = [len(c.edges) + 2 if c.edges is not None else int(c.lookup.max()) - c.offset + 1 for c in columns]  # type: ignore[union-attr]
        self._local = [None if c.lookup is None else c.lookup - c.offset for c in columns]
        # columns ANDed ahead of time in groups of at most GROUP_ROWS bucket combinations (fewer gathers per row)
        self._groups: list[tuple[list[int], list[int], int]] = []  # (columns, each one's stride, first table row)
        tables = []
        first = 0
        for members in _groups_of(sizes):
            table = self._table(columns[members[0]], sizes[members[0]])
            for j in members[1:]:
                table = (table[:, None, :] & self._table(columns[j], sizes[j])[None, :, :]).reshape(-1, self.n_trees)
            strides = [math.prod(sizes[k] for k in members[i + 1 :]) for i in range(len(members))]
            self._groups.append((members, strides, first))
            tables.append(table)
            first += len(table)
        self._grouped = np.ascontiguousarray(np.concatenate(tables))
        # the compiled walk's view of the same tables (one call per batch, the GIL released)
        placed = {
            j: (g, stride)
            for g, (members, strides, _) in enumerate(self._groups)
            for j, stride in zip(members, strides, strict=True)
        }
        self._kernel_tables = kernel_tables(
            sources=[c.source for c in columns],
            groups=[placed[j][0] for j in range(len(columns))],
            strides=[placed[j][1] for j in range(len(columns))],
            edges=[c.edges for c in columns],
            lookups=self._local,
            group_first=[first for _, _, first in self._groups],
            grouped=self._grouped,
            leaf_values=leaf_values,
            sequence=int(self._sequence),
            shift=int(self._shift),
            baseline=baseline,
        )
        found = compiled_walk() if walk != "numpy" else "the numpy walk was asked for"
        if walk == "compiled" and isinstance(found, str):
            raise ServingFormError(found)
        self._compiled: CompiledWalk | None = None if isinstance(found, str) else found
        self.walk = "numpy" if self._compiled is None else "compiled"
        self.walk_note = found if isinstance(found, str) else f"compiled walk {found.path.name}"
        # the few-rows path, in Python: per column (source, edges as a list or None, local look-up or None)
        self._by_row = [
            (c.source, None if c.edges is None else c.edges.tolist(), None if local is None else local.tolist())
            for c, local in zip(columns, self._local, strict=True)
        ]

    def using(self, walk: str) -> ServingForm:
        """The same tables, predicted with ``walk`` (one of ``WALKS``)."""
        return ServingForm(self.encoding, self.columns, self.reachable, self.leaf_values, self.baseline, walk=walk)

    def _table(self, column: ModelColumn, size: int) -> npt.NDArray[np.unsignedinteger[Any]]:
        """The rows of ``reachable`` that hold ``column``'s buckets."""
        if not 0 <= column.offset <= column.offset + size <= len(self.reachable):
            raise ValueError("a column's buckets lie outside the reachable-leaf table")
        return self.reachable[column.offset : column.offset + size]

    def predict(self, columns: Columns) -> Matrix:
        """Column mapping (dict of lists or arrays, or a DataFrame) -> the same predictions as ``Bundle.predict``."""
        return self.predict_encoded(self.encoding.transform(columns))

    def predict_encoded(self, matrix: Matrix) -> Matrix:
        """The encoding's output matrix -> predictions."""
        if self._compiled is not None:
            return self._compiled.predict(self._kernel_tables, matrix)
        n_rows = matrix.shape[0]
        if n_rows <= FEW_ROWS:
            masks = np.bitwise_and.reduce(self._grouped[self._rows_few(matrix)], axis=1)
            exit_bit = masks & (0 - masks)  # the lowest set bit: the leftmost leaf still reachable
            leaf = ((exit_bit * self._sequence) >> self._shift).astype(np.intp) + self._tree_rows
            sums = np.empty((n_rows, self.n_trees + 1), dtype=np.float64)
            sums[:, 0] = self.baseline
            sums[:, 1:] = self._values[leaf]
            return np.ascontiguousarray(np.add.accumulate(sums, axis=1)[:, -1])
        out = np.empty(n_rows, dtype=np.float64)
        work = self._work()
        for start in range(0, n_rows, BLOCK_ROWS):
            block = matrix[start : start + BLOCK_ROWS]
            rows = len(block)
            masks, gathered, leaf = work.masks[:rows], work.gathered[:rows], work.leaf[:rows]
            sums, running = work.sums[:rows], work.running[:rows]
            np.take(self._grouped, self._rows_of(self._groups[0], block), axis=0, out=masks)
            for group in self._groups[1:]:
                np.take(self._grouped, self._rows_of(group, block), axis=0, out=gathered)
                np.bitwise_and(masks, gathered, out=masks)
            np.negative(masks, out=gathered)  # 0 - masks, modulo 2**bits
            np.bitwise_and(masks, gathered, out=masks)  # the lowest set bit: the leftmost leaf still reachable
            np.multiply(masks, self._sequence, out=masks)  # modulo 2**bits
            np.right_shift(masks, self._shift, out=masks)  # the leaf's slot: the bit's number
            np.copyto(leaf, masks, casting="unsafe")
            np.add(leaf, self._tree_rows, out=leaf)
            np.take(self._values, leaf, out=work.values[:rows])
            sums[:, 1:] = work.values[:rows]
            # tree by tree, in order, as scikit-learn adds them: a sequential sum, not numpy's pairwise one
            np.add.accumulate(sums, axis=1, out=running)
            out[start : start + rows] = running[:, -1]
        return out

    def _work(self) -> _Work:
        """This thread's work arrays for one block of rows (made once per thread and form: a block's arrays are
        about 1.2 MB, and allocating them anew for every batch costs more than the walk, as fresh pages fault)."""
        work: _Work | None = getattr(self._threads, "work", None)
        if work is None:
            work = _Work(self.reachable.dtype, self.n_trees, self.baseline)
            self._threads.work = work
        return work

    def _rows_of(self, group: tuple[list[int], list[int], int], matrix: Matrix) -> npt.NDArray[np.intp]:
        """The grouped table's row for each row of ``matrix``: its buckets in the group's columns, combined."""
        members, strides, first = group
        rows = np.full(len(matrix), first, dtype=np.intp)
        for j, stride in zip(members, strides, strict=True):
            column = self.columns[j]
            values = matrix[:, column.source]
            missing = np.isnan(values)
            if column.edges is not None:
                bucket = np.searchsorted(column.edges, values, side="left")
                bucket[missing] = len(column.edges) + 1
            else:
                local = self._local[j]
                assert local is not None
                bucket = local[np.where(missing, len(local) - 1, values).astype(np.intp)]
            if stride != 1:
                bucket *= stride
            rows += bucket
        return rows

    def _rows_few(self, matrix: Matrix) -> list[list[int]]:
        """The same rows for a few rows, with Python floats (``v != v``: NaN)."""
        found = []
        for values in matrix.tolist():
            buckets = []
            for source, edges, local in self._by_row:
                v = values[source]
                if edges is not None:
                    buckets.append(len(edges) + 1 if v != v else bisect.bisect_left(edges, v))
                else:
                    assert local is not None
                    buckets.append(local[-1] if v != v else local[int(v)])
            found.append(
                [
                    first + sum(buckets[j] * k for j, k in zip(members, strides, strict=True))
                    for members, strides, first in self._groups
                ]
            )
        return found

    def agrees(self, columns: Columns, expected: Matrix) -> bool:
        """Whether the form predicts ``expected`` for ``columns`` bit for bit: whole, then in consecutive batches of
        ``CHECKED_BATCHES``' sizes (every path the row count selects, at either end)."""
        matrix = self.encoding.transform(columns)
        if not np.array_equal(self.predict_encoded(matrix), expected, equal_nan=True):
            return False
        start = 0
        for size in CHECKED_BATCHES:
            part = slice(start, start + size)
            if not np.array_equal(self.predict_encoded(matrix[part]), expected[part], equal_nan=True):
                return False
            start += size
        return True


# --- writing (training, where scikit-learn is installed) --------------------------------------------------------


def _groups_of(sizes: list[int]) -> list[list[int]]:
    """Columns (by index) in groups whose bucket counts multiply to at most ``GROUP_ROWS``, smallest first."""
    groups: list[list[int]] = []
    product = GROUP_ROWS + 1
    for j in sorted(range(len(sizes)), key=lambda k: sizes[k]):
        if product * sizes[j] > GROUP_ROWS:
            groups.append([])
            product = 1
        groups[-1].append(j)
        product *= sizes[j]
    return groups


def compile_serving_form(transformer: Any, model: Any) -> ServingForm:
    """The serving form of a fitted ``FeatureTransformer`` and single-output ``HistGradientBoostingRegressor`` (identity
    link, at most 64 leaves a tree); ``NoServingForm`` says why another model has none."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    if type(model) is not HistGradientBoostingRegressor:
        raise NoServingForm(f"the model is a {type(model).__name__}, not a HistGradientBoostingRegressor")
    if model.n_trees_per_iteration_ != 1 or type(model._loss.link).__name__ != "IdentityLink":
        raise NoServingForm("the model is not single-output with the identity link (loss='squared_error')")
    encoding: FeatureEncoding = transformer.encoding()
    trees = [predictor for predictors_of_iteration in model._predictors for predictor in predictors_of_iteration]
    leaves = max(int(np.count_nonzero(tree.nodes["is_leaf"])) for tree in trees)
    if leaves > 64:
        raise NoServingForm(f"a tree has {leaves} leaves, more than 64 (max_leaf_nodes)")
    mask_type = np.uint32 if leaves <= 32 else np.uint64
    slots = np.dtype(mask_type).itemsize * 8
    sources, positions = _model_columns(model, encoding)
    bin_mapper = model._bin_mapper
    known_bitsets, f_idx_map = bin_mapper.make_known_categories_bitsets()
    is_categorical = np.asarray(bin_mapper.is_categorical_, dtype=bool)
    split_nodes = [tree.nodes[~tree.nodes["is_leaf"].astype(bool)] for tree in trees]
    columns: list[ModelColumn] = []
    turns: list[_NumericTurns | _CategoricalTurns] = []  # per model column: a split's turn for each bucket
    offset = 0  # the table row of the next column's first bucket
    for j, source in enumerate(sources):
        if is_categorical[j]:
            known = _bits(known_bitsets[f_idx_map[j]])
            count = max(len(positions[j]), int(np.flatnonzero(known)[-1]) + 1 if known.any() else 0)
            if count > 256:
                raise NoServingForm(f"model column {j} has {count} categories, more than 256")
            vocabulary = len(encoding.vocabularies[encoding.categorical[source - len(encoding.numeric)]])
            lookup = np.full(vocabulary + 1, offset + count, dtype=np.intp)  # unknown and NaN: the missing bucket
            for code, position in positions[j].items():
                if code < vocabulary:
                    lookup[code] = offset + position
            columns.append(ModelColumn(source, offset, lookup=lookup))
            turns.append(_CategoricalTurns(known[:count], count))
        else:
            thresholds = [nodes["num_threshold"][nodes["feature_idx"] == j] for nodes in split_nodes]
            edges = np.unique(np.concatenate(thresholds)).astype(np.float64)
            columns.append(ModelColumn(source, offset, edges=edges))
            turns.append(_NumericTurns(edges))
        offset += turns[-1].buckets
    reachable = np.full((offset, len(trees)), np.iinfo(mask_type).max, dtype=mask_type)
    leaf_values = np.zeros((len(trees), slots), dtype=np.float64)
    for t, tree in enumerate(trees):
        nodes = tree.nodes
        first, last = _leaf_ranges(nodes)
        for i in np.flatnonzero(~nodes["is_leaf"].astype(bool)):
            left = int(nodes["left"][i])
            ruled_out = mask_type(((1 << (last[left] - first[left])) - 1) << first[left])
            j = int(nodes["feature_idx"][i])
            right = turns[j](nodes[i], tree)
            block = reachable[columns[j].offset : columns[j].offset + len(right), t]
            block[right] &= ~ruled_out
        for i in np.flatnonzero(nodes["is_leaf"].astype(bool)):
            leaf_values[t, leaf_slot(first[i], mask_type)] = nodes["value"][i]
    baseline = 0.0 + float(model._baseline_prediction[0, 0])  # scikit-learn starts from zeros plus the baseline
    return ServingForm(encoding, columns, reachable, leaf_values, baseline)


def _bits(words: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """A scikit-learn category bitset (8 words of 32 bits) -> 256 booleans."""
    codes = np.arange(256)
    return np.asarray((np.asarray(words, dtype=np.uint32)[codes // 32] >> (codes % 32).astype(np.uint32)) & 1 == 1)


class _NumericTurns:
    """A numeric split's turn for each bucket of its column: right above its threshold's bucket, NaN as missing."""

    def __init__(self, edges: npt.NDArray[np.float64]) -> None:
        self.edges = edges
        self.buckets = len(edges) + 2

    def __call__(self, node: Any, tree: Any) -> npt.NDArray[np.bool_]:
        at = int(np.searchsorted(self.edges, node["num_threshold"]))
        right = np.arange(self.buckets) > at
        right[-1] = not bool(node["missing_go_to_left"])
        return right


class _CategoricalTurns:
    """A categorical split's turn for each position, as scikit-learn's raw walk turns it, NaN and unknown as missing."""

    def __init__(self, known: npt.NDArray[np.bool_], count: int) -> None:
        self.known = known
        self.count = count
        self.buckets = count + 1

    def __call__(self, node: Any, tree: Any) -> npt.NDArray[np.bool_]:
        missing_left = bool(node["missing_go_to_left"])
        in_left = _bits(tree.raw_left_cat_bitsets[int(node["bitset_idx"])])[: self.count]
        right = np.empty(self.buckets, dtype=bool)
        right[: self.count] = ~in_left & (self.known | (not missing_left))
        right[-1] = not missing_left
        return right


def _leaf_ranges(nodes: Any) -> tuple[list[int], list[int]]:
    """For every node, the first and one-past-last number of its leaves, leaves numbered left to right."""
    n = len(nodes)
    first, last = [0] * n, [0] * n
    count = 0
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:
        node, done = stack.pop()
        if nodes["is_leaf"][node]:
            first[node], last[node] = count, count + 1
            count += 1
        elif not done:
            stack += [(node, True), (int(nodes["right"][node]), False), (int(nodes["left"][node]), False)]
        else:
            first[node], last[node] = first[int(nodes["left"][node])], last[int(nodes["right"][node])]
    return first, last


def _model_columns(model: Any, encoding: FeatureEncoding) -> tuple[list[int], list[dict[int, int]]]:
    """For each model input column (in the order its trees number them): the encoding's column it reads, and for a
    categorical one, the position the model's own encoder gives each vocabulary code it knows."""
    width = encoding.width
    preprocessor = getattr(model, "_preprocessor", None)
    is_categorical = np.asarray(model._bin_mapper.is_categorical_, dtype=bool)
    if preprocessor is None:
        own = {code: code for code in range(256)}  # the codes are the positions
        return list(range(width)), [own if categorical else {} for categorical in is_categorical]
    try:
        (enc_name, encoder, enc_mask), (num_name, _, num_mask), *rest = preprocessor.transformers_
    except (AttributeError, ValueError):
        raise NoServingForm("the model's internal preprocessor has an unknown shape") from None
    if (enc_name, num_name) != ("encoder", "numerical") or any(n != "remainder" or t != "drop" for n, t, _ in rest):
        raise NoServingForm("the model's internal preprocessor has an unknown shape")
    if type(encoder).__name__ != "OrdinalEncoder" or encoder.handle_unknown != "use_encoded_value":
        raise NoServingForm("the model's categorical encoder is not an OrdinalEncoder for unknown values")
    if getattr(encoder, "_missing_indices", {}) or getattr(encoder, "_infrequent_enabled", False):
        raise NoServingForm("the model's categorical encoder treats missing or infrequent categories apart")
    if not np.isnan(encoder.unknown_value):
        raise NoServingForm("the model's categorical encoder does not encode unknown categories as NaN")
    categorical = np.flatnonzero(np.asarray(enc_mask, dtype=bool)).tolist()
    numeric = np.flatnonzero(np.asarray(num_mask, dtype=bool)).tolist()
    coded = set(range(len(encoding.numeric), len(encoding.numeric) + len(encoding.categorical)))
    if not set(categorical) <= coded:
        raise NoServingForm("the model encodes a column the transformer does not give as category codes")
    positions = []
    for known in encoder.categories_:
        codes = np.asarray(known, dtype=np.float64)
        whole = codes[(codes >= 0) & (codes == np.floor(codes))]
        positions.append({int(code): int(np.flatnonzero(codes == code)[0]) for code in whole})
    positions += [{} for _ in numeric]
    return categorical + numeric, positions


# --- the probe ----------------------------------------------------------------------------------------------------


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


# --- the file -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredForm:
    """A serving form with the probe it was checked on: the records and what ``Bundle.predict`` predicted for them."""

    form: ServingForm
    probe: dict[str, npt.NDArray[Any]]
    expected: Matrix

    def check(self) -> None:
        """``ServingFormError`` unless the form predicts the stored probe's values bit for bit."""
        if not self.form.agrees(self.probe, self.expected):
            raise ServingFormError("it does not predict its stored probe records bit for bit as training did")

    def save(self, path: Path) -> None:
        form = self.form
        arrays: dict[str, npt.NDArray[Any]] = {
            "form_version": np.asarray(FORM_VERSION),
            "numeric": np.asarray(form.encoding.numeric, dtype=np.str_),
            "categorical": np.asarray(form.encoding.categorical, dtype=np.str_),
            "dates": np.asarray(form.encoding.dates, dtype=np.str_),
            "sources": np.asarray([c.source for c in form.columns], dtype=np.int64),
            "offsets": np.asarray([c.offset for c in form.columns], dtype=np.int64),
            "reachable": form.reachable,
            "leaf_values": form.leaf_values,
            "baseline": np.asarray(form.baseline, dtype=np.float64),
            "probe_names": np.asarray(list(self.probe), dtype=np.str_),
            "expected": self.expected,
        }
        for i, name in enumerate(form.encoding.categorical):
            arrays[f"vocabulary_{i}"] = np.asarray(form.encoding.vocabularies[name], dtype=np.str_)
        for j, column in enumerate(form.columns):
            if column.edges is not None:
                arrays[f"edges_{j}"] = column.edges
            else:
                assert column.lookup is not None
                arrays[f"lookup_{j}"] = column.lookup.astype(np.int64)
        for i, values in enumerate(self.probe.values()):
            arrays[f"probe_{i}"] = values
        with path.open("wb") as file:
            np.savez(file, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, path: Path) -> StoredForm:
        """Read a serving form; ``ServingFormError`` if it is not one this version reads, or is malformed."""
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ServingFormError(f"it cannot be read: {exc}") from None
        try:
            return cls._from_arrays(stored)
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            raise ServingFormError(f"it is malformed: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _from_arrays(cls, stored: dict[str, npt.NDArray[Any]]) -> StoredForm:
        version = int(stored["form_version"])
        if version != FORM_VERSION:
            raise ServingFormError(f"its format version is {version}; this server reads {FORM_VERSION}")
        categorical = stored["categorical"].tolist()
        encoding = FeatureEncoding(
            stored["numeric"].tolist(),
            {name: stored[f"vocabulary_{i}"].tolist() for i, name in enumerate(categorical)},
            stored["dates"].tolist(),
        )
        reachable, leaf_values = stored["reachable"], stored["leaf_values"]
        if reachable.ndim != 2 or reachable.dtype.type not in DE_BRUIJN:
            raise ValueError("the reachable-leaf table is not a 2-D array of 32- or 64-bit masks")
        if leaf_values.shape != (reachable.shape[1], reachable.dtype.itemsize * 8) or leaf_values.dtype != float:
            raise ValueError("the leaf values do not match the reachable-leaf table")
        columns = []
        for j, (source, offset) in enumerate(zip(stored["sources"].tolist(), stored["offsets"].tolist(), strict=True)):
            if not 0 <= source < encoding.width:
                raise ValueError(f"model column {j} reads column {source} of {encoding.width}")
            if f"edges_{j}" in stored:
                edges = stored[f"edges_{j}"].astype(np.float64)
                if not 0 <= offset <= offset + len(edges) + 2 <= len(reachable):
                    raise ValueError(f"model column {j}'s buckets lie outside the table")
                columns.append(ModelColumn(source, offset, edges=edges))
            else:
                lookup = stored[f"lookup_{j}"].astype(np.intp)
                if lookup.size == 0 or lookup.min() < 0 or lookup.max() >= len(reachable):
                    raise ValueError(f"model column {j}'s buckets lie outside the table")
                columns.append(ModelColumn(source, offset, lookup=lookup))
        form = ServingForm(encoding, columns, reachable, leaf_values, float(stored["baseline"]))
        probe = {name: stored[f"probe_{i}"] for i, name in enumerate(stored["probe_names"].tolist())}
        return cls(form, probe, stored["expected"].astype(np.float64))
