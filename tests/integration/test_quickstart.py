"""The quickstart's serving half on a pre-published local state: the same entrypoint path, local stores only.

(Training is the pipeline's own tests' business; here a published model exists, so none is trained.)
"""

from __future__ import annotations

import json
import shlex
import sys
import urllib.request
from pathlib import Path

from app.contract.bundle import load_bundle
from orchestration.publish import publish_bundle
from orchestration.quickstart import target_for
from tests.harness.services import LOOPBACK, free_port, printed, running
from tests.integration.conftest import ROOT


def test_quickstart_serves_the_published_model_and_its_sample_request_works(bundle_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / ".quickstart"
    target = target_for(state)
    published = publish_bundle(bundle_dir, target)
    assert published.created and Path(target.remote_url).is_dir()

    port = free_port()
    args = [sys.executable, "-m", "orchestration", "quickstart", "--port", str(port), "--state", str(state)]
    log = tmp_path / "quickstart.log"
    with running(args, f"http://{LOOPBACK}:{port}/health/ready", env={"PYTHONPATH": str(ROOT)}, log=log, timeout=120):
        output = printed(log, "curl ")  # the banner follows readiness: the quickstart asks GET /model
        assert "training" not in output and f"(version {published.version})" in output
        assert f"the server is ready on http://{LOOPBACK}:{port}" in output
        [curl] = [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]
        words = shlex.split(curl)
        url, body = words[words.index("-X") + 2], words[words.index("-d") + 1]
        assert url == f"http://{LOOPBACK}:{port}/predict"
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            prediction = json.loads(response.read())["prediction"]
    bundle = load_bundle(bundle_dir)
    example = {name: [value] for name, value in bundle.metadata.example.items()}
    assert prediction == bundle.predict(example)[0]
    assert "entrypoint: pull done" in output and "entrypoint: verify done" in output
