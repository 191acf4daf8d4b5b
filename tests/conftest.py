from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celery_checkpoint.stores import CheckpointStore, create_store
from celery_checkpoint.stores.redis import RedisStore
from tests.harness import RedisServer

#: The database of the private redis-server that Redis-store unit tests use.
REDIS_STORE_DB = 5


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server owned by this test session (free port, stopped by pid)."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_store(private_redis: RedisServer) -> Iterator[RedisStore]:
    """A Redis store on the private server, under a key prefix of its own."""
    store = create_store(f"{private_redis.url}/{REDIS_STORE_DB}", prefix=f"t{uuid.uuid4().hex[:8]}:")
    assert isinstance(store, RedisStore)
    yield store
    store.close()


@pytest.fixture
def redis_admin(private_redis: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the same database, to look at (or break) what the store wrote."""
    client = redis.Redis.from_url(f"{private_redis.url}/{REDIS_STORE_DB}")
    yield client
    client.close()


def store_of_kind(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    """An empty store: ``memory``, ``sqlite`` (a file in ``tmp_path``) or ``redis`` (the private server)."""
    if kind == "memory":
        return create_store(f"memory://{uuid.uuid4().hex}")
    if kind == "sqlite":
        return create_store(f"sqlite:///{tmp_path}/checkpoints.db")
    server: RedisServer = request.getfixturevalue("private_redis")
    return create_store(f"{server.url}/3", prefix=f"t{uuid.uuid4().hex[:8]}:")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CheckpointStore]:
    """An empty store of each kind: what every store must do alike (memory, SQLite, Redis)."""
    s = store_of_kind(request.param, request, tmp_path)
    yield s
    s.close()
