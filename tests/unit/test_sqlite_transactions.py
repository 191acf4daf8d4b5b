"""No write transaction outlives the store call that began it.

Each thread keeps its SQLite connection for the life of the process, so a
transaction left open on it would hold the file's write lock ("database is
locked" for every other process) and take in the thread's later autocommit
saves, which would report success and never be committed.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from celery_checkpoint.errors import CheckpointStoreError
from celery_checkpoint.record import EncodedState, NewCheckpoint, worker_id
from celery_checkpoint.stores.memory import MemoryStore
from celery_checkpoint.stores.sqlite import SQLiteStore

OWNER = worker_id("w1@host", "aaaa")


def _state(payload: bytes) -> EncodedState:
    return EncodedState(payload, "application/json", "utf-8")


def _new() -> NewCheckpoint:
    return NewCheckpoint("app.task", OWNER, 4242, _state(b'{"i": 1}'), _state(b"{}"), None, time.time())


def _other_process(path: Path) -> sqlite3.Connection:
    """A connection of its own, as another pool process has; it gives up on a lock quickly."""
    return sqlite3.connect(path, isolation_level=None, timeout=0.2, check_same_thread=False)


def _assert_nothing_left_open(store: SQLiteStore, path: Path) -> None:
    assert not store._connection().in_transaction
    other = _other_process(path)
    try:
        other.execute("BEGIN IMMEDIATE")  # "database is locked" while a transaction is left open
        other.execute("COMMIT")
    finally:
        other.close()
    assert store.update("t1", 1, _state(b'{"i": 2}'), None, time.time()) == 2
    record = SQLiteStore(str(path)).get("t1")  # another process's view: the save was committed
    assert record is not None and record.state.payload == b'{"i": 2}'


def test_a_soft_time_limit_while_waiting_for_the_write_lock_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpoints.db"
    store = SQLiteStore(str(path))
    assert store.create("t1", _new()) == 1
    holder = _other_process(path)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, holder.execute, ("COMMIT",))

    def soft_time_limit(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, soft_time_limit)
    release.start()
    signal.setitimer(signal.ITIMER_REAL, 0.1)  # fires while BEGIN IMMEDIATE waits for the holder
    try:
        with pytest.raises(SoftTimeLimitExceeded):
            store.register(OWNER, 30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        release.join()
        holder.close()
    _assert_nothing_left_open(store, path)
    assert store.leases()[OWNER] == 0, "the interrupted registration was rolled back"


class _Faulty:
    """This thread's connection, failing statements: ``before`` instead of running one,
    ``after`` once it ran."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        before: dict[str, BaseException] | None = None,
        after: dict[str, BaseException] | None = None,
    ) -> None:
        self.conn, self.before, self.after = conn, before or {}, after or {}

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        if sql in self.before:
            raise self.before[sql]
        cursor = self.conn.execute(sql, *params)
        if sql in self.after:
            raise self.after[sql]
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_a_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    store = SQLiteStore(str(path))
    assert store.create("t1", _new()) == 1
    real = store._connection()
    store._local.conn = _Faulty(real, before={"COMMIT": sqlite3.OperationalError("disk I/O error")})
    with pytest.raises(CheckpointStoreError, match="disk I/O error"):
        store.register(OWNER, 30)
    store._local.conn = real
    _assert_nothing_left_open(store, path)
    assert store.leases()[OWNER] == 0


def test_a_connection_that_cannot_roll_back_is_closed_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    store = SQLiteStore(str(path))
    assert store.create("t1", _new()) == 1
    real = store._connection()
    faulty = _Faulty(
        real,
        after={"BEGIN IMMEDIATE": SoftTimeLimitExceeded()},
        before={"ROLLBACK": sqlite3.OperationalError("cannot rollback")},
    )
    store._local.conn = faulty
    with pytest.raises(SoftTimeLimitExceeded):  # the interruption, not the failed rollback
        store.register(OWNER, 30)
    assert store._connection() is not faulty, "a connection that may hold a transaction is not reused"
    with pytest.raises(sqlite3.ProgrammingError):
        real.execute("SELECT 1")  # closed, which rolled its transaction back
    _assert_nothing_left_open(store, path)
    assert store.leases()[OWNER] == 0


def test_the_memory_store_rolls_back_an_interrupted_begin_and_keeps_its_checkpoints() -> None:
    store = MemoryStore()
    assert store.create("t1", _new()) == 1
    real = store._conn
    store._conn = _Faulty(real, after={"BEGIN IMMEDIATE": SoftTimeLimitExceeded()})  # type: ignore[assignment]
    with pytest.raises(SoftTimeLimitExceeded):
        store.register(OWNER, 30)
    store._conn = real
    assert not real.in_transaction
    store.register(OWNER, 30)  # "cannot start a transaction within a transaction" if it were left open
    assert store.update("t1", 1, _state(b'{"i": 2}'), None, time.time()) == 2
    record = store.get("t1")
    assert record is not None and record.state.payload == b'{"i": 2}'
