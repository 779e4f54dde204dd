"""Debian's ``chromium``, headless and cut off from the network, rendering a page of a server on 127.0.0.1.

Chromium may reach only the server's own port: every other URL goes to a proxy on a loopback port that refuses
connections (a socket bound but not listening), and host names do not resolve. It writes the rendered DOM, a
screenshot and its network log, from which ``Rendered.page_requests`` are the requests the page made (the
document and what it loaded), apart from those of the browser itself (its updater, account and autofill
services, all refused by the dead proxy).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from tests.harness.services import LOOPBACK

CHROMIUM: Final = "chromium"
INSTALL: Final = "apt-get install -y --no-install-recommends chromium"
WINDOW: Final = (1280, 1600)
VIRTUAL_TIME_MS: Final = 15_000  # virtual time the page gets to render (passes faster than real time when idle)
TIMEOUT_S: Final = 90.0
NO_ORIGIN: Final = "not an origin"  # the network log's initiator of a request no page made


@dataclass(frozen=True)
class Rendered:
    dom: str
    screenshot: Path
    page_requests: list[str]  # the URLs the page asked for, in order, the document first
    browser_requests: list[str]  # the URLs Chromium asked for on its own account
    log: Path


def chromium() -> str:
    """The path of Debian's ``chromium`` (fails, never skips, when it is missing)."""
    path = shutil.which(CHROMIUM)
    if path is None:
        raise RuntimeError(f"Debian's chromium is not installed (`{INSTALL}`, as root): the browser tests need it")
    return path


def version() -> str:
    return subprocess.run([chromium(), "--version"], capture_output=True, text=True, timeout=30, check=True).stdout


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


def render(url: str, out: Path, name: str) -> Rendered:
    """Render ``url`` (``http://127.0.0.1:<port>/...``) in headless Chromium; its files go to ``out/name.*``."""
    origin = urlsplit(url)
    if origin.hostname != LOOPBACK or origin.port is None:
        raise ValueError(f"only a server on {LOOPBACK}:<port> is rendered: {url}")
    screenshot, netlog, log = out / f"{name}.png", out / f"{name}.netlog.json", out / f"{name}.chromium.log"
    with dead_port() as proxy, log.open("wb") as stderr:
        args = [
            chromium(),
            "--headless",
            "--no-sandbox",  # as root
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={out / f'{name}.profile'}",
            # Nothing but the server: every other URL to the dead proxy (loopback included), no name resolves.
            f"--proxy-server=http://{LOOPBACK}:{proxy}",
            f"--proxy-bypass-list=<-loopback>;{origin.netloc}",
            f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {LOOPBACK}",
            f"--log-net-log={netlog}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        try:
            dom, _ = process.communicate(timeout=TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the browser, its zygote, renderers and helpers
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
    page, browser = requests_in(netlog, url)
    return Rendered(dom.decode(), screenshot, page, browser, log)


def requests_in(netlog: Path, url: str) -> tuple[list[str], list[str]]:
    """The URLs of the requests in Chromium's network log: those of the page (``url`` itself and every request an
    origin initiated, the server's or any other's), and the browser's own (initiated by no origin)."""
    document = json.loads(netlog.read_text())
    start_job = document["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    page: list[str] = []
    browser: list[str] = []
    for event in document["events"]:
        params = event.get("params", {})
        if event["type"] != start_job or "url" not in params:
            continue
        initiator = params.get("initiator", NO_ORIGIN)
        if params["url"] == url or initiator != NO_ORIGIN:
            page.append(params["url"])
        else:
            browser.append(params["url"])
    return page, browser
