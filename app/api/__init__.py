"""HTTP layer: one router per resource (``routes/``) and the dependencies they share (``deps``)."""
