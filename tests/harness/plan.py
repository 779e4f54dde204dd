"""Reading a Dagger pipeline without an engine.

The Python SDK builds every object lazily: a ``Container`` (or ``Directory``, ``Service``, ...) holds its
GraphQL query as the list of field selections in ``_ctx.selections`` (``dagger.client._core.Field``:
``type_name``, ``name``, ``args``), and argument objects (a source ``Directory``, a bound ``Service``, a
``Secret``) stay objects until the query is sent. A pipeline can therefore be read back step by step.
Functions that *run* something (``stdout``, ``publish``) go through ``Context.execute``; ``RecordingEngine``
stands in for the engine there: it records each query and answers with a placeholder.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from dagger import Container
from dagger.client._core import Context, Field
from dagger.client.base import Type


def steps(obj: Type) -> list[Field]:
    """The selections that define ``obj``, from the root query on."""
    return list(obj._ctx.selections)


def calls(obj: Type, name: str) -> list[dict[str, Any]]:
    """The arguments of every step of ``obj`` named ``name`` (GraphQL names: ``withExec``, ``from``, ...)."""
    return [step.args for step in steps(obj) if step.name == name]


def names(obj: Type) -> list[str]:
    return [step.name for step in steps(obj)]


def one(obj: Type, name: str, **match: Any) -> dict[str, Any]:
    """The arguments of the one step named ``name`` whose arguments include ``match``."""
    found = [args for args in calls(obj, name) if all(args.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one {name}{match}, found {found}"
    return found[0]


def env(obj: Type) -> dict[str, str]:
    """Plain environment variables ``obj``'s own steps set (later settings win)."""
    return {args["name"]: args["value"] for args in calls(obj, "withEnvVariable")}


def execs(obj: Type) -> list[list[str]]:
    return [list(args["args"]) for args in calls(obj, "withExec")]


def bound(container: Type, alias: str) -> Type:
    """The service ``container`` binds as ``alias``."""
    service = one(container, "withServiceBinding", alias=alias)["service"]
    assert isinstance(service, Type)
    return service


class RecordingEngine:
    """Records every query a function sends (``queries``) and answers it without running anything."""

    DIGEST = "sha256:" + "0" * 64

    def __init__(self) -> None:
        self.queries: list[list[Field]] = []

    async def execute(self, ctx: Context, return_type: Any = None) -> Any:
        self.queries.append(list(ctx.selections))
        last = ctx.selections[-1]
        if last.name == "publish":
            return f"{last.args['address']}@{self.DIGEST}"
        return "recorded" if return_type is str else None

    def sent(self, field_name: str) -> list[list[Field]]:
        """The recorded queries whose last selection is ``field_name``."""
        return [query for query in self.queries if query[-1].name == field_name]


@contextmanager
def recording_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingEngine]:
    engine = RecordingEngine()

    async def execute(ctx: Context, return_type: Any = None) -> Any:
        return await engine.execute(ctx, return_type)

    monkeypatch.setattr(Context, "execute", execute)
    yield engine


def container_of(query: list[Field]) -> Container:
    """The container a recorded query ran a field on (its selections minus the last)."""
    return Container(Context(selections=deque(query[:-1])))
