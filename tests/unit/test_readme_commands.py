"""The README's commands do what it says: `make run PORT=...` picks the port, and every curl line
fails on an HTTP error instead of writing the error body where the file should go."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_run_takes_a_port() -> None:
    dry = subprocess.run(["make", "-n", "-W", "pyproject.toml", "run", "PORT=9123"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"embedmix up .*--port 9123", dry), dry
    default = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert re.search(r"embedmix up .*--port 8000", default), default


def test_every_curl_line_in_the_readme_fails_on_http_errors() -> None:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if re.match(r"\s*curl -", line)]
    assert lines, "the README shows curl"
    for line in lines:
        flags = "".join(re.findall(r"\s-([A-Za-z]+)", line.split("http")[0]))
        assert "f" in flags, f"curl without -f writes a 4xx body as if it were the file: {line}"
