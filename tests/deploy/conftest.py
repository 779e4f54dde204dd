"""The deploy tests read the Dagger module's constants (image name, user, paths) as tests/ci does, and the
read-only run reuses the recipe test's fixtures: the image's file tree built on the host, the seed, the mocks."""

from __future__ import annotations

import tests.ci.conftest  # noqa: F401  (puts the Dagger module's source, ci/src, on sys.path)
from tests.ci.test_recipe import image_tree, mocks, seeded  # noqa: F401  (fixtures, found by name)
