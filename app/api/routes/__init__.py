"""Routers: the records protocol (``predict``), the Open Inference Protocol (``v2``), health, model, metrics."""
