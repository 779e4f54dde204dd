"""The interactive API docs, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, rendered by a real headless browser
(Debian's ``chromium``) from a real uvicorn process serving a trained bundle, with no network but the server's own
port: the pages, their scripts, stylesheet and favicon all come from the server (``app/api/docs.py``), no CDN.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.docs import (
    ASSETS,
    ASSETS_URL,
    CONTENT_SECURITY_POLICY,
    FAVICON,
    REDOC_JS,
    SWAGGER_CSS,
    SWAGGER_JS,
    assets_directory,
)
from app.api.server import create_app
from app.contract.bundle import Bundle, load_bundle
from tests.harness import browser
from tests.harness.services import BIN, LOOPBACK, free_port, running
from tests.harness.serving import settings_for
from tests.smoke.checker import REFERENCE, Report, check_docs

pytestmark = pytest.mark.integration

METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# An outside URL anywhere in a page as served (its markup and inline script).
OUTSIDE_URL: Final = re.compile(r"https?://[^\s\"'<>]*|//[\w-]+\.[\w.-]+")


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The container's app (``app.main:app``) under uvicorn on 127.0.0.1, its bundle loaded: its base URL."""
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    args = [str(BIN / "uvicorn"), "app.main:app", "--host", LOOPBACK, "--port", str(port)]
    log = tmp_path_factory.mktemp("docs-server") / "server.log"
    with running(args, f"{base}/health/ready", env={"BUNDLE_DIR": str(bundle_dir), "MODEL_VERSION": "3"}, log=log):
        yield base


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


def get(url: str) -> tuple[str, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode(), dict(response.headers)


def operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's operations, each with its ``path`` and ``method``."""
    return [
        {**operation, "path": path, "method": method}
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def assert_only_the_server(rendered: browser.Rendered, server: str, *assets: str) -> None:
    """The page asked the server, and nothing else, for itself and ``assets`` (paths)."""
    outside = [url for url in rendered.page_requests if not url.startswith(f"{server}/")]
    assert outside == [], f"the page asked other hosts for {outside}"
    asked = {url.removeprefix(server) for url in rendered.page_requests}
    assert {*assets, "/openapi.json"} <= asked, f"the page asked for {sorted(asked)}"


def assert_screenshot(path: Path) -> None:
    """A PNG of the window's size showing more than a blank page."""
    assert path.is_file() and path.stat().st_size > 20_000, f"{path}: {path.stat().st_size if path.exists() else 0} B"
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", browser.WINDOW)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "a page of a few flat colours: nothing rendered"
        darkest, lightest = image.convert("L").getextrema()  # one band: (min, max)
        assert isinstance(darkest, int) and isinstance(lightest, int) and lightest - darkest > 128, "no text"


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_pages_reference_only_the_server(server: str, page: str) -> None:
    html, headers = get(f"{server}{page}")
    assert OUTSIDE_URL.search(html) is None, f"an outside URL in {page}: {OUTSIDE_URL.findall(html)}"
    references = REFERENCE.findall(html)
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
    if page != "/docs/oauth2-redirect":
        assert {f"{ASSETS_URL}/{FAVICON}"} < set(references)
    # and a browser is told to load nothing from anywhere else
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_behind_a_prefixing_proxy_every_url_carries_the_prefix(bundle_dir: Path) -> None:
    """``uvicorn --root-path /prices`` behind a proxy that strips it: the pages point under the prefix."""
    client = TestClient(create_app(settings_for(bundle_dir), configure_logs=False), root_path="/prices")
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        references = REFERENCE.findall(html)
        assert references and all(ref.startswith(f"/prices{ASSETS_URL}/") for ref in references), references
        assert "/prices/openapi.json" in html
    assert client.get(f"/prices{ASSETS_URL}/{FAVICON}").status_code == 200


def test_the_assets_are_fastapi_offlines_files(server: str) -> None:
    directory = assets_directory()
    for asset in ASSETS:
        with urllib.request.urlopen(f"{server}{ASSETS_URL}/{asset}", timeout=10) as response:
            assert response.status == 200 and response.read() == (directory / asset).read_bytes(), asset
    # what the smoke checker verifies on the serving image itself
    report = Report()
    check_docs(server, report)
    assert report.failures == 0 and len(report.lines) == 2, report.lines


def test_swagger_ui_renders_every_operation_with_no_network(server: str, tmp_path: Path) -> None:
    document = json.loads(get(f"{server}/openapi.json")[0])
    rendered = browser.render(f"{server}/docs", tmp_path, "docs")

    # one operation block per operation of the document, under its tag, showing its path
    blocks = set(re.findall(r'<div class="opblock opblock-(\w+)[^"]*" id="operations-([^"]+)"', rendered.dom))
    expected = {(op["method"], f"{op['tags'][0]}-{op['operationId']}") for op in operations(document)}
    assert blocks == expected, f"rendered {sorted(blocks)}; chromium's log: {rendered.log}"
    shown = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', rendered.dom))
    assert shown == set(document["paths"]) and {"/predict", "/predict/batch", "/v2/models/{name}/infer"} <= shown
    assert_only_the_server(rendered, server, f"{ASSETS_URL}/{SWAGGER_JS}", f"{ASSETS_URL}/{SWAGGER_CSS}")
    assert_screenshot(rendered.screenshot)


def test_redoc_renders_every_operation_with_no_network(server: str, bundle: Bundle, tmp_path: Path) -> None:
    document = json.loads(get(f"{server}/openapi.json")[0])
    rendered = browser.render(f"{server}/redoc", tmp_path, "redoc")

    sections = set(re.findall(r'id="operation/([^"]+)"', rendered.dom))
    assert sections == {op["operationId"] for op in operations(document)}, f"chromium's log: {rendered.log}"
    # the loaded bundle's request schema, one field per feature
    for feature in bundle.metadata.features:
        assert f">{feature.name}<" in rendered.dom, feature.name
    assert_only_the_server(rendered, server, f"{ASSETS_URL}/{REDOC_JS}")
    assert_screenshot(rendered.screenshot)
