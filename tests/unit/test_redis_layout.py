"""Where a record's recorded call lives in Redis, checked on a real redis-server.

The call (the envelope a resume sends) is a string of its own, so the record
hash holds only short values and Redis keeps it compact (a listpack, not a
hash table: ~20 allocations fewer to build and free per task). A record
written before the call moved out (``env`` inside the hash) still reads,
resumes and is deleted whole.
"""

from __future__ import annotations

import time

import redis

from celery_checkpoint.record import EncodedState, NewCheckpoint, Status
from celery_checkpoint.stores.base import ClaimOutcome
from celery_checkpoint.stores.redis import RedisStore

OWNER = "w1@host|layout"
CALL = b'{"args": [1, 2], "kwargs": {"path": "/data/rows.csv"}, "options": {"task_id": "%s", "queue": "q"}}'


def _new(task_id: str) -> NewCheckpoint:
    state = EncodedState(b'{"row": 1200, "blob": "' + b"x" * 300 + b'"}', "application/json", "utf-8")
    call = EncodedState(CALL % task_id.encode(), "application/json", "utf-8")
    return NewCheckpoint("proj.tasks.import_rows", OWNER, 4242, state, call, 0.5, time.time())


def test_the_record_hash_stays_compact_and_the_call_reads_back(
    redis_store: RedisStore, redis_admin: redis.Redis
) -> None:
    assert redis_store.create("t-1", _new("t-1")) == 1
    assert redis_admin.object("encoding", redis_store.record_key("t-1")) == b"listpack"
    assert redis_admin.get(redis_store.call_key("t-1")) == CALL % b"t-1"
    record = redis_store.get("t-1")
    assert record is not None and record.envelope.payload == CALL % b"t-1"
    assert redis_store.get_many(["t-1"]) == [record]


def test_finish_discard_and_delete_remove_the_call_too(
    redis_store: RedisStore, redis_admin: redis.Redis
) -> None:
    for task_id in ("t-2", "t-3", "t-4"):
        assert redis_store.create(task_id, _new(task_id)) == 1
    assert redis_store.finish("t-2", 1, OWNER)
    assert redis_store.delete("t-3")
    assert redis_store.park("t-4", 1, OWNER, Status.RELEASED)  # in the released set, at fence 2
    assert redis_store.discard("t-4", 2, "")
    for task_id, fence in (("t-2", 1), ("t-3", 1), ("t-4", 2)):
        keys = (
            redis_store.record_key(task_id),
            redis_store.call_key(task_id),
            redis_store.save_key(task_id, fence),
        )
        assert redis_admin.exists(*keys) == 0
    assert redis_admin.smembers(redis_store.released_key) == set()
    assert redis_admin.smembers(redis_store.owned_key(OWNER)) == set()
    assert redis_admin.exists(redis_store.done_key("t-4")) == 0, "a discard marks nothing done"


def test_a_record_written_with_the_call_in_its_hash_still_reads_resumes_and_deletes(
    redis_store: RedisStore, redis_admin: redis.Redis
) -> None:
    # What CREATE wrote before the call had a key of its own.
    task_id, call = "t-old", CALL % b"t-old"
    now = repr(time.time())
    redis_admin.hset(
        redis_store.record_key(task_id),
        mapping={
            "name": "proj.tasks.import_rows",
            "status": "running",
            "owner": OWNER,
            "pid": "4242",
            "fence": "1",
            "resumes": "0",
            "created_at": now,
            "env": call,
            "ectype": "application/json",
            "ecenc": "utf-8",
        },
    )
    redis_admin.hset(
        redis_store.save_key(task_id, 1),
        mapping={
            "state": b'{"row": 7}',
            "ctype": "application/json",
            "cenc": "utf-8",
            "saved_at": now,
            "saves": 3,
        },
    )
    redis_admin.sadd(redis_store.owned_key(OWNER), task_id)
    redis_admin.sadd(redis_store.owners_key, OWNER)

    record = redis_store.get(task_id)
    assert record is not None and record.envelope.payload == call and record.saves == 3
    claim = redis_store.claim(task_id, OWNER, "w2@host|next", max_resumes=5)
    assert claim.outcome is ClaimOutcome.CLAIMED
    assert claim.record is not None and claim.record.envelope.payload == call
    assert redis_store.delete(task_id)
    assert redis_admin.exists(redis_store.record_key(task_id), redis_store.save_key(task_id, 2)) == 0
