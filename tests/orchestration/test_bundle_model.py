"""The pyfunc model's code (``orchestration.bundle_model.CODE_FILES``) holds every module of ``app`` it can import.

A unit test (it reads repository files only); tests/integration/test_portable_model.py loads the registered model
in another directory, without this checkout on its path.
"""

from __future__ import annotations

import ast
from pathlib import Path

from app.contract.bundle import TRUSTED_TYPES
from orchestration import bundle_model

ROOT = Path(__file__).resolve().parents[2]


def project_imports(path: Path) -> set[str]:
    """The modules of ``app`` a file imports, at module level or inside functions (``TYPE_CHECKING`` too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # ``from app.x import module``
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "app" or name.startswith("app.")}


def files_of(module: str) -> set[str]:
    """The file of ``module`` (of the module holding it, for a name imported from one) and its packages'
    ``__init__.py`` files."""
    parts = module.split(".")
    while parts:
        for candidate in ("/".join(parts) + ".py", "/".join([*parts, "__init__.py"])):
            if (ROOT / candidate).is_file():
                return {"/".join([*parts[:i], "__init__.py"]) for i in range(1, len(parts))} | {candidate}
        parts = parts[:-1]
    raise AssertionError(f"{module} is no module of this repository")


def test_the_model_code_holds_every_module_it_imports() -> None:
    needed: set[str] = set()
    todo = [Path(bundle_model.__file__)]
    # the modules a bundle's skops files name: skops imports them when it loads the bundle
    todo += [ROOT / f for name in TRUSTED_TYPES if name.startswith("app.") for f in files_of(name)]
    while todo:
        path = todo.pop()
        for module in project_imports(path):
            for name in files_of(module) - needed:
                needed.add(name)
                todo.append(ROOT / name)
    needed |= {f for name in TRUSTED_TYPES if name.startswith("app.") for f in files_of(name)}
    assert needed == set(bundle_model.CODE_FILES)
