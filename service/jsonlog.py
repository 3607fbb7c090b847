"""Structured logs for the service processes: one JSON object per line, with the job id when there is one.

It lives in ``service`` with the settings: the API, the worker and the reaper
all log through it, and none of them imports another. Each line has ``time`` (UTC,
ISO 8601), ``level``, ``logger``, ``service`` (api, worker, reaper),
``message``, ``job_id`` when the line concerns a job, ``exception`` with the
traceback when one was logged, and any ``extra={...}`` fields the caller gave;
the API's access lines add ``client``, ``method``, ``path``, ``http_version`` and ``status``.

The job id is taken from ``extra={"job_id": ...}`` when given, else found in
the message: every log line of ours that concerns a job names it
(``job job_...: ...``), and so do the access log lines of the job routes, so
no call site needs to change for its lines to be searchable by job.
``EMBEDMIX_LOG_FORMAT=text`` keeps plain lines for people reading a terminal.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

from embedmix.service.ids import find_job_id

LogFormat = Literal["json", "text"]

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(name)s] %(message)s"
_LOGGERS_WITH_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.redirected")
# What every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field
# (but uvicorn's ``color_message``, the message again with terminal colour codes).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"
}
ACCESS_LOGGER = "uvicorn.access"
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")  # the arguments of uvicorn's access line


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module notes for the fields)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": message,
        }
        job_id = getattr(record, "job_id", None) or find_job_id(message)
        if job_id:
            line["job_id"] = job_id
        if record.name == ACCESS_LOGGER and isinstance(record.args, tuple) and len(record.args) == len(ACCESS_FIELDS):
            line.update(zip(ACCESS_FIELDS, record.args, strict=True))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def logging_config(service: str, level: str | int = "INFO", log_format: LogFormat = "json") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that sends every logger's records to stderr through one root handler.

    Uvicorn and Celery loggers lose the handlers they bring and propagate to
    the root, so no line escapes the format. Uvicorn applies it itself in each
    process it starts (``uvicorn.run(log_config=...)``), which also covers
    ``--workers`` > 1, where the API's processes are spawned, not forked.
    """
    # The formatter by name: the config is pickled to the processes uvicorn spawns.
    formatter: dict[str, Any] = {"()": f"{__name__}.JsonFormatter", "service": service}
    if log_format == "text":
        formatter = {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {name: {"handlers": [], "propagate": True} for name in _LOGGERS_WITH_HANDLERS},
    }


def configure_logging(service: str, level: str | int = "INFO", log_format: LogFormat = "json") -> None:
    """Apply :func:`logging_config` to this process (the worker; uvicorn applies it for the API)."""
    logging.config.dictConfig(logging_config(service, level, log_format))
