"""The wire under the per-task Redis commands: packed by hand, on connections of our own.

Every checkpointed task sends a few commands (peek, create, save, finish).
On a 2-core machine a round trip through redis-py's pool cost ~70-85 us of
client CPU, of which ~40 us is the pool (a pid check, a lock, metrics, a
readiness ``poll`` per checkout) and the retry wrapper; a connection kept
by the store and used through its public ``send_packed_command`` /
``read_response`` costs ~45 us, against ~41 us for a bare socket. The
connections are still made by the client's pool (``make_connection``), so
TLS, AUTH, the database number, timeouts and the hiredis parser are
redis-py's own.

Commands whose answer matters only when it is an error (a finished task's
delete) can be sent without waiting (:meth:`Wire.send`): their replies are
read by the next exchange on the same connection, or by a collector thread
once the connection has been idle for :data:`COLLECT_AFTER` seconds.
Waiting for such a reply cost a short task a sleep and a wake-up of its
process, ~40 us of CPU and ~8 % of a 2-core worker's throughput
(BENCHMARKS.md, figure 5).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis

logger = logging.getLogger(__name__)

#: Called with the error when a command sent without waiting failed: an error
#: reply, or the connection lost before its reply was read (it may or may not
#: have been applied).
OnFailure = Callable[[Exception], None]

#: Seconds a connection may sit idle with unread replies before the collector reads them.
COLLECT_AFTER = 1.0

#: Live ``Wire`` objects, so a forked child can drop its parent's sockets.
_wires: weakref.WeakSet[Wire] = weakref.WeakSet()
_monotonic = time.monotonic


class _Line:
    """A dedicated connection and the replies still owed on it, oldest first."""

    __slots__ = ("conn", "owed", "sent_at")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.owed: list[tuple[int, OnFailure]] = []
        self.sent_at = 0.0


class Wire:
    """Idle dedicated connections, one taken per exchange (so threads never share one).

    Replies are always read in order on each connection: whoever takes a
    connection reads the replies still owed on it before its own. Redis
    applies a connection's commands in order, and a single-threaded process
    (a prefork pool child) always takes the connection it used last, so
    what it sent without waiting is applied before anything it sends next.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        # list.pop/append/remove are atomic: taking and giving back needs no lock.
        self._idle: list[_Line] = []
        self._collector: threading.Thread | None = None
        self._closed = False
        _wires.add(self)

    def exchange(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """Send ``commands`` in one write and read every reply: one round trip.

        Replies still owed on the connection are read after the send, in
        the same wait (they are usually in the socket buffer already). Every
        reply is read before an error reply is raised, and a connection
        that fails or is interrupted in the middle (a read timeout, a soft
        time limit during ``recv``) is closed, so no connection is ever
        given back out of step.

        The commands are sent again on a new connection only when that
        cannot apply them twice: see :meth:`exchange_packed`.
        """
        return self.exchange_packed(pack(commands), len(commands))

    def exchange_packed(self, packed: bytes, count: int) -> list[Any]:
        """:meth:`exchange` for ``count`` commands already in the Redis protocol.

        Sent again, once, on a new connection only when the server cannot be
        working on the first send: the send failed, or the connection was
        found closed before the first answer to these commands. That is how
        a pooled connection the server dropped while it sat idle (a restart,
        its idle ``timeout``) shows itself: the send goes out, the first read
        finds the connection closed. (A server that died between applying
        and answering looks the same; what it applied died with it, unless
        it had persisted it.)

        A read timeout is never followed by a re-send. redis-py's ``Retry``
        re-sends after any ``ConnectionError`` or ``TimeoutError``: it is
        at-least-once by design, and leaves idempotence to the caller. But a
        server that timed out has the commands and is only slow (a fork, a
        long script): it applies them later anyway, and a second copy would
        be applied too (a save counted twice, a script that is not
        idempotent run twice). The line is closed and the timeout raised;
        the store turns it into ``CheckpointStoreError``.
        """
        payload = [packed]
        line = self._take()
        try:
            try:
                replies = _send_and_read(line, payload, count)
            except _Unanswered as exc:
                _lose(line, exc)
                replies = _send_and_read(line, payload, count)  # reconnects first
        except BaseException as exc:
            _lose(line, exc)
            raise
        self._idle.append(line)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def send(self, commands: tuple[tuple[Any, ...], ...], on_failure: OnFailure) -> None:
        """Send ``commands`` in one write and return without reading their replies.

        A failure to send raises here, as in :meth:`exchange`. A failure
        learnt later (an error reply, or the connection lost before the
        replies were read) is passed to ``on_failure``, in whichever thread
        reads the replies; ``on_failure`` must not block.
        """
        self.send_packed(pack(commands), len(commands), on_failure)

    def send_packed(self, packed: bytes, count: int, on_failure: OnFailure) -> None:
        """:meth:`send` for ``count`` commands already in the Redis protocol."""
        payload = [packed]
        line = self._take()
        conn = line.conn
        try:
            try:
                conn.send_packed_command(payload, check_health=False)
            except (redis.ConnectionError, redis.TimeoutError):
                _lose(line)
                conn.send_packed_command(payload, check_health=False)  # reconnects first
        except BaseException as exc:
            _lose(line, exc)
            raise
        line.owed.append((count, on_failure))
        line.sent_at = _monotonic()
        self._idle.append(line)
        if self._collector is None:
            self._start_collector()

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for line in idle:
            try:
                _collect(line)
            except Exception:  # closing: report what can be reported, never raise
                logger.debug("unread Redis replies lost at close", exc_info=True)
            line.conn.disconnect()

    def _take(self) -> _Line:
        try:
            return self._idle.pop()
        except IndexError:
            return _Line(self._pool.make_connection())

    def _start_collector(self) -> None:
        collector = threading.Thread(target=self._collect_idle, name="checkpoint-redis-replies", daemon=True)
        self._collector = collector
        collector.start()

    def _collect_idle(self) -> None:
        """Read the replies owed on connections nobody has used for a while.

        So that an error reply to a command sent without waiting is acted on
        within seconds even when the process gets no more work.
        """
        while not self._closed:
            time.sleep(COLLECT_AFTER)
            now = _monotonic()
            for line in list(self._idle):
                if not line.owed or now - line.sent_at < COLLECT_AFTER:
                    continue
                try:
                    self._idle.remove(line)
                except ValueError:
                    continue  # taken by an exchange, which reads them itself
                try:
                    _collect(line)
                except Exception:
                    logger.debug("collecting unread Redis replies failed", exc_info=True)
                self._idle.append(line)

    def _forget_after_fork(self) -> None:
        # The parent's sockets: redis-py's disconnect() only closes, never
        # shuts down, a socket opened by another pid; dropping them (and
        # the replies owed on them, which the parent reads) is enough.
        # Threads do not survive a fork: the child starts its own collector.
        self._idle = []
        self._collector = None


def _collect(line: _Line) -> None:
    """Read the replies owed on ``line`` and report the failures.

    Whatever interrupts the reads (a lost connection, a read timeout, a soft
    time limit) fails every command still owed, leaves the line
    disconnected (the next send reconnects) and is raised: the caller
    needs to know whether the server is gone or only slow.
    """
    owed, line.owed = line.owed, []
    conn = line.conn
    for index, (count, on_failure) in enumerate(owed):
        try:
            replies = _read(conn, count)
        except BaseException as exc:
            line.owed = owed[index:]
            _lose(line, exc)
            raise
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                _report(on_failure, reply)
                break


def _lose(line: _Line, exc: BaseException | None = None) -> None:
    """Close the line's connection; the commands still owed on it failed."""
    line.conn.disconnect()
    owed, line.owed = line.owed, []
    if owed:
        failure = exc if isinstance(exc, Exception) else redis.ConnectionError(f"connection closed: {exc!r}")
        for _, on_failure in owed:
            _report(on_failure, failure)


def _report(on_failure: OnFailure, exc: Exception) -> None:
    try:
        on_failure(exc)
    except Exception:  # a failure callback must never break the exchange that found it
        logger.exception("reporting a failed Redis command raised")


class _Unanswered(redis.ConnectionError):
    """Nothing of an exchange was answered, and the server is not working on it.

    The send failed, or the connection was found closed before the first
    answer to it: :meth:`Wire.exchange_packed` sends it again.
    """


def _read(conn: Any, count: int) -> list[Any]:
    """Read ``count`` replies; a connection closed before the first is :class:`_Unanswered`."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
        except redis.ConnectionError as exc:
            if replies:  # the server answered part of them: it applied at least those
                raise
            raise _Unanswered(str(exc)) from exc
    return replies


def _send_and_read(line: _Line, payload: list[bytes], count: int) -> list[Any]:
    """Send ``payload``, read the replies owed on ``line``, then its own ``count``.

    Raises :class:`_Unanswered` when a re-send cannot apply ``payload``
    twice (see :meth:`Wire.exchange_packed`); a read timeout is raised as
    it is, and so is a connection that closed after answering part of
    ``payload``. Owed replies come before ours on the connection: when it
    closes before them, nothing of ``payload`` was answered either.
    """
    conn = line.conn
    try:
        conn.send_packed_command(payload, check_health=False)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise _Unanswered(str(exc)) from exc
    if line.owed:
        try:
            _collect(line)
        except redis.ConnectionError as exc:
            raise _Unanswered(f"connection lost while reading earlier replies: {exc}") from exc
    return _read(conn, count)


def pack(commands: tuple[tuple[Any, ...], ...]) -> bytes:
    """``commands`` in the Redis protocol, as one buffer for one ``send``.

    Not ``Connection.pack_commands``: with hiredis it packs each command into
    a copy of its own and splits large values out as separate pieces, each
    sent on its own (a server wake-up each); without hiredis it is pure
    Python that handles more types than a save needs. This is one copy of
    the state and ~3 us at 1 KB, against ~8-14 us, measured side by side.
    """
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if type(arg) is bytes else str(arg).encode()
            size = len(data)
            if size < _INLINE:
                append(b"$%d\r\n%b\r\n" % (size, data))
            else:  # a large state is copied once, by the join
                parts += (b"$%d\r\n" % size, data, b"\r\n")
    return b"".join(parts)


#: Arguments shorter than this are framed in one formatting step (one piece each).
_INLINE = 4096


def frame(arg: bytes | str | int) -> bytes:
    """One argument in the Redis protocol, as :func:`pack` frames it."""
    data = arg if type(arg) is bytes else str(arg).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def add_frame(parts: list[bytes], data: bytes) -> None:
    """Frame ``data`` onto ``parts``; a large value is not copied until the final join."""
    size = len(data)
    if size < _INLINE:
        parts.append(b"$%d\r\n%b\r\n" % (size, data))
    else:
        parts += (b"$%d\r\n" % size, data, b"\r\n")


class Frames:
    """Framed arguments that recur from call to call (owners, names, content types), kept.

    Framing an argument costs ~0.15 us, and most arguments of the commands
    every checkpointed task sends are the same from task to task. The cache
    is cleared when it reaches ``limit`` entries, so arguments that do not
    recur cannot grow it without bound.
    """

    def __init__(self, limit: int = 512) -> None:
        self._frames: dict[str, bytes] = {}
        self._limit = limit

    def __call__(self, arg: str) -> bytes:
        framed = self._frames.get(arg)
        if framed is None:
            if len(self._frames) >= self._limit:
                self._frames.clear()
            framed = self._frames[arg] = frame(arg)
        return framed


def command_head(count: int, *leading: str | int) -> bytes:
    """The start of a command of ``count`` arguments whose first ones are ``leading``."""
    return b"*%d\r\n" % count + b"".join(frame(arg) for arg in leading)


def _after_fork_in_child() -> None:
    for wire in list(_wires):
        wire._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
