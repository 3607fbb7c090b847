"""docker-compose.yml and the Dockerfile agree with the code (there is no Docker engine here to run them)."""

from __future__ import annotations

from pathlib import Path

import typer.main
import yaml

from embedmix.cli.main import app
from embedmix.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _cli_commands() -> set[str]:
    return set(typer.main.get_command(app).commands)


def test_services_are_the_designed_ones():
    assert set(SERVICES) == {"postgres", "redis", "migrate", "api", "worker"}


def test_every_command_is_a_real_cli_command():
    commands = _cli_commands()
    for name in ("migrate", "api", "worker"):
        cmd = SERVICES[name]["command"]
        assert cmd[0] == "embedmix" and cmd[1] in commands, (name, cmd)


def test_environment_names_are_settings_the_code_reads():
    known = {f"EMBEDMIX_{field.upper()}" for field in Settings.model_fields}
    for name in ("migrate", "api", "worker"):
        env = SERVICES[name]["environment"]
        ours = {k for k in env if k.startswith("EMBEDMIX_")}
        assert ours and ours <= known, (name, ours - known)
        assert env["EMBEDMIX_DATABASE_URL"].startswith("postgresql")
        assert env["EMBEDMIX_REDIS_URL"] == "redis://redis:6379/0"


def test_order_and_gpu():
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert SERVICES["api"]["ports"] == ["8000:8000"]


def test_dockerfile_copies_every_package_the_project_installs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    import tomllib

    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        assert f"COPY {folder} {folder}" in dockerfile, folder
    assert "alembic.ini" in dockerfile
