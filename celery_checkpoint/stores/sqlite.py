"""The embedded store: one SQLite file, safe across a worker's processes.

WAL journal so readers never block the writer, a busy timeout so the pool
children and the main process queue up instead of failing with "database is
locked", and ``BEGIN IMMEDIATE`` around every read-then-write so two
processes cannot both claim the same checkpoint. Each thread of each process
opens its own connection (a connection must not cross ``fork``).

``update`` is the hot path (every persisted ``save()``), so it is written
flat and kept to one statement; see its docstring for what each choice saves.

Worker leases are stored with this host's wall clock, which is the same for
every process that can open the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

from ..errors import CheckpointError, CheckpointStoreError, CorruptCheckpoint
from ..record import CheckpointRecord, EncodedState, NewCheckpoint, Status, worker_host
from .base import Candidate, Claim, ClaimOutcome, ClaimRequest, CorruptEntry, Peek, resend_grace

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    task_id TEXT PRIMARY KEY,
    task_name TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    saves INTEGER NOT NULL,
    resume_count INTEGER NOT NULL,
    progress REAL,
    saved_at REAL NOT NULL,
    created_at REAL NOT NULL,
    state BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    envelope BLOB NOT NULL,
    envelope_type TEXT NOT NULL,
    envelope_encoding TEXT NOT NULL,
    parked_at REAL NOT NULL DEFAULT 0,
    -- waiting records only: when the scan may send the call again (NULL: never)
    resend_at REAL,
    -- unowned queued records: times the call was sent again with no run since
    resends INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS checkpoints_by_owner ON checkpoints (owner, status);
CREATE INDEX IF NOT EXISTS checkpoints_by_status ON checkpoints (status);
-- Every owner a checkpoint ever named; expires = 0 for one that never
-- registered a lease, so the scan can find dead owners without reading
-- the checkpoints of live ones.
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_by_expiry ON workers (expires);
-- Task ids that finished, kept done_ttl seconds. Every finish deletes the
-- expired ones; without the index that delete read the whole table, so a
-- finish cost grew with the tasks finished in the last done_ttl.
CREATE TABLE IF NOT EXISTS done (
    task_id TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS done_by_expiry ON done (expires);
"""

# Columns added since the first schema, with their definitions: a file written
# by an older version gets them when it is opened.
ADDED_COLUMNS = {"resend_at": "REAL", "resends": "INTEGER NOT NULL DEFAULT 0"}
# Indexes on added columns, created once the columns exist. The scan reads the
# overdue waiting records only, not every pending retry.
LATE_INDEXES = {
    "checkpoints_waiting": "CREATE INDEX IF NOT EXISTS checkpoints_waiting "
    "ON checkpoints (resend_at) WHERE status = 'waiting'",
}

COLUMNS = (
    "task_id, task_name, status, owner, pid, fence, saves, resume_count, progress, saved_at, "
    "created_at, state, content_type, content_encoding, envelope, envelope_type, envelope_encoding"
)
# What a read returns: the columns a record is created with, then those set later.
RECORD = f"{COLUMNS}, resend_at, resends"
ACTIVE = (Status.RUNNING.value, Status.QUEUED.value)

# A save when the store knows the run's save count: a compare-and-set on it,
# so the new count is that plus one, exactly, without reading it back.
_UPDATE = (
    "UPDATE checkpoints SET state = ?, content_type = ?, content_encoding = ?, "
    "progress = ?, saved_at = ?, saves = saves + 1 "
    "WHERE task_id = ? AND fence = ?"
)
UPDATE_KNOWN = _UPDATE + " AND saves = ?"
# A save when it does not (or the compare-and-set missed): the row says.
UPDATE_RETURNING = _UPDATE + " RETURNING saves"
# Runs whose save count a store remembers, at most: finished, parked, deleted
# and fenced-out runs are forgotten as they go, so only runs abandoned some
# other way accumulate, and this bounds them.
KNOWN_SAVES_MAX = 1024


