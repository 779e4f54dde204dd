"""The OpenAPI document: the routes' own, plus the request models of the bundle actually loaded."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.routes.predict import request_bodies
from app.api.routes.v2 import document_v2
from app.model.schema import BATCH_MODEL, RECORD_MODEL
from app.runtime.served_model import ServedModel

NOT_LOADED: dict[str, Any] = {"type": "object", "description": "Known once the bundle is loaded; see /health/ready."}


def openapi_document(app: FastAPI, model: ServedModel | None) -> dict[str, Any]:
    """The document for ``model``'s request schema and example (placeholders until a bundle is loaded)."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    document_v2(document, model, app.state.serving.settings.model_name)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if model is None:
        schemas.update({RECORD_MODEL: NOT_LOADED, BATCH_MODEL: NOT_LOADED})
        return document
    for request_model in (model.schema.record_model, model.schema.batch_model):
        schema = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[request_model.__name__] = schema
    for path, body in request_bodies(model.bundle.metadata.example).items():
        document["paths"][path]["post"]["requestBody"] = body
    return document
