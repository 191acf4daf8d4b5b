"""The SQLite store's per-task statements find their rows by key or index, never by a table scan.

A statement that reads a whole table costs in proportion to what the table
holds, and some tables only grow between purges: the done markers of every
task finished in the last ``checkpoint_done_ttl`` (a day by default). The
purge of expired markers once scanned that table on every finish, so a
worker's finishes got slower with every task it had finished that day.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from celery_checkpoint.record import EncodedState, NewCheckpoint, Status, worker_id
from celery_checkpoint.stores.sqlite import SQLiteStore

OWNER = worker_id("w1@host", "aaaa")
STATE = EncodedState(b'{"i": 1}', "application/json", "utf-8")


def table_scans(conn: sqlite3.Connection, statement: str) -> list[str]:
    plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
    return [row[-1] for row in plan if str(row[-1]).startswith("SCAN ")]


def test_a_runs_statements_and_the_sweeps_never_scan_a_table(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "checkpoints.db"))
    store.register(OWNER, 30.0)  # once per worker start, on a table of workers
    conn = store._connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)  # the SQL with its values bound
    try:
        for task_id, ends in (("t-done", "finish"), ("t-retried", "park")):
            assert store.peek(task_id).exists is False
            new = NewCheckpoint("app.task", OWNER, 1, STATE, STATE, 0.5, time.time())
            assert store.create(task_id, new) == 1
            assert store.update(task_id, 1, STATE, 0.6, time.time()) == 2
            if ends == "finish":
                assert store.finish(task_id, 1, OWNER)
            else:
                assert store.park(task_id, 1, OWNER, Status.WAITING, resend_after=60.0)
                assert store.takeover(task_id, 2, "", OWNER, 1) is not None
        store.heartbeat(OWNER, 30.0)
        # The steward's sweep and the resume scan, each run over every checkpoint.
        assert store.held_by(OWNER) == ["t-retried"]
        assert store.interrupted() == []
        assert store.claim("t-retried", OWNER, OWNER, max_resumes=5).record is not None
    finally:
        conn.set_trace_callback(None)
    verbs = ("SELECT", "UPDATE", "DELETE")
    checked = [s for s in dict.fromkeys(statements) if s.split(None, 1)[0].upper() in verbs]
    assert any(s.startswith("DELETE FROM done") for s in checked), "the purge of expired done markers ran"
    scans = {s: table_scans(conn, s) for s in checked}
    assert {s: plan for s, plan in scans.items() if plan} == {}
    store.close()
