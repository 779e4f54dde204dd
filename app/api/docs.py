"""The interactive API docs, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, as FastAPI's own pages render them,
but with their script, stylesheet and favicon served by the server itself from the files of the ``fastapi-offline``
package (in the serving group, so in the image) instead of a CDN: they work where the server has no internet, and a
browser reading them asks no other host for anything.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
ASSETS_URL: Final = "/docs/assets"
# The files fastapi-offline ships (its wheel's package data): Swagger UI 5's bundle and stylesheet, ReDoc 2's
# standalone bundle and FastAPI's favicon.
SWAGGER_JS: Final = "swagger-ui-bundle.js"
SWAGGER_CSS: Final = "swagger-ui.css"
REDOC_JS: Final = "redoc.standalone.js"
FAVICON: Final = "favicon.png"
ASSETS: Final = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)
# The pages' Content-Security-Policy: the browser loads nothing from another host. ReDoc 2's side menu shows a logo
# from its vendor's CDN whatever its options (an <img>, hidden when it fails to load): this keeps it from being asked
# for. Inline script and style: FastAPI's pages start Swagger UI inline, both bundles inject their styles.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def assets_directory() -> Path:
    """The installed ``fastapi_offline/static`` directory (raises if the package or one of its files is missing)."""
    directory = Path(str(importlib.resources.files("fastapi_offline") / "static"))
    missing = [name for name in ASSETS if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"fastapi-offline's docs assets are missing from {directory}: {missing}")
    return directory


def own_host_only(page: HTMLResponse) -> HTMLResponse:
    """``page`` with ``CONTENT_SECURITY_POLICY``."""
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``DOCS_URL`` (and its OAuth2 redirect page) and ReDoc at ``REDOC_URL`` for the app's
    OpenAPI document, with their assets under ``ASSETS_URL``: what ``FastAPI(docs_url=..., redoc_url=...)`` serves,
    every URL a path on this server (under the request's ``root_path`` behind a prefixing proxy)."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        return  # no document, nothing to show (FastAPI's own docs are off then too)
    app.mount(ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return own_host_only(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
                swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
                swagger_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
                oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
                init_oauth=app.swagger_ui_init_oauth,
                # No validator badge calling validator.swagger.io (BaseLayout shows none; this says so for any layout).
                swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
            )
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return own_host_only(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
                redoc_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
                with_google_fonts=False,  # ReDoc falls back to the browser's own fonts
            )
        )

    async def oauth2_redirect(_: Request) -> HTMLResponse:
        return own_host_only(get_swagger_ui_oauth2_redirect_html())

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    if oauth2_redirect_url:
        app.add_route(oauth2_redirect_url, oauth2_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)
