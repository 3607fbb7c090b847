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
    assert set(SERVICES) == {"postgres", "redis", "migrate", "api", "worker", "worker-4gpu"}


def test_every_command_is_a_real_cli_command():
    commands = _cli_commands()
    for name in ("migrate", "api", "worker", "worker-4gpu"):
        cmd = SERVICES[name]["command"]
        assert cmd[0] == "embedmix" and cmd[1] in commands, (name, cmd)


def test_environment_names_are_settings_the_code_reads():
    known = {f"EMBEDMIX_{field.upper()}" for field in Settings.model_fields}
    for name in ("migrate", "api", "worker", "worker-4gpu"):
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


def _offered(worker: dict) -> int:
    """The devices a worker service offers a job: its --devices, else the GPUs it sees."""
    command = worker["command"]
    visible = worker["environment"]["CUDA_VISIBLE_DEVICES"].split(",")
    return int(command[command.index("--devices") + 1]) if "--devices" in command else len(visible)


def test_each_worker_offers_the_gpus_it_reserves_and_the_largest_bounds_what_the_api_admits():
    workers = {name: service for name, service in SERVICES.items() if name.startswith("worker")}
    for name, worker in workers.items():
        reserved = worker["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"].split(",") == reserved, name
        assert _offered(worker) == len(reserved), name
    admitted = int(SERVICES["api"]["environment"]["EMBEDMIX_MAX_DEVICES_PER_JOB"])
    assert admitted == max(_offered(worker) for worker in workers.values())


def test_dockerfile_copies_every_package_the_project_installs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    import tomllib

    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        assert f"COPY {folder} {folder}" in dockerfile, folder
    assert "alembic.ini" in dockerfile
