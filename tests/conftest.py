from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RedisServer


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server owned by this test session (free port, stopped by pid)."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()
