"""The OpenAPI document: the routes' own, completed by each protocol with the request models of the bundle loaded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.runtime.served_model import ServedModel

# A protocol's part of the document: what it adds for the model served (None until a bundle is loaded).
Completion = Callable[[dict[str, Any], ServedModel | None], None]


def request_body(model_name: str, example: object | None = None) -> dict[str, Any]:
    """The OpenAPI request body of a route whose JSON body is the request model ``model_name``."""
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{model_name}"}}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


def component_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """The document's ``components.schemas``, made if missing."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    return schemas


def openapi_document(app: FastAPI, model: ServedModel | None, protocols: Sequence[Completion]) -> dict[str, Any]:
    """The document for ``model``'s request schemas and example, each protocol's completion in turn."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for complete in protocols:
        complete(document, model)
    return document
