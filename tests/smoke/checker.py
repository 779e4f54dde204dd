"""Check a running prediction server against its bundle: ``python -m tests.smoke.checker --url URL --bundle DIR``.

Waits for ``/health/ready``; compares ``/predict`` and ``/predict/batch`` on sample records built from the
bundle's schema with the bundle's own ``Bundle.predict``; checks that a bad record gets a 422 naming the
field; that ``/model`` reports the bundle (content hash, data hash, the registry's version and alias) and
``/metrics`` its model-info gauge; that ``/docs`` and ``/redoc`` reference only the server's own scripts,
stylesheets and icons, and that it serves them (Swagger UI and ReDoc come from the image, no CDN). Prints a short
report; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

from app.contract.bundle import Bundle, Feature, Metadata, load_bundle
from app.contract.connection import DEFAULT_MODEL_NAME

SAMPLE_RECORDS: Final = 24
SINGLE_RECORDS: Final = 6  # sent one by one; all of them go in the batch
TOLERANCE: Final = 1e-9
DOCS_PAGES: Final = ("/docs", "/redoc")
REFERENCE: Final = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")  # a page's script, stylesheet, icon


@dataclass
class Report:
    """Named checks and their outcome."""

    lines: list[str] = field(default_factory=list)
    failures: int = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        self.lines.append(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
        self.failures += not ok
        return ok


def request(url: str, body: Any = None, timeout: float = 10) -> tuple[int, bytes]:
    """GET (or POST ``body`` as JSON) -> status and body; HTTP errors are answers, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, timeout: float) -> float:
    """Seconds until ``/health/ready`` answered 200; raises TimeoutError with the last answer."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout:
        try:
            status, body = request(f"{url}/health/ready", timeout=3)
            if status == 200:
                return time.monotonic() - started
            last = f"{status} {body[:200]!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/health/ready not 200 within {timeout:.0f}s (last: {last})")


def _value(feature: Feature, i: int, n: int) -> Any:
    """The ``i``-th of ``n`` values spread over the feature's training range or categories."""
    if feature.kind == "categorical":
        categories = feature.categories or []
        return categories[i % len(categories)]
    if feature.kind == "date":
        first, last = date.fromisoformat(str(feature.minimum)), date.fromisoformat(str(feature.maximum))
        return (first + timedelta(days=(last - first).days * i // max(n - 1, 1))).isoformat()
    low, high = float(feature.minimum or 0), float(feature.maximum or 0)
    value = low + (high - low) * (i + 0.5) / n
    return round(value) if feature.dtype == "int" else round(value, 3)


def sample_records(metadata: Metadata, n: int = SAMPLE_RECORDS) -> list[dict[str, Any]]:
    """The bundle's own example, then ``n - 1`` records spread over every feature's range."""
    records = [dict(metadata.example)]
    for i in range(n - 1):
        # a different stride per feature, so categories and ranges combine rather than move in lockstep
        records.append({f.name: _value(f, (i * (k + 1)) % (n - 1), n - 1) for k, f in enumerate(metadata.features)})
    return records


def bad_record(metadata: Metadata) -> tuple[dict[str, Any], str]:
    """A record with one wrongly typed value, and that field's name."""
    record = dict(metadata.example)
    name = metadata.features[0].name
    record[name] = [] if metadata.features[0].kind == "numeric" else 12345
    return record, name


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


def check_predictions(url: str, bundle: Bundle, report: Report) -> None:
    records = sample_records(bundle.metadata)
    expected = [float(v) for v in bundle.predict({f: [r[f] for r in records] for f in bundle.metadata.feature_names()})]

    mismatched = []
    for record, want in zip(records[:SINGLE_RECORDS], expected, strict=False):
        status, body = request(f"{url}/predict", record)
        got = json.loads(body).get("prediction") if status == 200 else None
        if not (isinstance(got, int | float) and close(float(got), want)):
            mismatched.append(f"{status} {got!r} != {want!r}")
    report.check(
        not mismatched,
        f"/predict equals Bundle.predict on {SINGLE_RECORDS} records",
        "; ".join(mismatched[:3]) or f"e.g. {expected[0]:.4f}",
    )

    status, body = request(f"{url}/predict/batch", {"records": records})
    got_batch = json.loads(body).get("predictions", []) if status == 200 else []
    same = len(got_batch) == len(expected) and all(close(float(g), w) for g, w in zip(got_batch, expected, strict=True))
    report.check(same, f"/predict/batch equals Bundle.predict on {len(records)} records", f"status {status}")


def check_bad_record(url: str, metadata: Metadata, report: Report) -> None:
    record, name = bad_record(metadata)
    status, body = request(f"{url}/predict", record)
    report.check(status == 422 and name in body.decode(errors="replace"), f"bad {name} gets 422 naming it", str(status))


def check_model(url: str, metadata: Metadata, dvc_hash: str, model_name: str, report: Report) -> None:
    status, body = request(f"{url}/model")
    model = json.loads(body) if status == 200 else {}
    registry = model.get("registry")
    report.check(model.get("bundle_hash") == metadata.content_hash, "/model bundle_hash", metadata.content_hash[:12])
    report.check(model.get("data_hash") == metadata.data_hash, "/model data_hash", metadata.data_hash[:12])
    report.check(
        isinstance(registry, dict)
        and registry.get("name") == model_name
        and "champion" in registry.get("aliases", [])
        and model.get("model_version") == registry.get("version"),
        f"/model registry view {model_name}@champion (bundle {dvc_hash})",
        json.dumps(registry)[:200],
    )
    # the image carries the compiled walk for its architecture: without it the server falls back to numpy
    report.check(model.get("walk") == "compiled", "/model walk is compiled", str(model.get("walk")))


def check_metrics(url: str, metadata: Metadata, report: Report) -> None:
    status, body = request(f"{url}/metrics")
    text = body.decode(errors="replace")
    info = [line for line in text.splitlines() if line.startswith("model_info{") and metadata.content_hash in line]
    report.check(
        status == 200 and bool(info) and info[0].rstrip().endswith("1.0"),
        "/metrics model_info gauge for the bundle",
        info[0] if info else f"status {status}",
    )


def check_docs(url: str, report: Report) -> None:
    """Each interactive docs page, and every file it references: all on the server, all served, none empty."""
    for page in DOCS_PAGES:
        status, body = request(f"{url}{page}")
        references = REFERENCE.findall(body.decode(errors="replace"))
        outside = [ref for ref in references if not ref.startswith("/") or ref.startswith("//")]
        sizes = {ref: request(f"{url}{ref}") for ref in references if ref not in outside}
        missing = [ref for ref, (code, content) in sizes.items() if code != 200 or not content]
        ok = status == 200 and bool(references) and not outside and not missing
        served = ", ".join(f"{ref} {len(content):,} B" for ref, (_, content) in sizes.items())
        detail = served if ok else f"status {status}; elsewhere {outside}; not served {missing}"
        report.check(ok, f"{page} and its files from the server", detail)


def run_checks(url: str, bundle_dir: Path, dvc_hash: str, model_name: str, timeout: float) -> Report:
    """Every check against the server at ``url``; the report says which passed."""
    report = Report()
    url = url.rstrip("/")
    try:
        waited = wait_ready(url, timeout)
    except TimeoutError as exc:
        report.check(False, "ready", str(exc))
        return report
    report.check(True, "ready", f"/health/ready 200 after {waited:.1f}s")
    bundle = load_bundle(bundle_dir)
    check_predictions(url, bundle, report)
    check_bad_record(url, bundle.metadata, report)
    check_model(url, bundle.metadata, dvc_hash, model_name, report)
    check_metrics(url, bundle.metadata, report)
    check_docs(url, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.smoke.checker", description=__doc__)
    parser.add_argument("--url", required=True, help="the server's base URL")
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle the server should serve")
    parser.add_argument("--dvc-hash-file", type=Path, required=True, help="file holding the bundle's DVC hash")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    args = parser.parse_args(argv)

    dvc_hash = args.dvc_hash_file.read_text().strip()
    report = run_checks(args.url, args.bundle, dvc_hash, args.model_name, args.timeout)
    print(f"smoke check of {args.url} serving bundle {dvc_hash}:")
    print("\n".join(report.lines))
    print(f"{len(report.lines) - report.failures}/{len(report.lines)} checks passed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
