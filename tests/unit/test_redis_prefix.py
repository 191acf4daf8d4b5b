"""A key prefix with glob characters in it, checked on a real redis-server.

``scan()`` (what ``celery checkpoint show/purge`` read) lists keys with SCAN
MATCH, which reads its pattern as a glob. Each case pairs a prefix with a
neighbour's prefix that the unescaped glob would also match.
"""

from __future__ import annotations

import time
import uuid

import pytest

from celery_checkpoint.record import CheckpointRecord, EncodedState, NewCheckpoint, worker_id
from celery_checkpoint.stores import create_store
from celery_checkpoint.stores.redis import RedisStore
from tests.harness import RedisServer

OWNER = worker_id("w1@host", "aaaa")


def _new() -> NewCheckpoint:
    state = EncodedState(b'{"i": 1}', "application/json", "utf-8")
    return NewCheckpoint("app.task", OWNER, 4242, state, state, 0.5, time.time())


@pytest.mark.parametrize(
    ("prefix", "neighbour"),
    [
        ("ck[1]:", "ck1:"),  # unescaped: matches none of its own keys
        ("back\\slash:", "backslash:"),  # likewise: the backslash escapes the "s"
        ("cp?:", "cpX:"),
        ("c*k:", "cXYk:"),
        ("r[a-z]:", "rb:"),
    ],
)
def test_scan_lists_its_own_records_and_nothing_of_a_neighbour(
    private_redis: RedisServer, prefix: str, neighbour: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    url = f"{private_redis.url}/3"
    mine, other = create_store(url, prefix=tag + prefix), create_store(url, prefix=tag + neighbour)
    assert isinstance(mine, RedisStore) and isinstance(other, RedisStore)
    try:
        assert mine.create("t1", _new()) == 1
        assert other.create("o1", _new()) == 1
        entries = list(mine.scan())
        assert [type(e) for e in entries] == [CheckpointRecord], entries
        assert [e.task_id for e in entries if isinstance(e, CheckpointRecord)] == ["t1"]
    finally:
        mine.delete("t1")
        other.delete("o1")
        mine.close()
        other.close()
