"""The prediction service: bundle format, feature transformer, settings, server and container entrypoint.

Everything the serving image needs lives here and imports only the ``serve`` dependency group.
"""
