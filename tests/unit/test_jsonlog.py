"""Structured service logs (service/jsonlog.py): one JSON object per line, carrying the job id."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from embedmix.service.jsonlog import JsonFormatter, configure_logging

JOB = "job_" + "aB3" * 6 + "xY"  # 20 characters after the prefix, like service.ids.new_job_id()


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("embedmix.worker")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, args, None, extra=extra or None)


def test_a_line_is_json_with_the_job_id_found_in_the_message():
    line = json.loads(JsonFormatter("worker").format(_record("job %s: lease lost at step %d", JOB, 7)))
    assert line["message"] == f"job {JOB}: lease lost at step 7"
    assert line["job_id"] == JOB and line["level"] == "warning" and line["service"] == "worker"
    assert line["logger"] == "embedmix.worker" and line["time"].endswith("+00:00")


def test_an_explicit_job_id_and_extra_fields_win_and_are_kept():
    other = "job_" + "Z" * 20
    line = json.loads(JsonFormatter("api").format(_record("moved %s", other, job_id=JOB, step=3)))
    assert line["job_id"] == JOB and line["step"] == 3


def test_lines_without_a_job_have_no_job_id_and_exceptions_keep_their_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "job_short is no id", (), info)
    line = json.loads(JsonFormatter("api").format(record))
    assert "job_id" not in line
    assert "ValueError: boom" in line["exception"]


@pytest.fixture
def restore_logging():
    """Save and restore the loggers these tests configure, starting uvicorn's access logger afresh:
    an in-process uvicorn earlier in the run (tests/security) leaves its level at WARNING."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uvicorn = logging.getLogger("uvicorn.access")
    saved_uvicorn = (list(uvicorn.handlers), uvicorn.propagate, uvicorn.level, uvicorn.disabled)
    uvicorn.setLevel(logging.NOTSET)
    uvicorn.disabled = False
    yield
    root.handlers[:], root.level = saved
    uvicorn.handlers[:], uvicorn.propagate, uvicorn.level, uvicorn.disabled = saved_uvicorn


def test_configure_routes_uvicorn_access_lines_through_the_json_handler(restore_logging, capsys):
    logging.getLogger("uvicorn.access").addHandler(logging.StreamHandler())  # as uvicorn's own config does
    logging.getLogger("uvicorn.access").propagate = False
    configure_logging("api", "INFO")
    access = ("127.0.0.1", "GET", f"/v1/jobs/{JOB}", "1.1", 200)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', *access)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 1 and lines[0]["job_id"] == JOB and lines[0]["service"] == "api"
    assert lines[0]["method"] == "GET" and lines[0]["path"] == f"/v1/jobs/{JOB}" and lines[0]["status"] == 200


def test_text_format_for_people(restore_logging, capsys):
    configure_logging("worker", "INFO", "text")
    logging.getLogger("embedmix.worker").info("job %s: running", JOB)
    err = capsys.readouterr().err
    assert f"INFO/embedmix.worker] job {JOB}: running" in err and not err.startswith("{")
