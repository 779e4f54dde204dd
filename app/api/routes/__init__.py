"""Routers: prediction, health, model, metrics."""
