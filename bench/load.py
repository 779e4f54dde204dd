"""A bounded HTTP load generator for 127.0.0.1: wrk when installed (compiled, light on a 2-core machine),
else a small asyncio client over raw keep-alive sockets.

Both send POST requests with JSON bodies taken in turn from a list, keep ``concurrency`` connections busy,
and stop at ``max_requests`` or after ``duration_s``, whichever comes first. Both report the same figures.
wrk times the whole ``duration_s`` even when its threads stop early at ``max_requests``, so a run that reached
the bound is marked ``capped``: its rate is understated (size the bound above what the server can do).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import numpy as np

Generator = Literal["wrk", "python"]

# wrk's Lua hooks: bodies in turn, a per-thread request bound, and the summary as one JSON line.
WRK_SCRIPT: Final = r"""
local bodies = {}
local sent = 0
local limit = 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  limit = tonumber(args[2])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[(sent % #bodies) + 1])
end
function response(status, headers, body)
  if sent >= limit then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class LoadResult:
    generator: Generator
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    capped: bool = False  # stopped at max_requests: with wrk, the rate is understated

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def available_generator(preferred: str = "auto") -> Generator:
    """``wrk`` if asked for or found on PATH (``auto``), else ``python``."""
    if preferred == "python":
        return "python"
    if shutil.which("wrk"):
        return "wrk"
    if preferred == "wrk":
        raise SystemExit("wrk is not installed (apt-get install -y wrk), use --generator python")
    return "python"


def run_load(
    url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    max_requests: int,
    duration_s: float,
    generator: Generator,
) -> LoadResult:
    """Drive ``url`` (must be on 127.0.0.1) with POSTs of ``bodies`` in turn."""
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError(f"the load generator only targets 127.0.0.1, not {url}")
    if generator == "wrk":
        return _wrk(url, bodies, concurrency, max_requests, duration_s)
    return asyncio.run(_python(url, bodies, concurrency, max_requests, duration_s))


def _wrk(url: str, bodies: list[bytes], concurrency: int, max_requests: int, duration_s: float) -> LoadResult:
    threads = min(2, concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        script, body_file = Path(tmp) / "post.lua", Path(tmp) / "bodies.txt"
        script.write_text(WRK_SCRIPT)
        body_file.write_bytes(b"\n".join(b.replace(b"\n", b" ") for b in bodies) + b"\n")
        args = [
            "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
            "-s", str(script), url, "--", str(body_file), str(-(-max_requests // threads)),
        ]  # fmt: skip
        completed = subprocess.run(args, capture_output=True, text=True, check=True, timeout=duration_s + 60)
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT "))
    summary = json.loads(line.removeprefix("RESULT "))
    errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        capped=summary["requests"] >= max_requests - concurrency,
        generator="wrk",
        concurrency=concurrency,
        requests=summary["requests"],
        errors=errors,
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
    )


async def _python(url: str, bodies: list[bytes], concurrency: int, max_requests: int, duration_s: float) -> LoadResult:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + duration_s

    async def connection() -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while sent < max_requests and time.perf_counter() < deadline:
                request = requests[sent % len(requests)]
                sent += 1
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    errors += 1
        except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError):
            errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return LoadResult(
        generator="python",
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )
