"""Alembic environment: runs migrations on a connection handed in by ``store.db.migrate``,
or on the URL from ``EMBEDMIX_DATABASE_URL`` / alembic.ini when run as ``alembic`` on the command line."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from embedmix.store.db import make_engine
from embedmix.store.models import Base

config = context.config
target_metadata = Base.metadata

# Only the command line configures logging; a programmatic migrate must not
# replace the logging setup of the process that called it.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name)


def _database_url() -> str:
    """The command line's target: the environment wins over alembic.ini; no silent default."""
    url = os.environ.get("EMBEDMIX_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set EMBEDMIX_DATABASE_URL to the database to migrate")
    return url


def _run(connection: Connection) -> None:
    """Run the migrations in one transaction; batch mode lets later ALTERs work on SQLite."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) instead of touching a database."""
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the caller's connection when given one, else through a new engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_database_url())
    try:
        with engine.begin() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
