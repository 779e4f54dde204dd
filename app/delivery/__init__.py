"""Model delivery for the entrypoint: which bundle to serve, fetching it from the DVC remote, verifying it.

One module per step: ``resolve`` (the DVC hash to serve: a ``MODEL_HASH`` pin, or the registry's tag),
``pull`` (the bundle's objects read from the remote's DVC 3 layout by ``remote``, through botocore or from a
directory, each checked against its md5, into ``MODEL_DIR``, with retries and the ``PULL_DEADLINE_S``
deadline), ``verify`` (the pulled directory's DVC hash and the bundle's content hash), ``fetch`` (the three
under ``lock``, one delivery at a time per ``MODEL_DIR``); ``failures`` names every way delivery fails, with
its exit code, and ``retry`` is the retry loop the network steps share.

None of it imports DVC or its stack (``dvc``, ``dvc_data``, ``fsspec``, ``s3fs``, ``boto3``): the serving image
needs botocore and the standard library only (``tests/integration/test_pull.py`` checks the start-up's
modules). Nothing heavy is imported at module level (botocore, scikit-learn, skops), so a bad setting fails in
well under a second.
"""
