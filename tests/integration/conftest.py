"""Fixtures for in-process integration tests: a real server and real workers on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stepline import Stepline
from tests.harness import ServerThread, WorkerThread
from tests.integration.bridge_harness import start_app  # noqa: F401 (the bridge's app fixture)


@pytest.fixture
def make_server(database_url: str) -> Iterator[Callable[..., ServerThread]]:
    servers: list[ServerThread] = []

    def make(**settings: Any) -> ServerThread:
        server = ServerThread(database_url, **settings)
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerThread]]:
    workers: list[WorkerThread] = []

    def start(app: Stepline, **options: Any) -> WorkerThread:
        worker = WorkerThread(app, **options)
        workers.append(worker)
        return worker

    yield start
    for worker in reversed(workers):
        worker.stop()
