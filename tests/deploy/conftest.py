"""The deploy tests read the Dagger module's constants (image name, user, paths) as tests/ci does."""

from __future__ import annotations

import tests.ci.conftest  # noqa: F401  (puts the Dagger module's source, ci/src, on sys.path)
