"""The serving form's compiled walk, loaded with ctypes: one call per batch, the GIL released for all of it.

The numpy walk (``ServingForm`` without it) is a few dozen numpy calls per block of rows; each releases the GIL
and takes it back, and taking it back waits while the event loop parses the next request (up to Python's switch
interval, 5 ms), so a batch thread gets little of the second core. The compiled walk (``walk.c``) does the same
arithmetic in one call: ``ctypes.CDLL`` releases the GIL on entry and takes it back once on return. Calls of up to
``HELD_GIL_ROWS`` rows go through ``ctypes.PyDLL`` instead, which keeps the GIL: a few microseconds of work, where
giving the GIL up could cost a switch interval (the micro-batches of single records are predicted on the event
loop itself).

``compiled_walk()`` finds the library for this machine's architecture beside ``walk.c`` (``walk_build`` writes it),
and uses it only if it was built from this ``walk.c`` (the digest it carries). Without one, the form falls back to
the numpy walk (the reason ``compiled_walk()`` returns says why). Either way, loading a bundle re-predicts its
stored probe bit for bit through the walk it will serve with.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.contract.walk_build import SOURCE, library_here, source_digest

# Up to this many rows a call keeps the GIL (``ctypes.PyDLL``): about 1 µs a row on the 200k-row bundle.
HELD_GIL_ROWS: Final = 64
_I64: Final = ctypes.c_int64
_P: Final = ctypes.c_void_p


class WalkTables(ctypes.Structure):
    """``struct walk_tables`` in ``walk.c``: pointers into arrays the form keeps alive (``KernelTables.arrays``)."""

    _fields_ = [
        ("n_columns", _I64),
        ("source", _P),
        ("group", _P),
        ("stride", _P),
        ("edges_at", _P),
        ("edges_len", _P),
        ("edges", _P),
        ("lookup_at", _P),
        ("lookup_len", _P),
        ("lookup", _P),
        ("n_groups", _I64),
        ("group_first", _P),
        ("grouped", _P),
        ("n_trees", _I64),
        ("leaf_values", _P),
        ("n_slots", _I64),
        ("sequence", ctypes.c_uint64),
        ("shift", _I64),
        ("baseline", ctypes.c_double),
    ]


@dataclass(frozen=True)
class KernelTables:
    """A form's tables as ``walk.c`` reads them, with the arrays the pointers point into."""

    tables: WalkTables
    arrays: tuple[npt.NDArray[Any], ...]  # kept alive as long as ``tables``
    mask_type: np.dtype[Any]


def kernel_tables(
    *,
    sources: list[int],
    groups: list[int],
    strides: list[int],
    edges: list[npt.NDArray[np.float64] | None],
    lookups: list[npt.NDArray[np.intp] | None],
    group_first: list[int],
    grouped: npt.NDArray[np.unsignedinteger[Any]],
    leaf_values: npt.NDArray[np.float64],
    sequence: int,
    shift: int,
    baseline: float,
) -> KernelTables:
    """Flatten a form's per-column tables into the arrays ``struct walk_tables`` points into (per column: ``edges``
    for a numeric one, else its local ``lookups``, each numbered from 0)."""

    def ints(values: list[int]) -> npt.NDArray[np.int64]:
        return np.ascontiguousarray(values, dtype=np.int64)

    def starts(lengths: list[int]) -> npt.NDArray[np.int64]:  # where each column's part begins in the flat array
        return ints([sum(lengths[:i]) for i in range(len(lengths))])

    edge_arrays = [np.empty(0) if e is None else e for e in edges]
    lookup_arrays = [np.empty(0, dtype=np.int64) if lookup is None else lookup for lookup in lookups]
    arrays = (
        ints(sources),
        ints(groups),
        ints(strides),
        starts([len(e) for e in edge_arrays]),
        ints([-1 if e is None else len(e) for e in edges]),
        np.ascontiguousarray(np.concatenate([np.empty(0), *edge_arrays]), dtype=np.float64),
        starts([len(lookup) for lookup in lookup_arrays]),
        ints([0 if lookup is None else len(lookup) for lookup in lookups]),
        np.ascontiguousarray(np.concatenate([np.empty(0, dtype=np.int64), *lookup_arrays]), dtype=np.int64),
        ints(group_first),
        np.ascontiguousarray(grouped),
        np.ascontiguousarray(leaf_values, dtype=np.float64),
    )
    source, group, stride, edges_at, edges_len, flat_edges, lookup_at, lookup_len, flat_lookup, first, table, values = (
        arrays
    )

    def at(array: npt.NDArray[Any]) -> int | None:
        return array.ctypes.data if array.size else None

    tables = WalkTables(
        len(sources),
        at(source),
        at(group),
        at(stride),
        at(edges_at),
        at(edges_len),
        at(flat_edges),
        at(lookup_at),
        at(lookup_len),
        at(flat_lookup),
        len(group_first),
        at(first),
        at(table),
        table.shape[1],
        at(values),
        values.shape[1],
        sequence,
        shift,
        baseline,
    )
    return KernelTables(tables, arrays, table.dtype)


class CompiledWalk:
    """The library's two walks (32- and 64-bit masks), each callable with the GIL released or held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        released, held = ctypes.CDLL(str(path)), ctypes.PyDLL(str(path))
        self.built_from = released.walk_source  # the digest of the walk.c it was built from
        self.built_from.restype = ctypes.c_uint64
        self._functions: dict[tuple[str, bool], Any] = {}
        for bits, mask in (("u32", ctypes.c_uint32), ("u64", ctypes.c_uint64)):
            for library, keeps_gil in ((released, False), (held, True)):
                function = getattr(library, f"walk_{bits}")
                function.restype = _I64
                masks = ctypes.POINTER(mask)
                function.argtypes = [ctypes.POINTER(WalkTables), _P, _I64, _I64, _P, masks, _P]
                self._functions[(np.dtype(mask).str, keeps_gil)] = function

    def predict(self, kernel: KernelTables, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The encoded ``matrix``'s predictions; ``ValueError`` for a category code the form has no bucket for."""
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        n_rows, n_features = matrix.shape
        out = np.empty(n_rows, dtype=np.float64)
        rows = np.empty(max(kernel.tables.n_groups, 1), dtype=np.int64)
        masks = np.empty(max(kernel.tables.n_trees, 1), dtype=kernel.mask_type)
        function = self._functions[(kernel.mask_type.str, n_rows <= HELD_GIL_ROWS)]
        status = function(
            ctypes.byref(kernel.tables),
            matrix.ctypes.data,
            n_rows,
            n_features,
            rows.ctypes.data,
            masks.ctypes.data_as(function.argtypes[5]),
            out.ctypes.data,
        )
        if status != 0:
            raise ValueError(f"row {-1 - status}: a category code outside its column's look-up")
        return out


def load_walk(path: Path, source: Path = SOURCE) -> CompiledWalk | str:
    """The compiled walk at ``path`` if it was built from ``source``; else why it cannot serve."""
    if not path.exists():
        return f"no compiled walk at {path} (build it: python -m app.contract.walk_build)"
    try:
        walk = CompiledWalk(path)
    except (OSError, AttributeError) as exc:
        return f"the compiled walk at {path} cannot be loaded: {exc}"
    if walk.built_from() != source_digest(source):
        return f"the compiled walk at {path} was built from another walk.c (rebuild: python -m app.contract.walk_build)"
    return walk


@functools.cache
def compiled_walk() -> CompiledWalk | str:
    """This machine's compiled walk, loaded once per process; or why there is none (the numpy walk serves then)."""
    return load_walk(library_here())
