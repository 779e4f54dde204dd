"""The tooling the tests use, not tests: the Dagger replay on dockerd and the engine it runs on, stand-in images,
the local registry, service starters, the Airflow stacks, the plan reader and loaders the tests share, and the
scheduling of the suite's two streams over pytest-xdist's workers."""
