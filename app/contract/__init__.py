"""What training and serving agree on, and nothing else: the contract between ``orchestration/`` and ``app/``.

- ``bundle``: the bundle format (save, verify, load with trusted types only);
- ``features``: the feature transformer a bundle holds (it must import from the serving image);
- ``registry``: the MLflow registry tags that link a model version to its bundle, and the registry client;
- ``store``: the DVC store layout (publishing's work repository and remote, the bundle's directory hash);
- ``connection``: the connection settings for MLFLOW and the DVC remote, and the redaction of credentials;
- ``hashing`` and ``progress``: a file's digest, and the progress-line callback of long operations.

This package imports nothing else of the project (an import-linter contract in ``pyproject.toml``), so
training can depend on it without reaching into the server.
"""
