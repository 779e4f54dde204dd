"""Model delivery for the entrypoint: which bundle to serve, fetching it from the DVC remote, verifying it.

One module per step: ``resolve`` (the DVC hash to serve: a ``MODEL_HASH`` pin, or the registry's tag),
``pull`` (``dvc pull`` into ``MODEL_DIR`` as a child process with retries and the ``PULL_DEADLINE_S``
deadline), ``verify`` (the pulled directory's DVC hash and the bundle's content hash); ``failures`` names
every way delivery fails, with its exit code, and ``retry`` is the retry loop the network steps share.

Nothing heavy is imported at module level (DVC, scikit-learn, skops), so a bad setting fails in well under a
second.
"""
