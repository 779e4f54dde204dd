"""Dagger's upload filter for a contextual directory (``tests/harness/context.py``), on trees made here."""

from __future__ import annotations

from pathlib import Path

from tests.harness.context import uploaded
from tests.harness.warm import REPO, source_ignore


def tree(root: Path, *files: str) -> Path:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def test_star_excludes_everything_and_bang_re_includes_a_directory_with_all_it_holds(tmp_path: Path) -> None:
    root = tree(tmp_path, "app/a.py", "app/sub/b.py", "other/c.py", "top.txt", ".git/HEAD", ".env")
    assert uploaded(root, ["*", "!app/"]) == ["app", "app/a.py", "app/sub", "app/sub/b.py"]


def test_a_nested_re_inclusion_is_found_under_an_excluded_parent(tmp_path: Path) -> None:
    root = tree(tmp_path, "ci/src/m/main.py", "ci/pyproject.toml", "ci/.gitignore", "ci/sdk/x.py")
    # the walk enters ci/ because "!ci/src" starts with "ci/"; ci itself appears only as the parent
    assert uploaded(root, ["*", "!ci/src/"]) == ["ci", "ci/src", "ci/src/m", "ci/src/m/main.py"]


def test_later_patterns_win_and_double_star_matches_at_any_depth(tmp_path: Path) -> None:
    root = tree(tmp_path, "app/x.env", "app/__pycache__/a.pyc", "__pycache__/b.pyc", "app/keep.py", "app/d/c.pyc")
    assert uploaded(root, ["**/__pycache__", "**/*.pyc", "app/x.env"]) == ["app", "app/d", "app/keep.py"]
    assert "app/x.env" in uploaded(root, ["app/x.env", "!app/x.env"])
    assert "app/x.env" not in uploaded(root, ["!app/x.env", "app/x.env"])


def test_gitignore_is_not_applied(tmp_path: Path) -> None:
    root = tree(tmp_path, ".gitignore", "bench/.venvs/peer/bin/python", "bench/serve.py")
    (root / ".gitignore").write_text("/bench/.venvs/\n")
    assert "bench/.venvs/peer/bin/python" in uploaded(root, ["*", "!bench/"])
    assert uploaded(root, ["*", "!bench/", "bench/.venvs/"]) == ["bench", "bench/serve.py"]


def test_the_modules_source_keeps_what_the_stages_need_and_nothing_stray() -> None:
    kept = set(uploaded(REPO, source_ignore()))
    assert {
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "dagger.json",
        "app/main.py",
        "ci/src/flight_price/main.py",
    } <= kept
    assert not {path.split("/")[0] for path in kept} & {".git", ".venv", ".ci", ".mypy_cache"}
    assert {path for path in kept if path.startswith(".github")} == {
        ".github",
        ".github/workflows",
        ".github/workflows/ci.yml",
    }
    assert not [path for path in kept if "__pycache__" in path or path.startswith("bench/.venvs")]
