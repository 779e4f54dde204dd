"""Dependencies shared by the routers, as ``Annotated`` aliases, and the JSON response type."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from app.schema import RequestError
from app.served_model import ServedModel
from app.serving import ServingState


class JSON(JSONResponse):
    """A JSON response encoded with orjson (numpy arrays included)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class NotReadyError(Exception):
    """A prediction was asked for before the bundle is loaded (answered 503 with the reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def serving_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


def served_model(state: Annotated[ServingState, Depends(serving_state)]) -> ServedModel:
    """The model being served, captured once for the whole request, or a 503 saying why there is none."""
    if state.model is None:
        raise NotReadyError(state.reason)
    return state.model


State = Annotated[ServingState, Depends(serving_state)]
Model = Annotated[ServedModel, Depends(served_model)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``limit`` bytes.

    A declared Content-Length over the limit is refused before anything is read; a body without one (chunked)
    is counted as it streams and refused at the first byte past the limit.
    """
    too_large = RequestError(
        413, [{"loc": ["body"], "msg": f"body: larger than {limit} bytes (MAX_BODY_BYTES)", "type": "too_large"}]
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, [{"loc": ["body"], "msg": "body: invalid Content-Length", "type": "bad_length"}])
        if int(declared) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
