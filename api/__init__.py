"""The embedmix HTTP API v1 (FastAPI): ``create_app(settings)`` builds it, ``run_api`` serves it.

Arrows: api -> store, service, core.spec, core.catalog, core.errors, core.data
(upload validation) and core.export (``/embed``). It never imports the worker: jobs
reach workers as Celery messages sent by task name (``service.queue``).
"""

from embedmix.api.app import create_app, run_api

__all__ = ["create_app", "run_api"]
