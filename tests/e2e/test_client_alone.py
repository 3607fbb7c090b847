"""The client distribution alone: a fresh venv with embedmix-client and httpx (and what httpx
needs), no torch and no service code, submits a job to a running `embedmix up`, waits for it
with a progress callback and downloads the model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Service
from tests.wheels import client_wheel, requirements_closure, wheel_from_installed

SPEC = {"name": "client-alone", "dataset": {"name": "mnist1d", "size": 300}, "model": {"encoder": "mlp", "width": 16},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu"}, "eval": {"metrics": ["precision_at_1"]},
        "export": {"formats": ["safetensors", "onnx"]}}

# Runs in the fresh venv: argv = url, key, spec (JSON). Prints what the test checks, as JSON.
SCRIPT = """
import importlib.util, json, sys
import embedmix.client
from embedmix.client import EmbedmixClient
url, key, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seen = []
with EmbedmixClient(url, key) as client:
    job_id = client.submit(spec)["id"]
    job = client.wait(job_id, on_progress=lambda j: seen.append(j["status"]), timeout=300, poll_s=0.2)
    path = client.download(job_id, "onnx")
print(json.dumps({"client": embedmix.client.__file__, "status": job["status"], "seen": seen,
                  "onnx_head": path.read_bytes()[:2].hex(), "size": path.stat().st_size,
                  "absent": [m for m in ("torch", "numpy", "embedmix.core", "embedmix.api")
                             if importlib.util.find_spec(m) is None]}))
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("client-alone") / "data") as svc:
        yield svc


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding embedmix-client and httpx's requirements, installed offline from wheels."""
    tmp = tmp_path_factory.mktemp("client-venv")
    wheels = tmp / "wheels"
    wheels.mkdir()
    for dist in requirements_closure(["httpx"]):
        wheel_from_installed(dist, wheels)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
                    "--find-links", str(wheels), str(client_wheel(tmp))], check=True, capture_output=True, text=True)
    return python


def test_the_client_alone_submits_waits_and_downloads(service: Service, client_venv: Path, tmp_path: Path) -> None:
    result = subprocess.run([str(client_venv), "-c", SCRIPT, service.url, service.key, json.dumps(SPEC)],
                            cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert Path(out["client"]).is_relative_to(client_venv.parent.parent)  # the venv's copy, not the repository's
    assert out["absent"] == ["torch", "numpy", "embedmix.core", "embedmix.api"]
    assert out["status"] == "succeeded" and out["seen"][-1] == "succeeded"
    assert out["onnx_head"] == "0808" and out["size"] > 1000  # an ONNX ModelProto: field 1 (ir_version), varint
