"""The application factory and the server entry point.

``create_app(settings)`` builds an independent application (its own engine,
broker client, caches and metrics registry), so tests and embedding hosts can
run several side by side. ``run_api(settings, host, port)`` serves one with
uvicorn; ``uvicorn --factory embedmix.api.app:create_app`` does the same with settings
from the ``EMBEDMIX_*`` environment.

Database schema is not created here: ``embedmix up`` and the compose
``migrate`` service run ``store.db.migrate`` first.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import Scope

from embedmix.api import catalog, datasets, health, jobs, keys, models, openai_embeddings, projection, stream, sweeps, ui
from embedmix.api.deps import reject_unknown_query
from embedmix.api.docs import DocsPolicyMiddleware
from embedmix.api.errors import document_errors, install_error_handlers
from embedmix.api.limits import BodyLimitMiddleware, InputGuardMiddleware
from embedmix.api.runtime import Runtime
from embedmix.api.telemetry import RequestMetricsMiddleware
from embedmix.api.uploads import MULTIPART_OVERHEAD, clear_stale_uploads
from embedmix.service.jsonlog import logging_config
from embedmix.service.settings import Settings, get_settings

logger = logging.getLogger("embedmix.api")

API_VERSION = "1"
UPLOAD_PATH = "/v1/datasets"
# On shutdown uvicorn waits for open responses; an event stream of a running job would keep it
# waiting until the job ends. Past this grace the remaining responses are cancelled (and their
# stream slots freed), so a stop takes seconds, not the length of a training run.
SHUTDOWN_GRACE_S = 5
DESCRIPTION = """\
Train embedding models over HTTP: submit a JobSpec, follow it live, download the encoder
(safetensors, ONNX, TorchScript) or embed inputs with it.

Authenticate with `Authorization: Bearer <api key>`. Lists return
`{"data": [...], "has_more", "next_cursor"}`; errors return
`{"error": {"code", "message", "param"}}`. Another owner's job or dataset is 404.
"""


def _freeze_startup_heap() -> None:
    """Put what imports and start-up made out of the cyclic collector's reach until shutdown.

    That heap (torch's, sympy's, SQLAlchemy's: some 420,000 objects) lives as long as the
    process; a full collection walking it stalled every request in flight for 150-230 ms a few
    times a minute (bench/polls.py). torch imports its compiler stack (torch._dynamo) on the
    first call of a function it wraps, which is the first submission's cost estimate: 0.7 s
    and a third of that heap, imported here instead so that it is frozen with the rest.
    """
    import torch._dynamo  # noqa: F401

    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """A ready application for ``settings`` (default: the ``EMBEDMIX_*`` environment)."""
    settings = settings or get_settings()
    runtime = Runtime.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clear_stale_uploads(settings.work_dir)  # what a killed process of this host left mid-upload
        runtime.start()
        _freeze_startup_heap()
        yield
        gc.unfreeze()  # an app a test stops leaves nothing pinned
        runtime.close()

    # /docs and /redoc with their files from a package, not a CDN (see api.docs).
    app = FastAPIOffline(
        title="embedmix",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (jobs, stream, models, openai_embeddings, projection, sweeps, datasets, keys, catalog, health, ui):
        # API routes refuse query parameters they do not take; pages and probes are lenient.
        strict = module.router.prefix.startswith("/v1")
        app.include_router(
            module.router, dependencies=[Depends(reject_unknown_query)] if strict else []
        )
    document_errors(app)
    _add_middleware(app, runtime)
    return app


def _add_middleware(app: FastAPI, runtime: Runtime) -> None:
    """Outermost last: metrics see every response, including 413s and CORS preflights."""
    settings = runtime.settings
    upload_limit = settings.max_upload_bytes + MULTIPART_OVERHEAD

    def body_limit(scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
            return upload_limit
        return settings.max_request_bytes

    app.add_middleware(DocsPolicyMiddleware)
    app.add_middleware(InputGuardMiddleware, max_json_depth=settings.max_json_depth)
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    if settings.cors_origins:
        # Bearer keys, not cookies: no credentials mode, so a listed origin cannot ride a session.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["ETag", "Retry-After", "Idempotent-Replayed", "Content-Disposition"],
        )
    app.add_middleware(RequestMetricsMiddleware, telemetry=runtime.telemetry)


def run_api(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the API until interrupted (``embedmix up`` and the compose ``api`` service).

    With ``workers`` > 1, uvicorn forks that many processes, each building its
    own app from the ``EMBEDMIX_*`` environment (an app's engine and broker
    pools must not cross a fork), so ``settings`` must be the environment's.
    """
    log_config = logging_config("api", "INFO", settings.log_format)  # JSON lines with the job id (service.jsonlog)
    logger.info("embedmix API on http://%s:%d (docs at /docs), %d process(es)", host, port, workers)
    if workers == 1:
        uvicorn.run(
            create_app(settings), host=host, port=port, proxy_headers=True, log_config=log_config,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        return
    uvicorn.run(
        "embedmix.api.app:create_app", factory=True, host=host, port=port, workers=workers,
        proxy_headers=True, log_config=log_config, timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
