"""The Python client's submit over a connection that loses the answer: the request reached the
server and made the job, the client never heard back. It retries with the same Idempotency-Key
and gets that job; no second one is made.

A real uvicorn server on a loopback port, with a small TCP proxy in front that, for the
first connection only, forwards the request, waits for the server's whole answer and then
closes the client's side without passing it on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from embedmix.api.app import create_app
from embedmix.client import EmbedmixClient
from embedmix.store import make_engine, make_session_factory
from embedmix.store.models import Job
from embedmix.service.settings import Settings
from tests.conftest import served_in_thread
from tests.integration.conftest import owner_with_keys

SPEC = {"name": "retried", "dataset": {"name": "blobs", "size": 100}, "train": {"epochs": 1}}


@pytest.fixture
def server_port(app_settings: Settings) -> Iterator[int]:
    with served_in_thread(create_app(app_settings)) as port:
        yield port


class AnswerLosingProxy:
    """Forwards connections to ``port``; the first one's answer is read from the server and dropped."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self.target)
            if self.connections == 1:
                threading.Thread(target=self._lose_answer, args=(client, upstream), daemon=True).start()
            else:
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _lose_answer(client: socket.socket, upstream: socket.socket) -> None:
        request = _one_message(client)
        upstream.sendall(request)
        _one_message(upstream)  # the server answered: the job exists
        client.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def _one_message(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        sink.close()


def test_a_submission_whose_answer_was_lost_is_retried_and_makes_one_job(
    app_settings: Settings, server_port: int
) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    proxy = AnswerLosingProxy(server_port)
    try:
        with EmbedmixClient(f"http://127.0.0.1:{proxy.port}", key) as client:
            job = client.submit(SPEC)
    finally:
        proxy.close()
    assert proxy.connections == 2  # the lost answer, then the retry
    engine = make_engine(app_settings.database_url)
    with make_session_factory(engine)() as session:
        job_ids = session.scalars(select(Job.id)).all()
    engine.dispose()
    assert job_ids == [job["id"]]
