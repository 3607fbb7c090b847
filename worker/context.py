"""What a worker process needs to reach the store: settings, sessions and the artifact store.

Engines hold connection pools, so each process builds one per database and
reuses it. The cache is keyed by process id as well as URL because a pool must
not cross ``fork``: a prefork child would otherwise share its parent's sockets.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from embedmix.service.settings import Settings
from embedmix.store.artifacts import ArtifactStore, artifact_store_from_url
from embedmix.store.db import make_engine, make_session_factory

_FACTORIES: dict[tuple[int, str], sessionmaker[Session]] = {}
_FACTORIES_LOCK = threading.Lock()


@dataclass(frozen=True)
class WorkerContext:
    """Settings plus the session factory and artifact store they name."""

    settings: Settings
    session_factory: sessionmaker[Session]
    artifacts: ArtifactStore


def context_for(settings: Settings) -> WorkerContext:
    """A context for ``settings`` that shares this process's pooled engine for its database."""
    return WorkerContext(
        settings=settings,
        session_factory=session_factory_for(settings.database_url),
        artifacts=artifact_store_from_url(settings.artifacts, settings.s3_endpoint_url),
    )


def session_factory_for(database_url: str) -> sessionmaker[Session]:
    """This process's session factory for ``database_url``, created on first use."""
    key = (os.getpid(), database_url)
    with _FACTORIES_LOCK:
        factory = _FACTORIES.get(key)
        if factory is None:
            factory = make_session_factory(make_engine(database_url))
            _FACTORIES[key] = factory
        return factory
