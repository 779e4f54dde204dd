"""Dependencies shared by the routers, as ``Annotated`` aliases, the JSON response type and the JSON body reader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from app.model.schema import RequestError
from app.runtime.dataplane import DataPlane
from app.runtime.served_model import ServedModel
from app.runtime.state import ServingState


class JSON(JSONResponse):
    """A JSON response encoded with orjson (numpy arrays included)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def serving_state(request: Request) -> ServingState:
    """The app's serving state."""
    state: ServingState = request.app.state.serving
    return state


def data_plane(request: Request) -> DataPlane:
    """The app's data plane: every prediction goes through it."""
    plane: DataPlane = request.app.state.dataplane
    return plane


# The prediction routes call the functions above directly: FastAPI's dependency solving costs more per request
# than the whole floor endpoint. The other routes take the state and the model as dependencies, ``async`` ones, as
# FastAPI runs a plain ``def`` dependency on its thread pool.
async def _serving_state(request: Request) -> ServingState:
    return serving_state(request)


async def _served_model(state: Annotated[ServingState, Depends(_serving_state)]) -> ServedModel:
    return state.served()


State = Annotated[ServingState, Depends(_serving_state)]
Model = Annotated[ServedModel, Depends(_served_model)]


def _too_large(limit: int) -> RequestError:
    return RequestError(
        413, [{"loc": ["body"], "msg": f"body: larger than {limit} bytes (MAX_BODY_BYTES)", "type": "too_large"}]
    )


def is_json(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, any parameters (charset) aside."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json_body(
    request: Request,
    limit: int,
    media: Callable[[str | None], bool] = is_json,
    expected: str = "application/json",
) -> bytes:
    """The JSON request body, refused with a 413 as soon as it is known to exceed ``limit`` bytes.

    A content type ``media`` refuses (by default anything but JSON) is a 415 naming the ``expected`` one, before the
    body is read: a browser may POST ``text/plain`` across origins without a preflight, JSON needs one.

    A declared Content-Length over the limit is refused before anything is read; a body without one (chunked)
    is counted as it streams and refused at the first byte past the limit.
    """
    content_type = declared = None
    for name, value in request.scope["headers"]:  # the raw pairs: cheaper than building ``request.headers``
        if name == b"content-type" and content_type is None:  # the first, as ``request.headers.get`` gives
            content_type = value.decode("latin-1")
        elif name == b"content-length" and declared is None:
            declared = value.decode("latin-1")
    if not media(content_type):
        raise RequestError(
            415, [{"loc": ["header", "content-type"], "msg": f"content-type: must be {expected}", "type": "media"}]
        )
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, [{"loc": ["body"], "msg": "body: invalid Content-Length", "type": "bad_length"}])
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:  # the ASGI messages themselves (what ``request.stream()`` wraps in an async generator)
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