class SQLiteStore:
    """Checkpoints in a SQLite database file (``sqlite:///path/to/file.db``)."""

    busy_timeout_ms = 10_000

    def __init__(self, path: str, *, url: str | None = None, done_ttl: float = 86400.0) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.done_ttl = done_ttl
        self._local = threading.local()
        self._lock: AbstractContextManager[Any] = nullcontext()
        # task_id -> the save count this store last wrote or read for the run
        self._saves: dict[str, int] = {}
        _STORES.add(self)
        self._prepare()
        with self._errors("open"):
            self._connection().executescript(SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a file written by an older version up to this schema.

        An up-to-date file is only read (a reader without write access can
        still open it). Otherwise in a write transaction, which looks again,
        so two processes opening the same old file do not both add a column.
        """
        with self._errors("read the schema of"):
            columns, indexes = _missing_schema(self._connection())
        if not columns and not indexes:
            return
        with self._transaction("upgrade the schema of") as conn:
            columns, indexes = _missing_schema(conn)
            for name in columns:
                conn.execute(f"ALTER TABLE checkpoints ADD COLUMN {name} {ADDED_COLUMNS[name]}")
            for name in indexes:
                conn.execute(LATE_INDEXES[name])

    # -- connections -------------------------------------------------------

    def _prepare(self) -> None:
        """Hook for subclasses that must set up before the schema is created."""

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
            uri=self.path.startswith("file:"),
        )
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        if not self.path.startswith("file:"):
            _switch_to_wal(conn, self.busy_timeout_ms / 1000)
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use.

        No ``os.getpid()`` check: a forked child starts with none (see
        ``_after_fork_in_child``), which saves ~0.3 us a call on the hot path.
        """
        try:
            conn: sqlite3.Connection = self._local.conn
        except AttributeError:
            conn = self._local.conn = self._connect()
        return conn

    def _forget_connections(self) -> None:
        """In a forked child: leave the parent's connections alone, open new ones.

        They are kept referenced, never used nor closed: SQLite forbids using a
        connection across ``fork``, and closing one (as garbage collection
        would) could wait forever on a mutex another parent thread held, or
        drop POSIX locks that a connection of this process holds on the file.
        """
        _INHERITED.append(self._local)
        self._local = threading.local()

    def _failure(self, op: str, task_id: str | None, exc: sqlite3.Error) -> CheckpointStoreError:
        subject = f"task {task_id}: " if task_id else ""
        return CheckpointStoreError(f"{subject}checkpoint store {self.url} failed to {op}: {exc}")

    @contextmanager
    def _errors(self, op: str, task_id: str | None = None) -> Iterator[None]:
        try:
            with self._lock:
                yield
        except sqlite3.Error as exc:
            raise self._failure(op, task_id, exc) from exc

    def _know_saves(self, task_id: str, saves: int) -> None:
        known = self._saves
        if len(known) >= KNOWN_SAVES_MAX and task_id not in known:
            known.clear()
        known[task_id] = saves

    @contextmanager
    def _transaction(self, op: str, task_id: str | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction that nothing leaves open on this thread's connection.

        ``BEGIN`` and ``COMMIT`` are inside the guard: ``BEGIN IMMEDIATE`` can
        wait up to the busy timeout for the lock, and an exception raised by a
        signal handler during that wait (a soft time limit) surfaces just
        after it returns. Left open, the transaction would lock every other
        process out and swallow this thread's later autocommit saves, which
        would report success and never be committed.
        """
        with self._errors(op, task_id):
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._roll_back(conn)
                raise

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """End the open transaction, if any, keeping the exception that interrupted it.

        A connection that cannot roll back is dropped: closing it rolls back,
        and this thread opens a new one on its next call.
        """
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except BaseException as exc:
            self._drop_connection(conn)
            if not isinstance(exc, sqlite3.Error):
                raise

    def _drop_connection(self, conn: sqlite3.Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            del self._local.conn
        with suppress(sqlite3.Error):  # forgotten either way: never used again
            conn.close()

    # -- runs --------------------------------------------------------------

    def peek(self, task_id: str) -> Peek:
        with self._errors("read", task_id):
            conn = self._connection()
            now = time.time()
            row = conn.execute(
                "SELECT c.status, c.owner, c.pid, c.fence, w.expires FROM checkpoints c "
                "LEFT JOIN workers w ON w.worker_id = c.owner WHERE c.task_id = ?",
                (task_id,),
            ).fetchone()
            if row is None:
                done = conn.execute(
                    "SELECT 1 FROM done WHERE task_id = ? AND expires > ?", (task_id, now)
                ).fetchone()
                return Peek(exists=False, done=done is not None)
            status, owner, pid, fence, expires = row
            try:
                parsed = Status(status)
            except ValueError:  # as Redis reports it: the caller handles a corrupt checkpoint, not this
                raise CorruptCheckpoint(f"task {task_id}: unknown checkpoint status {status!r}") from None
            return Peek(
                exists=True,
                done=False,
                status=parsed,
                owner=owner,
                pid=pid,
                fence=fence,
                owner_alive=expires is not None and expires > now,
            )

    def takeover(
        self, task_id: str, expected_fence: int, expected_owner: str, owner: str, pid: int
    ) -> CheckpointRecord | None:
        with self._transaction("take over", task_id) as conn:
            cur = conn.execute(
                "UPDATE checkpoints SET owner = ?, pid = ?, status = ?, fence = fence + 1, resends = 0 "
                "WHERE task_id = ? AND fence = ?",
                (owner, pid, Status.RUNNING.value, task_id, expected_fence),
            )
            if cur.rowcount != 1:
                return None
            _remember_owner(conn, owner)
            row = conn.execute(f"SELECT {RECORD} FROM checkpoints WHERE task_id = ?", (task_id,)).fetchone()
        record = _record(row)
        self._know_saves(task_id, record.saves)
        return record

    def create(self, task_id: str, new: NewCheckpoint) -> int | None:
        with self._transaction("save", task_id) as conn:
            if conn.execute(
                "SELECT 1 FROM done WHERE task_id = ? AND expires > ?", (task_id, new.saved_at)
            ).fetchone():
                return None
            cur = conn.execute(
                f"INSERT OR IGNORE INTO checkpoints ({COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    new.task_name,
                    Status.RUNNING.value,
                    new.owner,
                    new.pid,
                    new.fence,
                    new.progress,
                    new.saved_at,
                    new.saved_at,
                    new.state.payload,
                    new.state.content_type,
                    new.state.content_encoding,
                    new.envelope.payload,
                    new.envelope.content_type,
                    new.envelope.content_encoding,
                ),
            )
            if cur.rowcount != 1:
                return None
            _remember_owner(conn, new.owner)
        self._know_saves(task_id, 1)
        return new.fence

    def update(
        self, task_id: str, fence: int, state: EncodedState, progress: float | None, saved_at: float
    ) -> int | None:
        """One fenced UPDATE in autocommit, as close to a raw upsert as it gets.

        The count comes without ``RETURNING`` when the store knows it: a
        ``RETURNING`` row costs ~3 us at 1 KB (SQLite buffers it, the statement
        steps twice, Python builds a row), a third of what the library adds
        over the raw write. The UPDATE then also requires ``saves`` to be the
        known count, so when it applies the new count is exactly one more,
        whoever else shares the file. When it does not (count unknown, another
        connection saved, or fenced out), ``RETURNING`` decides: two statements,
        but only on a first save in a process or a lost run.

        No generator context manager either (~1 us), and no lock: each thread
        has its own connection (the in-memory store, whose one connection
        every thread shares, takes its lock around this call).
        """
        known_saves = self._saves
        known = known_saves.get(task_id)
        payload, ctype, cenc = state
        try:
            conn = self._connection()
            if known is not None:
                known_params = (payload, ctype, cenc, progress, saved_at, task_id, fence, known)
                if conn.execute(UPDATE_KNOWN, known_params).rowcount == 1:
                    known_saves[task_id] = known + 1  # a known key: the bound holds
                    return known + 1
            params = (payload, ctype, cenc, progress, saved_at, task_id, fence)
            row = conn.execute(UPDATE_RETURNING, params).fetchone()
        except sqlite3.Error as exc:
            raise self._failure("save", task_id, exc) from exc
        if row is None:
            known_saves.pop(task_id, None)
            return None
        saves = int(row[0])
        self._know_saves(task_id, saves)
        return saves

    def finish(self, task_id: str, fence: int, owner: str) -> bool:
        with self._transaction("delete", task_id) as conn:
            cur = conn.execute("DELETE FROM checkpoints WHERE task_id = ? AND fence = ?", (task_id, fence))
            if cur.rowcount != 1:
                return False
            self._saves.pop(task_id, None)
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO done (task_id, expires) VALUES (?, ?)",
                (task_id, now + self.done_ttl),
            )
            conn.execute("DELETE FROM done WHERE expires <= ?", (now,))
        return True

    def discard(self, task_id: str, fence: int, owner: str) -> bool:
        """:meth:`finish` without the done marker: one fenced DELETE, atomic on its own."""
        with self._errors("delete", task_id):
            cur = self._connection().execute(
                "DELETE FROM checkpoints WHERE task_id = ? AND fence = ?", (task_id, fence)
            )
        self._saves.pop(task_id, None)
        return cur.rowcount == 1

    def park(
        self,
        task_id: str,
        fence: int,
        owner: str,
        status: Status,
        resend_after: float | None = None,
        call: EncodedState | None = None,
        resume_count: int | None = None,
    ) -> bool:
        now = time.time()
        resend_at = now + resend_after if status is Status.WAITING and resend_after is not None else None
        sql = (
            "UPDATE checkpoints SET status = ?, owner = '', pid = 0, fence = fence + 1, "
            "parked_at = ?, resend_at = ?"
        )
        params: tuple[Any, ...] = (status.value, now, resend_at)
        if call is not None:
            sql += ", envelope = ?, envelope_type = ?, envelope_encoding = ?"
            params += tuple(call)
        if resume_count is not None:
            sql += ", resume_count = ?"
            params += (resume_count,)
        with self._errors("park", task_id):
            cur = self._connection().execute(
                f"{sql} WHERE task_id = ? AND fence = ?", (*params, task_id, fence)
            )
        self._saves.pop(task_id, None)
        return cur.rowcount == 1

    # -- workers -----------------------------------------------------------

    def register(self, worker_id: str, ttl: float) -> None:
        host = worker_host(worker_id)
        with self._transaction("register worker") as conn:
            conn.execute(
                "UPDATE workers SET expires = 0 WHERE host = ? AND worker_id != ?", (host, worker_id)
            )
            _upsert_lease(conn, worker_id, time.time() + ttl)

    def heartbeat(self, worker_id: str, ttl: float) -> None:
        with self._errors("renew the lease of"):
            _upsert_lease(self._connection(), worker_id, time.time() + ttl)

    def retire(self, worker_id: str) -> None:
        with self._errors("retire"):
            self._connection().execute("UPDATE workers SET expires = 0 WHERE worker_id = ?", (worker_id,))

    def leases(self) -> dict[str, float]:
        with self._errors("read leases"):
            rows = self._connection().execute("SELECT worker_id, expires FROM workers").fetchall()
        return {worker: expires for worker, expires in rows}

    def interrupted(self) -> list[Candidate]:
        now = time.time()
        with self._transaction("scan") as conn:
            dead = [w for (w,) in conn.execute("SELECT worker_id FROM workers WHERE expires <= ?", (now,))]
            found: list[Candidate] = []
            for owner in dead:
                rows = conn.execute(
                    "SELECT task_id FROM checkpoints WHERE owner = ? AND status IN (?, ?)",
                    (owner, *ACTIVE),
                ).fetchall()
                found.extend(Candidate(task_id, owner) for (task_id,) in rows)
                if (
                    not rows
                    and not conn.execute(
                        "SELECT 1 FROM checkpoints WHERE owner = ? LIMIT 1", (owner,)
                    ).fetchone()
                ):
                    conn.execute("DELETE FROM workers WHERE worker_id = ?", (owner,))
            released = conn.execute(
                "SELECT task_id, owner FROM checkpoints WHERE status IN (?, ?) AND owner = ''",
                (Status.RELEASED.value, Status.QUEUED.value),
            ).fetchall()
            found.extend(Candidate(task_id, owner) for task_id, owner in released)
            overdue = conn.execute(
                "SELECT task_id FROM checkpoints WHERE status = 'waiting' AND resend_at <= ? AND owner = ''",
                (now,),
            ).fetchall()
            found.extend(Candidate(task_id, "") for (task_id,) in overdue)
        return found

    def held_by(self, worker_id: str) -> list[str]:
        with self._errors("read owned checkpoints"):  # a read: no write lock, as in get()
            rows = (
                self._connection()
                .execute(
                    "SELECT task_id FROM checkpoints WHERE owner = ? AND status IN (?, ?) ORDER BY task_id",
                    (worker_id, *ACTIVE),
                )
                .fetchall()
            )
        return [task_id for (task_id,) in rows]

    def claim(
        self,
        task_id: str,
        expected_owner: str,
        claimer: str,
        max_resumes: int,
        released_grace: float = 0.0,
        queued_grace: float | None = None,
        expected_fence: int | None = None,
    ) -> Claim:
        now = time.time()
        with self._transaction("claim", task_id) as conn:
            row = conn.execute(
                "SELECT c.status, c.owner, c.resume_count, c.parked_at, c.resend_at, c.resends, c.fence, "
                "w.expires FROM checkpoints c LEFT JOIN workers w ON w.worker_id = c.owner "
                "WHERE c.task_id = ?",
                (task_id,),
            ).fetchone()
            if row is None:
                return Claim(ClaimOutcome.GONE)
            status, owner, resume_count, parked_at, resend_at, resends, fence, expires = row
            _require_numbers(
                task_id,
                fence=fence,
                resume_count=resume_count,
                parked_at=parked_at,
                resend_at=resend_at,
                resends=resends,
            )
            if expected_fence is not None and fence != expected_fence:
                return Claim(ClaimOutcome.GONE)  # changed hands since the caller's peek
            owner_alive = expires is not None and expires > now
            unowned = owner == "" and queued_grace is not None
            if unowned and status in (Status.QUEUED.value, Status.WAITING.value):
                # a re-send: the message (a resume's, or a retry's) was lost
                if status == Status.QUEUED.value:
                    due = now - parked_at >= resend_grace(queued_grace or 0.0, resends)
                else:
                    due = resend_at is not None and now >= resend_at
                if not due:
                    return Claim(ClaimOutcome.GONE)
                conn.execute(
                    "UPDATE checkpoints SET owner = ?, status = ?, resend_at = NULL, fence = fence + 1, "
                    "resends = resends + 1 WHERE task_id = ?",
                    (claimer, Status.QUEUED.value, task_id),
                )
                _remember_owner(conn, claimer)
                row = conn.execute(
                    f"SELECT {RECORD} FROM checkpoints WHERE task_id = ?", (task_id,)
                ).fetchone()
                return Claim(ClaimOutcome.CLAIMED, _record(row))
            claimable = (status == Status.RELEASED.value and now - parked_at >= released_grace) or (
                # a worker may always claim its own runs: it knows when one was lost
                status in ACTIVE
                and owner != ""
                and owner == expected_owner
                and (owner == claimer or not owner_alive)
            )
            if not claimable:
                return Claim(ClaimOutcome.GONE)
            if resume_count >= max_resumes:
                conn.execute(
                    "UPDATE checkpoints SET status = ?, fence = fence + 1 WHERE task_id = ?",
                    (Status.POISONED.value, task_id),
                )
                outcome = ClaimOutcome.POISONED
            else:
                conn.execute(
                    "UPDATE checkpoints SET status = ?, owner = ?, pid = 0, fence = fence + 1, "
                    "resume_count = resume_count + 1, resends = 0 WHERE task_id = ?",
                    (Status.QUEUED.value, claimer, task_id),
                )
                _remember_owner(conn, claimer)
                outcome = ClaimOutcome.CLAIMED
            record = conn.execute(
                f"SELECT {RECORD} FROM checkpoints WHERE task_id = ?", (task_id,)
            ).fetchone()
        return Claim(outcome, _record(record))

    def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        claimer: str,
        released_grace: float = 0.0,
        queued_grace: float | None = None,
    ) -> list[Claim | CheckpointError]:
        claims: list[Claim | CheckpointError] = []
        for request in requests:  # a local file: one transaction each costs no round trip
            try:
                claims.append(
                    self.claim(
                        request.task_id,
                        request.expected_owner,
                        claimer,
                        request.max_resumes,
                        released_grace,
                        queued_grace,
                        request.expected_fence,
                    )
                )
            except CorruptCheckpoint as exc:  # a store error raises, as the Protocol says
                claims.append(exc)
        return claims

    def park_many(self, parks: Sequence[tuple[str, int]], owner: str, status: Status) -> list[bool]:
        return [self.park(task_id, fence, owner, status) for task_id, fence in parks]

    # -- inspection --------------------------------------------------------

    def get(self, task_id: str) -> CheckpointRecord | None:
        with self._errors("read", task_id):
            row = (
                self._connection()
                .execute(f"SELECT {RECORD} FROM checkpoints WHERE task_id = ?", (task_id,))
                .fetchone()
            )
        return None if row is None else _record(row)

    def get_many(self, task_ids: Sequence[str]) -> list[CheckpointRecord | CorruptEntry | None]:
        found: list[CheckpointRecord | CorruptEntry | None] = []
        for task_id in task_ids:  # a local file: one query each costs no round trip
            try:
                found.append(self.get(task_id))
            except CorruptCheckpoint as exc:
                found.append(CorruptEntry(task_id, str(exc)))
        return found

    def scan(self) -> Iterator[CheckpointRecord | CorruptEntry]:
        with self._errors("list"):
            rows = (
                self._connection().execute(f"SELECT {RECORD} FROM checkpoints ORDER BY created_at").fetchall()
            )
        for row in rows:
            try:
                yield _record(row)
            except CorruptCheckpoint as exc:
                yield CorruptEntry(str(row[0]), str(exc))

    def delete(self, task_id: str) -> bool:
        with self._errors("delete", task_id):
            cur = self._connection().execute("DELETE FROM checkpoints WHERE task_id = ?", (task_id,))
        self._saves.pop(task_id, None)
        return cur.rowcount == 1

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local = threading.local()


# Every store of this process, so a forked child can reset their connections.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
# Connections inherited across fork: held, never used nor closed.
_INHERITED: list[threading.local] = []


def _after_fork_in_child() -> None:
    """Run by ``os.fork`` in the child (multiprocessing and billiard fork this way).

    Replaces a per-call ``os.getpid()`` comparison: the child's threads find
    no connection and open their own.
    """
    for store in list(_STORES):
        store._forget_connections()


if hasattr(os, "register_at_fork"):  # absent where there is no fork (Windows)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _missing_schema(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """The added columns and late indexes this file lacks."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")}
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    return [c for c in ADDED_COLUMNS if c not in columns], [i for i in LATE_INDEXES if i not in indexes]


