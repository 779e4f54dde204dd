"""The serving form's compiled walk: built by zig cc for every architecture, loaded only if built from this walk.c,
refusing what the numpy walk cannot predict either, and the numpy walk serving when it is absent."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import app.contract.serving_form
from app.contract.bundle import load_serving_bundle
from app.contract.serving_form import ServingForm, ServingFormError, probe_columns
from app.contract.walk_build import SOURCE, TARGETS, WalkBuildError, build, library_here, library_name
from app.contract.walk_kernel import HELD_GIL_ROWS, CompiledWalk, compiled_walk, load_walk

ELF_MACHINES = {"x86_64": b"\x3e\x00", "aarch64": b"\xb7\x00"}  # e_machine, little-endian, at offset 18


@pytest.fixture(scope="module")
def form(bundle_dir: Path) -> ServingForm:
    return load_serving_bundle(bundle_dir).form


def test_one_build_writes_a_library_for_every_architecture(tmp_path: Path) -> None:
    written = build(tmp_path)
    assert sorted(path.name for path in written) == sorted(library_name(m) for m in TARGETS)
    for machine in TARGETS:
        data = (tmp_path / library_name(machine)).read_bytes()
        assert data[:4] == b"\x7fELF" and data[18:20] == ELF_MACHINES[machine]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial file left


def test_the_command_line_builds_and_says_where(tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "app.contract.walk_build", "--output-dir", str(tmp_path), "--machine", "aarch64"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert f"wrote {tmp_path / library_name('aarch64')}" in ran.stdout
    assert [p.name for p in tmp_path.iterdir()] == [library_name("aarch64")]


def test_an_unknown_architecture_or_a_failing_compile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WalkBuildError, match="no zig target for sparc64"):
        build(tmp_path, ("sparc64",))
    broken = tmp_path / "walk.c"
    broken.write_text(SOURCE.read_text() + "\nthis is not C;\n")
    with pytest.raises(WalkBuildError, match=r"zig cc for x86_64 failed: .*error"):
        build(tmp_path, ("x86_64",), source=broken)
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob(".*"))


def test_this_machine_loads_the_library_the_suite_built() -> None:
    walk = compiled_walk()
    assert isinstance(walk, CompiledWalk), walk
    assert walk.path == library_here() == SOURCE.with_name(library_name(platform.machine()))


def test_a_library_built_from_another_walk_c_is_not_used(tmp_path: Path) -> None:
    edited = tmp_path / "walk.c"
    edited.write_text(SOURCE.read_text() + "\n/* edited */\n")
    [library] = build(tmp_path, (platform.machine(),), source=edited)
    assert isinstance(load_walk(library, edited), CompiledWalk)
    reason = load_walk(library)  # against the walk.c this server ships
    assert isinstance(reason, str) and "built from another walk.c" in reason


def test_a_missing_or_unloadable_library_says_why(tmp_path: Path) -> None:
    missing = load_walk(tmp_path / "walk-x86_64.so")
    assert isinstance(missing, str) and "no compiled walk at" in missing and "app.contract.walk_build" in missing
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a library")
    unloadable = load_walk(junk)
    assert isinstance(unloadable, str) and "cannot be loaded" in unloadable


def test_without_the_library_the_numpy_walk_serves_unless_the_compiled_one_is_required(
    form: ServingForm, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "no compiled walk at /nowhere (build it: python -m app.contract.walk_build)"
    monkeypatch.setattr(app.contract.serving_form, "compiled_walk", lambda: reason)
    rebuilt = ServingForm(form.encoding, form.columns, form.reachable, form.leaf_values, form.baseline)
    assert (rebuilt.walk, rebuilt.walk_note) == ("numpy", reason)
    with pytest.raises(ServingFormError, match="no compiled walk at /nowhere"):
        form.using("compiled")
    with pytest.raises(ValueError, match="walk 'fast'"):
        form.using("fast")


@pytest.mark.parametrize("rows", [1, HELD_GIL_ROWS, HELD_GIL_ROWS + 1, 3000])
def test_both_walks_refuse_a_category_code_outside_the_vocabulary(
    form: ServingForm, bundle_dir: Path, rows: int
) -> None:
    """Not a request's doing (unknown categories encode as NaN), but nothing is read outside the tables."""
    metadata = load_serving_bundle(bundle_dir).metadata
    matrix = form.encoding.transform(probe_columns(metadata, rows, seed=3))
    column = len(form.encoding.numeric)  # the first categorical column
    matrix[-1, column] = 10_000.0
    with pytest.raises(ValueError, match=f"row {rows - 1}: a category code outside"):
        form.predict_encoded(matrix)
    with pytest.raises(IndexError):
        form.using("numpy").predict_encoded(matrix)


def test_the_walks_agree_on_an_empty_and_a_non_contiguous_matrix(form: ServingForm, bundle_dir: Path) -> None:
    metadata = load_serving_bundle(bundle_dir).metadata
    matrix = form.encoding.transform(probe_columns(metadata, 200, seed=4))
    assert form.predict_encoded(matrix[:0]).shape == (0,)
    every_other = matrix[::2]
    assert not every_other.flags.c_contiguous
    assert np.array_equal(form.predict_encoded(every_other), form.using("numpy").predict_encoded(every_other))
