"""A SQLite file written by an earlier version opens, keeps its checkpoints and gains the new columns."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from celery_checkpoint.record import Status, worker_id
from celery_checkpoint.stores.sqlite import SCHEMA, SQLiteStore

OWNER = worker_id("w1@host", "aaaa")


def _write_an_old_file(path: Path) -> None:
    """The schema as it was before ``resend_at`` and ``resends``, holding one retry's checkpoint."""
    old_schema = re.sub(r",\n\s*--[^\n]*\n\s*resend_at REAL", "", SCHEMA)
    old_schema = re.sub(r",\n\s*--[^\n]*\n\s*resends INTEGER NOT NULL DEFAULT 0", "", old_schema)
    assert "resend_at" not in old_schema and "resends" not in old_schema
    conn = sqlite3.connect(path)
    conn.executescript(old_schema)
    now = time.time()
    conn.execute(
        "INSERT INTO checkpoints VALUES (?, 'app.task', 'waiting', '', 0, 2, 3, 0, 0.5, ?, ?, "
        "?, 'application/json', 'utf-8', ?, 'application/json', 'utf-8', ?)",
        ("old-retry", now, now, b'{"i": 3}', b'{"args": []}', now),
    )
    conn.commit()
    conn.close()


def test_an_older_file_gains_the_resend_columns_and_keeps_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    _write_an_old_file(path)
    store = SQLiteStore(str(path))
    record = store.get("old-retry")
    assert record is not None and record.status is Status.WAITING and record.state.payload == b'{"i": 3}'
    assert record.resends == 0
    assert store.interrupted() == [], "a retry parked by an older version is never re-sent"
    taken = store.takeover("old-retry", 2, "", OWNER, 1)
    assert taken is not None and taken.saves == 3
    assert store.park("old-retry", taken.fence, OWNER, Status.WAITING, resend_after=0)
    assert [c.task_id for c in store.interrupted()] == ["old-retry"]
    store.close()
    again = SQLiteStore(str(path))  # opening an up-to-date file changes nothing
    assert [c.task_id for c in again.interrupted()] == ["old-retry"]
    again.close()


def test_an_up_to_date_file_opens_without_writing(tmp_path: Path) -> None:
    """Opening is a read: it succeeds while another process holds the write lock."""
    path = tmp_path / "checkpoints.db"
    SQLiteStore(str(path)).close()

    class Impatient(SQLiteStore):
        busy_timeout_ms = 100

    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        store = Impatient(str(path))
        assert store.get("anything") is None
        store.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