def _remember_owner(conn: sqlite3.Connection, owner: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO workers (worker_id, host, expires) VALUES (?, ?, 0)",
        (owner, worker_host(owner)),
    )


def _switch_to_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out another process that opens the file too.

    On a file no one has switched yet, two connections switching at once
    (a worker's main process and its pool, or two workers starting) can get
    "database is locked" at once: this pragma does not wait on the busy timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _upsert_lease(conn: sqlite3.Connection, worker_id: str, expires: float) -> None:
    conn.execute(
        "INSERT INTO workers (worker_id, host, expires) VALUES (?, ?, ?) "
        "ON CONFLICT (worker_id) DO UPDATE SET expires = excluded.expires",
        (worker_id, worker_host(worker_id), expires),
    )


def _require_numbers(task_id: str, **columns: Any) -> None:
    """Raise ``CorruptCheckpoint`` unless every one of ``columns`` is a number (or ``NULL``).

    SQLite keeps whatever a column is given (text stays text in an INTEGER
    column). A claim compares and counts with these: text there would fail
    as a ``TypeError`` (escaping ``claim_many``, which reports a corrupt
    record in its slot), or be counted as 0 and claimed. ``None`` passes:
    the schema lets only ``resend_at`` be ``NULL``.
    """
    for name, value in columns.items():
        if value is not None and not isinstance(value, int | float):
            raise CorruptCheckpoint(f"task {task_id}: checkpoint row is malformed: {name} is {value!r}")


def _status(value: Any) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise ValueError(f"unknown checkpoint status {value!r}") from None


def _record(row: Any) -> CheckpointRecord:
    try:
        return _parse_row(row)
    except (ValueError, TypeError) as exc:
        raise CorruptCheckpoint(f"task {row[0]}: checkpoint row is malformed: {exc}") from exc


def _parse_row(row: Any) -> CheckpointRecord:
    (
        task_id,
        task_name,
        status,
        owner,
        pid,
        fence,
        saves,
        resume_count,
        progress,
        saved_at,
        created_at,
        state,
        content_type,
        content_encoding,
        envelope,
        envelope_type,
        envelope_encoding,
        resend_at,
        resends,
    ) = row
    return CheckpointRecord(
        task_id=task_id,
        task_name=task_name,
        status=_status(status),
        owner=owner,
        pid=int(pid),
        fence=int(fence),
        saves=int(saves),
        resume_count=int(resume_count),
        progress=None if progress is None else float(progress),
        saved_at=float(saved_at),
        created_at=float(created_at),
        state=EncodedState(bytes(state), content_type, content_encoding),
        envelope=EncodedState(bytes(envelope), envelope_type, envelope_encoding),
        resend_at=None if resend_at is None else float(resend_at),
        resends=int(resends),
    )
