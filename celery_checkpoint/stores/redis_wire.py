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
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import redis

#: Live ``Wire`` objects, so a forked child can drop its parent's sockets.
_wires: weakref.WeakSet[Wire] = weakref.WeakSet()


class Wire:
    """Idle dedicated connections, one taken per exchange (so threads never share one)."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        # list.pop/append are atomic: taking and giving back needs no lock.
        self._idle: list[Any] = []
        _wires.add(self)

    def exchange(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """Send ``commands`` in one write and read every reply: one round trip.

        A dropped connection is retried once on a new one, as the client's
        own ``Retry`` would. Every reply is read before an error reply is
        raised, and a connection interrupted in the middle (a soft time
        limit fires during ``recv``) is closed, so no connection is ever
        given back out of step.
        """
        payload = [pack(commands)]
        count = len(commands)
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._pool.make_connection()
        try:
            try:
                replies = _send_and_read(conn, payload, count)
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                replies = _send_and_read(conn, payload, count)  # reconnects first
        except BaseException:
            conn.disconnect()
            raise
        self._idle.append(conn)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()

    def _forget_after_fork(self) -> None:
        # The parent's sockets: redis-py's disconnect() only closes, never
        # shuts down, a socket opened by another pid; dropping them is enough.
        self._idle = []


def _send_and_read(conn: Any, payload: list[bytes], count: int) -> list[Any]:
    conn.send_packed_command(payload, check_health=False)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


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


def _after_fork_in_child() -> None:
    for wire in list(_wires):
        wire._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
