"""Hostile clients against a real server (``python -m app.entrypoint`` on 127.0.0.1): huge and many headers, slow
headers, slow and unfinished bodies, error amplification and a thousand connections at once.

Throughout each attack a watcher samples the worker's RSS and asks ``/health/live`` on a fresh connection every
50 ms, as a kubelet would, while a normal client keeps predicting. Each test checks that the worker's growth stays
within half of the Deployment's memory headroom over what it uses idle (``RSS_BUDGET``), that ``/health/live``
answered every time within 100 ms, that nothing answered 5xx but 503 with ``Retry-After``, and that the attack was
refused the way ``app.api.limits`` and ``app.model.schema`` say. Every attack is bounded in connections and time.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from app.contract.bundle import Bundle, load_bundle
from tests.harness.manifests import APP_NAME, KUSTOMIZATION_DIR, load_documents, named
from tests.harness.services import LOOPBACK, free_port, trickling_server, wait_http
from tests.harness.streams import wait_for_quiet

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S: Final = 2.0
BODY_TIMEOUT_S: Final = 3.0
DRAIN_TIMEOUT_S: Final = 2
MAX_BODY_BYTES: Final = 4_000_000  # the default
IN_FLIGHT: Final = 16_000_000  # the default MAX_BODY_BYTES_IN_FLIGHT
LIVE_WITHIN_S: Final = 0.1
MIB: Final = 1024 * 1024


def memory_limit_bytes() -> int:
    """The serving container's memory limit in the Deployment (``768Mi``)."""
    (deployment,) = load_documents(KUSTOMIZATION_DIR / "deployment.yaml")
    container = named(deployment["spec"]["template"]["spec"]["containers"], APP_NAME)
    limit = str(container["resources"]["limits"]["memory"])
    assert limit.endswith("Mi"), limit
    return int(limit.removesuffix("Mi")) * MIB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    bundle: Bundle

    @property
    def pid(self) -> int:
        return self.process.pid

    def record(self) -> bytes:
        return json.dumps(self.bundle.metadata.example).encode()


def start_server(bundle_dir: Path, log: Path, **env: str) -> Server:
    port = free_port()
    environment = {
        **os.environ,
        "BUNDLE_DIR": str(bundle_dir),
        "HOST": LOOPBACK,
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        **env,
    }
    for name in ("MLFLOW_TRACKING_URI", "DVC_REMOTE_URL", "MODEL_HASH", "MODEL_VERSION"):
        environment.pop(name, None)
    out = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.entrypoint"],
        env=environment,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_http(f"{url}/health/ready", 60, process)
    except BaseException:
        process.kill()
        raise
    return Server(url, port, process, log, load_bundle(bundle_dir))


@pytest.fixture(scope="module", autouse=True)
def quiet_machine(request: pytest.FixtureRequest) -> None:
    """These tests end the engine stream (``tests.harness.streams``): they start once the other worker is done."""
    wait_for_quiet(request.config)


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(bundle_dir, tmp_path_factory.mktemp("hostile") / "server.log")
    try:
        yield started
    finally:
        if started.process.poll() is None:
            os.killpg(started.pid, signal.SIGKILL)
            started.process.wait(10)


