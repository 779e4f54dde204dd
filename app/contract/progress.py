"""Progress of long operations (pull, push, publish): one human-readable line at a time."""

from __future__ import annotations

from collections.abc import Callable

Report = Callable[[str], None]


def quiet(_: str) -> None:
    """The default report: say nothing."""
