"""What one application instance holds for its lifetime: settings, database, blob store,
broker client, encoder cache and metrics. Built once by ``create_app`` and reached by
handlers only through the dependencies in ``api.deps``, so tests can build as many
independent apps as they like."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api.embedding import EncoderCache
from embedmix.api.job_reads import JobReads
from embedmix.api.key_cache import KeyCache, RevocationListener
from embedmix.api.queue import TrainQueue
from embedmix.api.rate_limit import SubmitRateLimiter
from embedmix.api.stream_limits import StreamLimits
from embedmix.api.telemetry import Telemetry
from embedmix.core.catalog import catalog_json
from embedmix.service.settings import Settings
from embedmix.store import (
    ArtifactStore,
    artifact_store_from_url,
    make_autocommit_engine,
    make_engine,
    make_session_factory,
)

ENCODER_CACHE_SIZE = 4
# Threads for the status poll's batched reads (api.job_reads): a batch holds one for one query, so a few
# serve thousands of polls a second (store.db sizes the connection pool for them).
POLL_THREADS = 4


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    poll_engine: Engine  # the status poll's single-statement reads (make_autocommit_engine)
    session_factory: sessionmaker[Session]
    artifacts: ArtifactStore
    queue: TrainQueue
    submit_rate: SubmitRateLimiter
    keys: KeyCache
    revocations: RevocationListener
    poll_threads: ThreadPoolExecutor
    job_reads: JobReads
    streams: StreamLimits
    encoders: EncoderCache
    telemetry: Telemetry
    catalog: dict[str, list[dict[str, Any]]]

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        """Connect nothing yet: engines and the broker client connect on first use, so an
        app whose database is down still starts and answers ``/healthz`` and ``/readyz``."""
        engine = make_engine(settings.database_url)
        session_factory = make_session_factory(engine)
        queue = TrainQueue(settings.redis_url, settings.max_devices_per_job)
        keys = KeyCache(settings.key_cache_s)
        poll_engine = make_autocommit_engine(settings.database_url)
        poll_threads = ThreadPoolExecutor(POLL_THREADS, thread_name_prefix="polls")
        return cls(
            settings=settings,
            engine=engine,
            poll_engine=poll_engine,
            session_factory=session_factory,
            artifacts=artifact_store_from_url(settings.artifacts, settings.s3_endpoint_url),
            queue=queue,
            submit_rate=SubmitRateLimiter(settings.redis_url, settings.submit_rate_per_minute),
            keys=keys,
            revocations=RevocationListener(settings.redis_url, keys),
            poll_threads=poll_threads,
            job_reads=JobReads(poll_engine, poll_threads),
            streams=StreamLimits(settings.max_streams_per_key, settings.max_streams),
            encoders=EncoderCache(ENCODER_CACHE_SIZE),
            telemetry=Telemetry(session_factory, queue.depth),
            catalog=catalog_json(),
        )

    def start(self) -> None:
        """Background work that lives as long as the server: following key revocations."""
        self.revocations.start()

    def close(self) -> None:
        self.revocations.close()
        self.poll_threads.shutdown(wait=False)
        self.queue.close()
        self.submit_rate.close()
        self.engine.dispose()
        self.poll_engine.dispose()
