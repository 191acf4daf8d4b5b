"""A successful run's checkpoint is deleted without waiting for Redis's answer.

The delete is sent and its answer read later (see ``redis_wire``). These
tests check, against a real redis-server, that nothing is lost by not
waiting: the next command sees the delete applied, and a delete that failed
(an error answer, or a connection lost before the answer came) is found
and retried until the checkpoint is gone, with or without further work in
the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from celery_checkpoint.checkpointer import Checkpointer
from celery_checkpoint.errors import CheckpointStoreError
from celery_checkpoint.stores.redis import RedisStore
from celery_checkpoint.stores.redis_wire import COLLECT_AFTER
from tests.harness import wait_for
from tests.unit.test_checkpointer import OWNER, make
from tests.unit.test_store_contract import _new


def _saved_run(redis_store: RedisStore, task_id: str) -> Checkpointer:
    cp = make(redis_store, task_id=task_id)
    assert cp.save({"i": 1})
    assert redis_store.peek(task_id).exists
    return cp


def test_the_next_command_sees_the_delete_applied(redis_store: RedisStore) -> None:
    failures: list[CheckpointStoreError] = []
    for n in range(50):
        task_id = f"t{n}"
        assert redis_store.create(task_id, _new(OWNER)) == 1
        redis_store.finish_nowait(task_id, 1, OWNER, failures.append)
        peek = redis_store.peek(task_id)
        assert not peek.exists and peek.done, "a command sent after the delete must see it applied"
    assert failures == []


def test_a_completed_run_leaves_no_checkpoint_and_marks_the_task_done(redis_store: RedisStore) -> None:
    cp = _saved_run(redis_store, "t1")
    cp.complete()
    assert cp.fence == 0
    wait_for(lambda: redis_store.peek("t1").done, 5, "the delete applied")
    assert redis_store.get("t1") is None


@contextmanager
def full(redis_admin: redis.Redis) -> Iterator[None]:
    """The server refuses writes that need memory (maxmemory reached, noeviction)."""
    redis_admin.config_set("maxmemory-policy", "noeviction")
    redis_admin.config_set("maxmemory", 1)
    try:
        yield
    finally:
        redis_admin.config_set("maxmemory", 0)


def test_an_error_answer_is_found_by_the_next_command_and_the_delete_retried(
    redis_store: RedisStore, redis_admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cp = _saved_run(redis_store, "t1")
    with caplog.at_level(logging.WARNING, logger="celery_checkpoint"), full(redis_admin):
        cp.complete()
        assert redis_store.peek("t1").exists, "the refused delete must have changed nothing"
        assert "could not delete its checkpoint, will retry" in caplog.text
        assert "used memory > 'maxmemory'" in caplog.text
        time.sleep(1.0)  # the background retry keeps failing while the server is full
        assert redis_store.peek("t1").exists
    wait_for(lambda: redis_store.peek("t1").done, 10, "the delete retried once the server had room")
    assert redis_store.get("t1") is None


def test_an_error_answer_is_found_even_if_the_process_gets_no_more_work(
    redis_store: RedisStore, redis_admin: redis.Redis
) -> None:
    cp = _saved_run(redis_store, "t1")
    with full(redis_admin):
        cp.complete()
        # Nothing else is sent through this store: the idle connection's answer is collected.
        time.sleep(COLLECT_AFTER * 2)
    wait_for(lambda: redis_admin.exists(redis_store.done_key("t1")), 10, "the delete retried")
    assert not redis_admin.exists(redis_store.record_key("t1"))


def _complete_and_drop_the_connection(cp: Checkpointer, redis_admin: redis.Redis) -> None:
    """``cp.complete()`` while the server holds writes, then kill every other client:
    the delete, still waiting in the server, is dropped unanswered."""
    admin_id = redis_admin.client_id()
    redis_admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    try:
        cp.complete()
        for client in redis_admin.client_list():
            if int(client["id"]) != admin_id:
                redis_admin.client_kill_filter(_id=int(client["id"]))
    finally:
        redis_admin.execute_command("CLIENT", "UNPAUSE")


def test_a_connection_lost_before_the_answer_is_a_failed_delete_and_retried(
    redis_store: RedisStore, redis_admin: redis.Redis
) -> None:
    _complete_and_drop_the_connection(_saved_run(redis_store, "t1"), redis_admin)
    assert redis_admin.exists(redis_store.record_key("t1")), "the dropped delete must not have been applied"
    # Nothing else is sent through this store: the collector finds the lost answer.
    wait_for(
        lambda: redis_admin.exists(redis_store.done_key("t1")), COLLECT_AFTER * 3 + 10, "the delete retried"
    )
    assert not redis_admin.exists(redis_store.record_key("t1"))


def test_a_connection_lost_before_the_answer_is_found_by_the_next_command(
    redis_store: RedisStore, redis_admin: redis.Redis
) -> None:
    _complete_and_drop_the_connection(_saved_run(redis_store, "t1"), redis_admin)
    # The next command goes through on a new connection and sees the delete not applied ...
    assert redis_store.peek("t1").exists
    # ... and the lost delete is retried in the background.
    wait_for(lambda: redis_store.peek("t1").done, 10, "the delete retried")
