"""A user command against a service that is not there: one line saying so, exit code 1, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [["jobs"], ["status", "job_x"], ["datasets", "list"], ["keys", "revoke", "1"]])
def test_an_unreachable_service_is_one_line_and_exit_code_1(command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "embedmix.cli.main", *command, "--url", url], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the embedmix service at {url}" in lines[0], result.stderr
