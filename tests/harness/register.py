"""Register the Dagger module as the engine's Python runtime does, with a recording client instead of an engine.

    python -m tests.harness.register    # prints the module's type definitions as JSON; exits 1 if they cannot be made

The engine starts the SDK's runtime with ``DAGGER_MAIN_OBJECT`` set to the main object's name (the module's name
from dagger.json in PascalCase) before anything imports ``dagger``; the runtime imports the module and calls
``Module.register()``, which turns every object, field, function and argument into type definitions
(``dag.type_def()``, ``dag.function()`` ...) and sends the result's ``id``. Here ``Context.execute`` records that
query instead of sending it, so every conversion the SDK makes on the way runs for real: a signature the SDK
cannot register (a union, a ``dict``, an unknown class) raises here as it would under ``dagger call``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]


def main_object_name() -> str:
    """The engine's main object name: the module's name in dagger.json, in PascalCase."""
    name = str(json.loads((REPO / "dagger.json").read_text())["name"])
    return "".join(part.capitalize() for part in name.replace("_", "-").split("-"))


def plain(value: Any) -> Any:
    """A recorded argument as JSON: lazy API objects as the selections that make them."""
    from dagger.client.base import Type

    if isinstance(value, Type):
        return [{"name": f.name, "args": {k: plain(v) for k, v in f.args.items()}} for f in value._ctx.selections]
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def register() -> list[dict[str, Any]]:
    """The query ``Module.register()`` sends, as selections (each argument object as its own selections)."""
    os.environ["DAGGER_MAIN_OBJECT"] = main_object_name()
    type_def_file = Path(tempfile.mkdtemp(prefix="dagger-register-")) / "module.json"
    os.environ["DAGGER_MODULE_FILE"] = str(type_def_file)
    sys.path.insert(0, str(REPO / "ci" / "src"))

    import anyio
    import flight_price.main as module
    from dagger.client._core import Context, Field

    sent: list[list[Field]] = []

    async def execute(ctx: Context, return_type: Any = None) -> Any:
        sent.append(list(ctx.selections))
        return "recorded-module-id"

    Context.execute = execute  # type: ignore[method-assign, assignment]
    anyio.run(module.FlightPrice.__dagger_module__.register)  # type: ignore[attr-defined]
    if json.loads(type_def_file.read_text()) != "recorded-module-id":
        raise RuntimeError("register() did not write the module's id where the engine reads it")
    [query] = sent
    return [{"name": f.name, "args": {k: plain(v) for k, v in f.args.items()}} for f in query]


def main() -> int:
    try:
        query = register()
    except Exception as error:  # the SDK's RegistrationError and TypeError: what `dagger call` would print
        print(f"registration failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    json.dump(query, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
