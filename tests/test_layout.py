"""``docs/architecture.md`` holds the one map of ``app/``: it lists exactly the Python modules and packages there.

A unit test (it reads repository files only).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
ARCHITECTURE: Final = ROOT / "docs" / "architecture.md"
SECTION: Final = "## The modules of `app/`"
# A table row's first cell naming a module (``app/x.py``) or a package (``app/x/``).
ROW: Final = re.compile(r"^\| `(app/(?:[\w/]+/|[\w/]+\.py)?)` \|", re.MULTILINE)


def modules_in_tree() -> list[str]:
    """Every module under ``app/`` as ``app/x.py``, every package as ``app/x/`` (its ``__init__.py``)."""
    names = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        names.append(relative.removesuffix("__init__.py") if path.name == "__init__.py" else relative)
    return sorted(names)


def modules_in_map() -> list[str]:
    text = ARCHITECTURE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return sorted(ROW.findall(text[start : end if end != -1 else None]))


def test_the_module_map_lists_exactly_the_modules_of_app() -> None:
    listed, present = modules_in_map(), modules_in_tree()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(present) - set(listed) == set(), "in app/ but not in docs/architecture.md's module map"
    assert set(listed) - set(present) == set(), "in docs/architecture.md's module map but not in app/"


def test_every_package_under_app_has_an_init() -> None:
    """A folder of modules without ``__init__.py`` would be a namespace package the map's check could miss."""
    folders = {path.parent for path in (ROOT / "app").rglob("*.py")}
    assert [folder for folder in folders if not (folder / "__init__.py").is_file()] == []
