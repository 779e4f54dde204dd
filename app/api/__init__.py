"""The HTTP layer: the app's assembly (``server``), its middleware, one router per resource (``routes/``: each protocol
decodes requests and encodes answers around ``app.runtime.dataplane``), and the one error renderer (``errors``)."""
