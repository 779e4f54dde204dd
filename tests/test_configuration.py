"""The environment contract is named the same everywhere: settings model, example env file, docs/configuration.md.

Unit tests (they read repository files only), so they run in the Dagger module's checks too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from app.settings import env_names

ROOT: Final = Path(__file__).resolve().parents[1]


def test_env_example_documents_exactly_the_settings() -> None:
    example = (ROOT / "app" / "prediction.env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    assert documented == env_names()


def test_configuration_reference_lists_exactly_the_settings() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    section = reference.split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE))
    assert listed == env_names()
