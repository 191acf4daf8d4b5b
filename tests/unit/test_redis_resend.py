"""A Redis command is sent a second time only when the first cannot have been applied.

The store's wire (``redis_wire.Wire``) re-sends an exchange on a new
connection when the send failed, or when the connection turns out closed
before any answer to it came (a pooled connection the server dropped while
it sat idle, e.g. across a restart). It never re-sends after a read timed
out: the server got the commands and is only slow, and a second copy would
be applied as well (a save counted twice). These tests use real
redis-servers; a fake connection shows only the one ordering a server cannot
be made to show on demand.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_checkpoint.errors import CheckpointStoreError
from celery_checkpoint.record import EncodedState
from celery_checkpoint.stores import create_store
from celery_checkpoint.stores.redis import RedisStore
from celery_checkpoint.stores.redis_wire import Wire
from tests.harness import RedisServer, wait_for
from tests.unit.test_checkpointer import OWNER
from tests.unit.test_store_contract import _new

#: Busy for ARGV[1] milliseconds: like ``DEBUG SLEEP``, which a server refuses unless configured to allow it.
BUSY = """
local function now() local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000) end
local stop = now() + tonumber(ARGV[1])
while now() < stop do end
return 1
"""


def _state(text: str) -> EncodedState:
    return EncodedState(text.encode(), "application/json", "utf-8")


@contextmanager
def busy(server: RedisServer, seconds: float) -> Iterator[None]:
    """The server is alive but answers nobody for ``seconds``.

    Commands sent meanwhile wait in their sockets and are applied when it is
    done, those of a connection the client has closed since included.
    """
    conn = redis.Connection(host="127.0.0.1", port=server.port, socket_timeout=seconds + 30)
    conn.send_command("EVAL", BUSY, 0, int(seconds * 1000))
    try:
        wait_for(lambda: not server.ping(), 5, "the server busy")
        yield
    finally:
        conn.read_response()
        conn.disconnect()


def _saves(admin: redis.Redis, store: RedisStore, task_id: str) -> int:
    return int(admin.hget(store.save_key(task_id, 1), "saves") or 0)


def test_a_save_whose_answer_times_out_is_not_sent_again(private_redis: RedisServer) -> None:
    # Connections that open without a round trip (RESP2, database 0, no
    # CLIENT SETINFO), so that a re-send goes out while the server is busy:
    # with the default handshake it does when the server is slow for longer
    # than one read timeout but answers the handshake within the next.
    client = redis.Redis(
        host="127.0.0.1", port=private_redis.port, socket_timeout=0.25, protocol=2, driver_info=None
    )
    store = RedisStore(private_redis.url, prefix=f"t{uuid.uuid4().hex[:8]}:", client=client)
    admin = redis.Redis(host="127.0.0.1", port=private_redis.port)
    try:
        assert store.create("t1", _new(OWNER)) == 1
        before = _saves(admin, store, "t1")
        with busy(private_redis, 2.0), pytest.raises(CheckpointStoreError, match=r"failed to save.*Timeout"):
            store.update("t1", 1, _state('{"i": 2}'), None, time.time())
        wait_for(lambda: _saves(admin, store, "t1") > before, 5, "the save applied once the server was free")
        time.sleep(0.2)  # a second copy, had one been sent, is applied by now
        assert _saves(admin, store, "t1") == before + 1, "the save was sent twice and counted twice"
        assert store.update("t1", 1, _state('{"i": 3}'), None, time.time()) == before + 2
    finally:
        store.close()
        admin.close()


def test_a_pooled_connection_the_server_dropped_is_replaced_and_the_save_sent_once(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    store = create_store(f"{server.url}/0")
    assert isinstance(store, RedisStore)
    admin = redis.Redis.from_url(f"{server.url}/0")
    try:
        assert store.create("t1", _new(OWNER)) == 1
        before = _saves(admin, store, "t1")
        server.stop()  # the store's idle connection is now closed at the far end
        server.start()
        assert store.update("t1", 1, _state('{"i": 2}'), None, time.time()) == before + 1
        assert _saves(admin, store, "t1") == before + 1
    finally:
        store.close()
        admin.close()
        server.stop()


class _AnswersOnceThenCloses:
    """A connection on which the server answers the first command of an exchange, then is gone."""

    def __init__(self) -> None:
        self.sent = 0
        self.answers: list[Any] = []

    def send_packed_command(self, payload: list[bytes], check_health: bool = True) -> None:
        self.sent += 1
        self.answers = [1]

    def read_response(self) -> Any:
        if self.answers:
            return self.answers.pop()
        raise redis.ConnectionError("Connection closed by server.")

    def disconnect(self) -> None:
        self.answers = []


def test_an_exchange_cut_off_after_its_first_answer_is_not_sent_again() -> None:
    """The server applied at least the first command: a re-send would apply it twice."""
    conn = _AnswersOnceThenCloses()

    class Pool:
        def make_connection(self) -> _AnswersOnceThenCloses:
            return conn

    class Client:
        connection_pool = Pool()

    wire = Wire(Client())  # type: ignore[arg-type]
    with pytest.raises(redis.ConnectionError, match="closed by server"):
        wire.exchange((("HINCRBY", "k", "saves", 1), ("HGET", "r", "fence")))
    assert conn.sent == 1