def request(server: Server, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@dataclass
class Watch:
    """What the watcher and the normal client saw during an attack."""

    idle_rss: int
    peak_rss: int = 0
    live_slowest_s: float = 0.0
    live_failures: list[str] = field(default_factory=list)
    answers: dict[int, int] = field(default_factory=dict)  # the normal client's statuses
    unexplained: list[str] = field(default_factory=list)  # 5xx but a 503 with Retry-After

    def check(self, limit: int) -> None:
        growth, allowed = self.peak_rss - self.idle_rss, (limit - self.idle_rss) // 2
        print(  # the figures docs/configuration.md quotes
            f"RSS idle {self.idle_rss / MIB:.0f} MiB, peak {self.peak_rss / MIB:.0f} MiB (allowed growth "
            f"{allowed / MIB:.0f} MiB); /health/live slowest {self.live_slowest_s * 1000:.1f} ms; "
            f"normal client {self.answers}"
        )
        assert growth <= allowed, (
            f"RSS grew {growth / MIB:.0f} MiB over {self.idle_rss / MIB:.0f} idle (allowed {allowed / MIB:.0f})"
        )
        assert not self.live_failures, self.live_failures[:5]
        assert self.live_slowest_s < LIVE_WITHIN_S, f"/health/live took {self.live_slowest_s * 1000:.0f} ms"
        assert not self.unexplained, self.unexplained[:5]
        assert self.answers.get(200), f"the normal client got no answer: {self.answers}"


# The kubelet's probe, in a process of its own (the attack's threads in the test process must not slow it): asks
# /health/live on a fresh connection every 50 ms until its stdin closes, then prints the slowest answer and failures.
PROBE: Final = """
import http.client, json, select, sys, time
port, slowest, failures, probes = int(sys.argv[1]), 0.0, [], 0
print("probing", flush=True)
while not select.select([sys.stdin], [], [], 0.05)[0]:
    began = time.monotonic()
    try:
        connection = http.client.HTTPConnection(sys.argv[2], port, timeout=10)
        connection.request("GET", "/health/live")
        status = connection.getresponse().status
        connection.close()
        if status != 200:
            failures.append(f"status {status}")
    except OSError as exc:
        failures.append(repr(exc))
    slowest, probes = max(slowest, time.monotonic() - began), probes + 1
print(json.dumps({"slowest": slowest, "failures": failures, "probes": probes}))
"""


@contextmanager
def watched(server: Server) -> Iterator[Watch]:
    """Sample RSS every 20 ms, probe /health/live every 50 ms (``PROBE``) and predict one record at a time, until
    the block ends."""
    request(server, "POST", "/predict", server.record())  # warm
    watch = Watch(idle_rss=rss_bytes(server.pid))
    stop = threading.Event()
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(server.port), LOOPBACK], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )

    assert probe.stdout is not None and probe.stdout.readline() == b"probing\n"

    def sample() -> None:
        while not stop.is_set():
            watch.peak_rss = max(watch.peak_rss, rss_bytes(server.pid))
            stop.wait(0.02)

    def predict() -> None:
        while not stop.is_set():
            try:
                status, headers, body = request(server, "POST", "/predict", server.record())
            except OSError as exc:
                watch.unexplained.append(f"normal client: {exc!r}")
                continue
            watch.answers[status] = watch.answers.get(status, 0) + 1
            if status >= 500 and not (status == 503 and "retry-after" in headers):
                watch.unexplained.append(f"normal client: {status} {body[:200]!r}")
            stop.wait(0.02)

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=predict, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield watch
    finally:
        time.sleep(0.2)  # a few probes after the attack, however short it was
        stop.set()
        for thread in threads:
            thread.join(15)
        out, _ = probe.communicate(timeout=15)  # closes its stdin: it stops
        probed = json.loads(out)
        watch.live_slowest_s, watch.live_failures = probed["slowest"], probed["failures"]
        assert probed["probes"] >= 3, probed


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def answer_of(sock: socket.socket, timeout: float) -> tuple[int | None, bytes]:
    """The status the server wrote on ``sock`` (None if it closed without one, or wrote nothing in time)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        if not data:
            return None, b""
    except ConnectionResetError:
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, data
    return int(data[9:12]), data


def head(path: str, length: int | None = None, extra: bytes = b"") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {LOOPBACK}", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n").encode() + extra + b"\r\n"


def test_huge_headers_are_refused_431_without_being_held(server: Server) -> None:
    limit = memory_limit_bytes()
    with watched(server) as watch:
        sockets = [connect(server) for _ in range(8)]
        chunk = b"a" * 65536
        sent = [0] * len(sockets)
        for sock in sockets:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(60 * 16):  # up to 60 MB each, interleaved: the server refuses each long before
            for i, sock in enumerate(sockets):
                if sent[i] >= 0:
                    try:
                        sock.sendall(chunk)
                        sent[i] += len(chunk)
                    except OSError:
                        sent[i] = -1
            if all(s < 0 for s in sent):
                break
        statuses = [answer_of(sock, 5) for sock in sockets]
        for sock in sockets:
            sock.close()
        many = connect(server)
        many.sendall(
            b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"
        )
        too_many = answer_of(many, 5)
        many.close()
    assert [status for status, _ in statuses] == [431] * 8, statuses
    assert all(s < 0 for s in sent), "a client could send a 60 MB header"
    assert b"16384 bytes" in statuses[0][1]
    assert too_many[0] == 431 and b"more than 100 headers" in too_many[1]
    watch.check(limit)


def test_slow_headers_slow_bodies_and_idle_connections_are_closed_in_time(server: Server) -> None:
    """300 slow-header, 300 slow-body and 400 idle connections: 1,000 at once."""
    limit = memory_limit_bytes()
    with watched(server) as watch:
        began = time.monotonic()
        slow_headers = [connect(server) for _ in range(300)]
        slow_bodies = [connect(server) for _ in range(300)]
        idle = [connect(server) for _ in range(400)]
        for sock in slow_bodies:
            sock.sendall(head("/predict", 1000) + b"{")
        trickle = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64
        for byte in range(int(HEADER_TIMEOUT_S * 4)):  # a byte every 0.25 s: never done within the timeout
            for sock in slow_headers:
                with suppress(OSError):
                    sock.sendall(trickle[byte : byte + 1])
            for sock in slow_bodies:
                with suppress(OSError):
                    sock.sendall(b" ")
            time.sleep(0.25)
        deadline = began + BODY_TIMEOUT_S + 5
        header_answers = [answer_of(sock, max(deadline - time.monotonic(), 0.1))[0] for sock in slow_headers]
        body_answers = [answer_of(sock, max(deadline - time.monotonic(), 0.1))[0] for sock in slow_bodies]
        idle_answers = [answer_of(sock, max(deadline - time.monotonic(), 0.1)) for sock in idle]
        closed_after = time.monotonic() - began
        for sock in [*slow_headers, *slow_bodies, *idle]:
            sock.close()
    assert header_answers == [408] * 300, sorted(set(map(str, header_answers)))
    assert body_answers == [408] * 300, sorted(set(map(str, body_answers)))
    assert idle_answers == [(None, b"")] * 400  # closed without an answer
    assert closed_after < BODY_TIMEOUT_S + 5
    watch.check(limit)


def test_unfinished_bodies_get_503_before_reading_once_the_budget_is_spent(server: Server) -> None:
    """150 clients each send 3,499,999 of a declared 3,500,000 bytes and stop."""
    limit = memory_limit_bytes()
    declared = 3_500_000
    with watched(server) as watch:
        clients = [connect(server) for _ in range(150)]
        refused_at_once, stalled = [], []
        for sock in clients:
            sock.sendall(head("/predict/batch", declared))
            status, data = answer_of(sock, 0.3)  # a refusal comes before any of the body is sent
            if status is not None:
                refused_at_once.append((status, data))
                continue
            sock.sendall(b"{" + b" " * (declared - 2))
            stalled.append(sock)
        stalled_answers = [answer_of(sock, BODY_TIMEOUT_S + 5)[0] for sock in stalled]
        for sock in clients:
            sock.close()
    admitted = IN_FLIGHT // MAX_BODY_BYTES  # each reserves min(declared, MAX_BODY_BYTES)
    assert len(stalled) <= admitted, f"{len(stalled)} unfinished bodies were read at once"
    assert stalled_answers == [408] * len(stalled)
    assert len(refused_at_once) == 150 - len(stalled)
    assert all(status == 503 and b"retry-after: 1" in data.lower() for status, data in refused_at_once)
    assert b"MAX_BODY_BYTES_IN_FLIGHT" in refused_at_once[0][1]
    watch.check(limit)


def test_error_amplification_is_bounded(server: Server) -> None:
    """Bodies of up to 3.5 MB whose every key or value is an error, four at a time on every prediction route."""
    limit = memory_limit_bytes()
    compact = (",", ":")
    keys = json.dumps({f"k{i}": 1 for i in range(300_000)}, separators=compact).encode()
    bad_records = json.dumps(
        {"records": [{name: "x" for name in server.bundle.metadata.example}] * 1000}, separators=compact
    ).encode()
    v2_values = json.dumps(
        {"inputs": [{"name": "time", "shape": [600_000], "datatype": "FP64", "data": [1] * 600_000}]},
        separators=compact,
    ).encode()
    assert max(len(keys), len(bad_records), len(v2_values)) < MAX_BODY_BYTES
    cases = [  # four at a time of each body the finding names; one of each legit-shaped body of maximal errors
        *[("/predict", keys), ("/predict/batch", keys), ("/v2/models/flight-price/infer", keys)] * 4,
        ("/predict/batch", bad_records),
        ("/v2/models/flight-price/infer", v2_values),
    ]
    answers: list[tuple[str, int, bytes, float]] = []

    def send(path: str, body: bytes) -> None:
        began = time.monotonic()
        status, _, answer = request(server, "POST", path, body)
        answers.append((path, status, answer, time.monotonic() - began))

    with watched(server) as watch:
        for _ in range(3):
            threads = [threading.Thread(target=send, args=case) for case in cases]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    assert len(answers) == 3 * len(cases)
    for path, status, answer, _ in answers:  # refused, or shed by the body budget before being read
        assert status in (400 if path.startswith("/v2") else 422, 503), (path, status, answer[:300])
        assert len(answer) < 8192, (path, len(answer))
    for path, body in cases:  # each body was read and refused at least once
        assert any(p == path and a != b"" and s != 503 for p, s, a, _ in answers if len(body) > 0), path
    listed = [json.loads(a) for p, _, a, _ in answers if p == "/predict/batch" and b"more_errors" in a]
    assert listed and all(len(body["detail"]) == 20 and body["more_errors"] > 0 for body in listed)
    watch.check(limit)


def test_a_drain_timeout_closes_an_unfinished_request_with_503_not_500(bundle_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    started = start_server(bundle_dir, log, BODY_TIMEOUT_S="60")
    try:
        sock = connect(started)
        sock.sendall(head("/predict", 1000) + b"{")
        time.sleep(0.5)  # the request is in the app, reading its body
        began = time.monotonic()
        started.process.send_signal(signal.SIGTERM)
        status, data = answer_of(sock, DRAIN_TIMEOUT_S + 5)
        code = started.process.wait(DRAIN_TIMEOUT_S + 10)
        stopped_after = time.monotonic() - began
        sock.close()
    finally:
        if started.process.poll() is None:
            os.killpg(started.pid, signal.SIGKILL)
            started.process.wait(10)
    text = log.read_text()
    assert status == 503 and b"retry-after" in data.lower() and b"shutting down" in data, data[:300]
    assert code == 0 and stopped_after < DRAIN_TIMEOUT_S + 3
    assert "Traceback" not in text and '"status":500' not in text.replace(" ", ""), text[-2000:]


def test_limits_are_settings_checked_together(bundle_dir: Path) -> None:
    from app.settings import Settings

    with pytest.raises(ValueError, match="MAX_BODY_BYTES_IN_FLIGHT=1024 is below MAX_BODY_BYTES=4000000"):
        Settings(bundle_dir=bundle_dir, max_body_bytes_in_flight=1024)


def test_a_registry_that_trickles_its_answers_cannot_wedge_the_server(bundle_dir: Path, tmp_path: Path) -> None:
    """``GET /model`` asks the registry, which answers one byte every 0.2 s, forever: twenty callers at once still
    get their answer within the timeout, the server stays live, and SIGTERM ends it within the drain bound."""
    with trickling_server(in_headers=False) as uri:
        started = start_server(bundle_dir, tmp_path / "server.log", MLFLOW_TRACKING_URI=uri, REGISTRY_TIMEOUT_S="1")
        try:
            answers: list[tuple[int, float]] = []

            def model_view() -> None:
                began = time.monotonic()
                status, _, body = request(started, "GET", "/model")
                assert json.loads(body)["registry"] == "unavailable"
                answers.append((status, time.monotonic() - began))

            with watched(started) as watch:
                for _ in range(3):
                    threads = [threading.Thread(target=model_view) for _ in range(20)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(30)
            began = time.monotonic()
            started.process.send_signal(signal.SIGTERM)
            code = started.process.wait(DRAIN_TIMEOUT_S + 10)
            stopped_after = time.monotonic() - began
        finally:
            if started.process.poll() is None:
                os.killpg(started.pid, signal.SIGKILL)
                started.process.wait(10)
    assert len(answers) == 60 and all(status == 200 for status, _ in answers)
    assert max(seconds for _, seconds in answers) < 5, answers
    watch.check(memory_limit_bytes())
    assert code == 0 and stopped_after < DRAIN_TIMEOUT_S + 3, (code, stopped_after)
