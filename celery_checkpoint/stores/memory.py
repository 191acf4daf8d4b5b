"""A store that lives in the current process: for tests and the pytest plugin.

It is the SQLite store on a private in-memory database, so it behaves exactly
like the embedded store (same transactions, same fencing) without a file. One
connection serves every thread, serialized by a lock: in-memory databases
cannot use WAL, and shared-cache connections fail instead of waiting.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid

from ..record import EncodedState
from .sqlite import SQLiteStore


class MemoryStore(SQLiteStore):
    """Checkpoints in this process's memory (``memory://``); lost on exit."""

    def __init__(self, *, url: str = "memory://", done_ttl: float = 86400.0) -> None:
        name = f"file:celery-checkpoint-{uuid.uuid4().hex}?mode=memory"
        super().__init__(name, url=url, done_ttl=done_ttl)

    def _prepare(self) -> None:
        self._lock = threading.RLock()
        self._conn = self._connect()

    def _connection(self) -> sqlite3.Connection:
        return self._conn

    def _drop_connection(self, conn: sqlite3.Connection) -> None:
        """Keep it: this connection is the database, and closing it would lose every checkpoint."""

    def update(
        self, task_id: str, fence: int, state: EncodedState, progress: float | None, saved_at: float
    ) -> int | None:
        with self._lock:  # the file store's update takes none: its threads have their own connections
            return super().update(task_id, fence, state, progress, saved_at)

    def close(self) -> None:
        self._conn.close()
