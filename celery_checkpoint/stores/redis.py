"""The production store: Redis, one round trip per persisted save.

A persisted save is three plain commands in one write to the socket, and no
script: write the save hash named after the run's fence, count it, and read
the record's fence back. A run that lost its fence learns it from that read;
what it wrote went to a key no one reads, and it deletes it. Every other
change of a record is a Lua script (see :mod:`.redis_lua` for the layout and
for why the hot path avoids Lua).

Key layout (``p`` is ``checkpoint_key_prefix``, default ``checkpoint:``):

==========================  ======  =============================================
key                          type    holds
==========================  ======  =============================================
``p + task:<task id>``       hash    the record (see :mod:`.redis_lua`)
``p + save:<task id>:<n>``   hash    the last save, n = the record's fence
``p + call:<task id>``       string  the recorded call a resume sends (its envelope)
``p + owned:<worker id>``    set     task ids a worker start owns (running/queued)
``p + owners``               set     every worker id that owns or owned a record
``p + workers``              hash    worker id -> lease expiry (server ms)
``p + released``             set     unowned task ids: handed off, or re-enqueued
``p + waiting``              zset    task ids waiting for a retry, scored by the
                                     time (server ms) they may be sent again
``p + done:<task id>``       string  "finished" marker, expires after done TTL
==========================  ======  =============================================

The resume scan reads ``owners`` and ``workers`` (one entry per worker start)
and then only the ``owned`` sets of dead owners and the overdue end of
``waiting``, so its cost grows with the interrupted checkpoints and not with
the live ones or the retries still pending.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import CheckpointError, CheckpointStoreError, CorruptCheckpoint
from ..record import WORKER_ID_SEPARATOR, CheckpointRecord, EncodedState, NewCheckpoint, Status, worker_host
from . import redis_lua
from .base import FINISHED, NOTHING, Candidate, Claim, ClaimOutcome, ClaimRequest, CorruptEntry, Peek
from .redis_wire import Frames, Wire, add_frame, command_head, frame, pack
from .urls import redact

try:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.commands.core import Script
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Redis checkpoint store needs redis-py: pip install 'celery-checkpoint[redis]'"
    ) from exc

T = TypeVar("T")

#: Keys and arguments of the CREATE and FINISH scripts (see :mod:`.redis_lua`).
CREATE_KEYS, CREATE_ARGS = 6, 13
FINISH_KEYS, FINISH_ARGS = 6, 3

#: What Redis's glob matching (SCAN MATCH, KEYS) gives a meaning; a backslash escapes any of them.
GLOB_SPECIAL = frozenset("*?[]\\")

#: The CLAIM script's answer for a record it cannot read (see :mod:`.redis_lua`).
CLAIM_MALFORMED = 3

REQUIRED_FIELDS = ("name", "status", "owner", "fence", "saves", "resumes", "saved_at", "created_at", "state")


class RedisStore:
    """Checkpoints in Redis (``redis://`` or ``rediss://``)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "checkpoint:",
        done_ttl: float = 86400.0,
        client: redis.Redis | None = None,
        socket_timeout: float = 5.0,
    ) -> None:
        self.url = redact(url)
        self.prefix = prefix
        self.done_ttl_ms = int(done_ttl * 1000)
        self.client: redis.Redis = client or redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 2.0),
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
            health_check_interval=30,
        )
        self._wire = Wire(self.client)
        register = self.client.register_script
        self._peek = register(redis_lua.PEEK)
        self._takeover = register(redis_lua.TAKEOVER)
        self._create = register(redis_lua.CREATE)
        self._finish = register(redis_lua.FINISH)
        self._discard = register(redis_lua.DISCARD)
        self._park = register(redis_lua.PARK)
        self._due = register(redis_lua.DUE)
        self._lease = register(redis_lua.LEASE)
        self._leases = register(redis_lua.LEASES)
        self._claim = register(redis_lua.CLAIM)
        self._forget = register(redis_lua.FORGET)
        self._delete = register(redis_lua.DELETE)
        self._read = register(redis_lua.READ)
        self.workers_key = self.key("workers")
        self.owners_key = self.key("owners")
        self.released_key = self.key("released")
        self.waiting_key = self.key("waiting")
        # What create() and finish_nowait() frame by hand, every checkpointed task.
        self._record_prefix = self.record_key("")
        self._owned_prefix = self.owned_key("")
        self._save_prefix = self.key("save", "")
        self._done_prefix = self.done_key("")
        self._call_prefix = self.call_key("")
        self._frames = Frames()
        create_size, finish_size = 3 + CREATE_KEYS + CREATE_ARGS, 3 + FINISH_KEYS + FINISH_ARGS
        self._create_head = command_head(create_size, "EVALSHA", self._create.sha, CREATE_KEYS)
        self._finish_head = command_head(finish_size, "EVAL", redis_lua.FINISH, FINISH_KEYS)
        self._owners_frame = frame(self.owners_key)
        self._released_frame = frame(self.released_key)
        self._done_ttl_frame = frame(self.done_ttl_ms)

    # -- keys --------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """Join key parts under the prefix, never doubling a separator."""
        return self.prefix + ":".join(parts)

    def record_key(self, task_id: str) -> str:
        return self.key("task", task_id)

    def owned_key(self, worker: str) -> str:
        return self.key("owned", worker)

    def done_key(self, task_id: str) -> str:
        return self.key("done", task_id)

    def call_key(self, task_id: str) -> str:
        """The string holding the call a resume of ``task_id`` sends."""
        return self.key("call", task_id)

    def save_key(self, task_id: str, fence: int | str) -> str:
        """The hash holding the last save of the run that has ``fence``."""
        return self.key("save", task_id, str(fence))

    @contextmanager
    def _errors(self, op: str, task_id: str | None = None) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            subject = f"task {task_id}: " if task_id else ""
            raise CheckpointStoreError(f"{subject}checkpoint store {self.url} failed to {op}: {exc}") from exc

    def _call(self, op: str, task_id: str | None, fn: Callable[[], T]) -> T:
        with self._errors(op, task_id):
            return fn()

    def _failed(self, op: str, task_id: str, exc: redis.RedisError) -> CheckpointStoreError:
        return CheckpointStoreError(f"task {task_id}: checkpoint store {self.url} failed to {op}: {exc}")

    # -- runs --------------------------------------------------------------
    # peek, create, update and finish run once per checkpointed task: they
    # handle errors inline (no context manager, no closure) and send through
    # the store's own connections.

    def peek(self, task_id: str) -> Peek:
        record = self.record_key(task_id)
        try:
            # Plain reads first: a first run finds no record, and that answer
            # needs no script (~8 us less server time than the PEEK script).
            status, done = self._pipelined((("HGET", record, "status"), ("EXISTS", self.done_key(task_id))))
            if status is None:
                return FINISHED if done else NOTHING
            reply = self._run(self._peek, [record, self.done_key(task_id), self.workers_key], [])
        except redis.RedisError as exc:
            raise self._failed("read", task_id, exc) from exc
        if not reply[0]:  # deleted between the two reads
            return FINISHED if reply[1] else NOTHING
        _, status, owner, pid, fence, alive = reply
        try:
            parsed = Status(_text(status))
        except ValueError:
            raise CorruptCheckpoint(f"task {task_id}: unknown checkpoint status {status!r}") from None
        return Peek(
            exists=True,
            done=False,
            status=parsed,
            owner=_text(owner or b""),
            pid=int(pid or 0),
            fence=int(fence or 0),
            owner_alive=bool(alive),
        )

    def takeover(
        self, task_id: str, expected_fence: int, expected_owner: str, owner: str, pid: int
    ) -> CheckpointRecord | None:
        reply = self._call(
            "take over",
            task_id,
            lambda: self._takeover(
                keys=[
                    self.record_key(task_id),
                    self.owned_key(expected_owner),
                    self.owned_key(owner),
                    self.released_key,
                    self.owners_key,
                    self.save_key(task_id, expected_fence),
                    self.save_key(task_id, expected_fence + 1),
                    self.call_key(task_id),
                    self.waiting_key,
                ],
                args=[task_id, expected_fence, owner, pid],
            ),
        )
        return None if not reply else _record(task_id, _pairs(reply))

    def create(self, task_id: str, new: NewCheckpoint) -> int | None:
        # Framed by hand: ~2 us less per task than framing every argument
        # (test_redis_framing checks it against the generic framing).
        state, envelope = new.state, new.envelope
        recurring = self._frames
        parts = [
            self._create_head,
            frame(self._record_prefix + task_id),
            recurring(self._owned_prefix + new.owner),
            self._owners_frame,
            frame(f"{self._save_prefix}{task_id}:{new.fence}"),
            frame(self._done_prefix + task_id),
            frame(self._call_prefix + task_id),
            frame(task_id),
            recurring(new.owner),
            recurring(str(new.pid)),
            recurring(new.task_name),
        ]
        add_frame(parts, state.payload)
        parts += (recurring(state.content_type), recurring(state.content_encoding))
        add_frame(parts, envelope.payload)
        parts += (
            recurring(envelope.content_type),
            recurring(envelope.content_encoding),
            # float(): a float subclass may repr as no number (numpy 2: "np.float64(0.5)")
            frame("" if new.progress is None else repr(float(new.progress))),
            frame(repr(new.saved_at)),
            frame(str(new.fence)),
        )
        try:
            created = self._run_packed(self._create, b"".join(parts))
        except redis.RedisError as exc:
            raise self._failed("save", task_id, exc) from exc
        return new.fence if created else None

    def update(
        self, task_id: str, fence: int, state: EncodedState, progress: float | None, saved_at: float
    ) -> int | None:
        save = self.save_key(task_id, fence)
        commands = (
            (
                "HSET",
                save,
                "state",
                state.payload,
                "ctype",
                state.content_type,
                "cenc",
                state.content_encoding,
                "progress",
                "" if progress is None else repr(float(progress)),  # as in create()
                "saved_at",
                repr(saved_at),
            ),
            ("HINCRBY", save, "saves", 1),
            ("HGET", self.record_key(task_id), "fence"),
        )
        try:
            _, saves, current = self._pipelined(commands)
            if current is None or _text(current) != str(fence):
                # Fenced out (or the record is gone): nothing reads this key; if
                # the fence moved after the write, the key was renamed away and
                # this deletes nothing.
                self.client.delete(save)
                return None
        except redis.RedisError as exc:
            raise self._failed("save", task_id, exc) from exc
        return int(saves)

    def _run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """One script call sent the way ``update`` sends its commands.

        For the scripts every checkpointed task runs (peek, create, finish):
        redis-py's ``Script`` call costs ~30-80 us more client CPU per call on
        a 2-core machine, which a short task pays on every run.
        """
        return self._run_packed(script, pack((("EVALSHA", script.sha, len(keys), *keys, *args),)))

    def _run_packed(self, script: Script, packed: bytes) -> Any:
        """:meth:`_run` for a script call already in the Redis protocol."""
        try:
            return self._wire.exchange_packed(packed, 1)[0]
        except redis.exceptions.NoScriptError:  # a restarted or flushed server: load it again
            self.client.script_load(script.script)
            return self._wire.exchange_packed(packed, 1)[0]

    def _pipelined(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """Send ``commands`` in one write and read every reply (see :class:`.redis_wire.Wire`)."""
        return self._wire.exchange(commands)

    def finish(self, task_id: str, fence: int, owner: str) -> bool:
        try:
            return bool(
                self._run(
                    self._finish, self._finish_keys(task_id, fence, owner), [task_id, fence, self.done_ttl_ms]
                )
            )
        except redis.RedisError as exc:
            raise self._failed("delete", task_id, exc) from exc

    def finish_nowait(
        self, task_id: str, fence: int, owner: str, on_failure: Callable[[CheckpointStoreError], None]
    ) -> None:
        """``finish``, sent without waiting for the answer (see :class:`.base.FinishesWithoutWaiting`).

        Redis applies a connection's commands in order, and this process's
        next command on the connection reads this answer before its own. A failure
        to send raises :class:`CheckpointStoreError` here; an error answer,
        or a connection lost before the answer was read, goes to
        ``on_failure``.
        """
        # EVAL, not EVALSHA: a NOSCRIPT answer (a restarted server) would
        # only be read after the task was acknowledged. Framed by hand, as in
        # create(), in the order of _finish_keys() and finish()'s arguments.
        recurring = self._frames
        fence_text = str(fence)
        packed = b"".join(
            (
                self._finish_head,
                frame(self._record_prefix + task_id),
                recurring(self._owned_prefix + owner),
                frame(self._done_prefix + task_id),
                self._released_frame,
                frame(f"{self._save_prefix}{task_id}:{fence_text}"),
                frame(self._call_prefix + task_id),
                frame(task_id),
                recurring(fence_text),
                self._done_ttl_frame,
            )
        )

        def failed(exc: Exception) -> None:
            error = exc if isinstance(exc, redis.RedisError) else redis.RedisError(repr(exc))
            on_failure(self._failed("delete", task_id, error))

        try:
            self._wire.send_packed(packed, 1, failed)
        except redis.RedisError as exc:
            raise self._failed("delete", task_id, exc) from exc

    def _finish_keys(self, task_id: str, fence: int, owner: str) -> list[str]:
        return [
            self.record_key(task_id),
            self.owned_key(owner),
            self.done_key(task_id),
            self.released_key,
            self.save_key(task_id, fence),
            self.call_key(task_id),
        ]

    def discard(self, task_id: str, fence: int, owner: str) -> bool:
        keys = self._finish_keys(task_id, fence, owner)
        return bool(self._call("delete", task_id, lambda: self._discard(keys=keys, args=[task_id, fence])))

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
        keys, args = self._park_call(task_id, fence, owner, status, resend_after, call, resume_count)
        return bool(self._call("park", task_id, lambda: self._park(keys=keys, args=args)))

    def park_many(self, parks: Sequence[tuple[str, int]], owner: str, status: Status) -> list[bool]:
        if not parks:
            return []

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for task_id, fence in parks:
                keys, args = self._park_call(task_id, fence, owner, status)
                self._park(keys=keys, args=args, client=pipe)
            return list(pipe.execute())

        return [bool(reply) for reply in self._call("park", None, run)]

    def _park_call(
        self,
        task_id: str,
        fence: int,
        owner: str,
        status: Status,
        resend_after: float | None = None,
        call: EncodedState | None = None,
        resume_count: int | None = None,
    ) -> tuple[list[str], list[Any]]:
        new_call: tuple[bytes | str, str, str] = ("", "", "") if call is None else call
        keys = [
            self.record_key(task_id),
            self.owned_key(owner),
            self.released_key,
            self.save_key(task_id, fence),
            self.save_key(task_id, fence + 1),
            self.waiting_key,
            self.call_key(task_id),
        ]
        args = [
            task_id,
            fence,
            status.value,
            "" if resend_after is None else int(resend_after * 1000),
            *new_call,
            "" if resume_count is None else resume_count,
        ]
        return keys, args

    # -- workers -----------------------------------------------------------

    def register(self, worker_id: str, ttl: float) -> None:
        host = worker_host(worker_id) + WORKER_ID_SEPARATOR
        self._call(
            "register worker",
            None,
            lambda: self._lease(keys=[self.workers_key], args=[worker_id, int(ttl * 1000), host]),
        )

    def heartbeat(self, worker_id: str, ttl: float) -> None:
        self._call(
            "renew the lease of",
            None,
            lambda: self._lease(keys=[self.workers_key], args=[worker_id, int(ttl * 1000), ""]),
        )

    def retire(self, worker_id: str) -> None:
        self._call("retire", None, lambda: self.client.hset(self.workers_key, worker_id, 0))

    def _lease_table(self) -> tuple[int, dict[str, int]]:
        reply = self._call("read leases", None, lambda: self._leases(keys=[self.workers_key]))
        now = int(reply[0])
        table = {_text(k): int(v) for k, v in zip(reply[1::2], reply[2::2], strict=True)}
        return now, table

    def leases(self) -> dict[str, float]:
        _, table = self._lease_table()
        return {worker: expires / 1000 for worker, expires in table.items()}

    def interrupted(self) -> list[Candidate]:
        now, table = self._lease_table()

        def read() -> tuple[list[str], list[str]]:
            pipe = self.client.pipeline(transaction=False)
            pipe.smembers(self.owners_key)
            pipe.smembers(self.released_key)
            self._due(keys=[self.waiting_key], client=pipe)
            owners, released, due = pipe.execute()
            unowned = {_text(r) for r in released} | {_text(w) for w in due}
            return sorted(_text(o) for o in owners), sorted(unowned)

        owners, unowned = self._call("scan", None, read)
        dead = [owner for owner in owners if table.get(owner, 0) <= now]
        found = [Candidate(task_id, "") for task_id in unowned]
        if not dead:
            return found

        def owned() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for owner in dead:
                pipe.smembers(self.owned_key(owner))
            return list(pipe.execute())

        for owner, members in zip(dead, self._call("scan", None, owned), strict=True):
            if not members:
                self._call("forget worker", None, functools.partial(self._forget_owner, owner))
            found.extend(Candidate(_text(task_id), owner) for task_id in sorted(members))
        return found

    def held_by(self, worker_id: str) -> list[str]:
        members = self._call(
            "read owned checkpoints", None, lambda: self.client.smembers(self.owned_key(worker_id))
        )
        return sorted(_text(task_id) for task_id in members)

    def _forget_owner(self, owner: str) -> Any:
        return self._forget(keys=[self.owned_key(owner), self.owners_key, self.workers_key], args=[owner])

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
        request = ClaimRequest(task_id, expected_owner, max_resumes, expected_fence)
        keys, args = self._claim_call(request, claimer, released_grace, queued_grace)
        return _claim(task_id, self._call("claim", task_id, lambda: self._claim(keys=keys, args=args)))

    def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        claimer: str,
        released_grace: float = 0.0,
        queued_grace: float | None = None,
    ) -> list[Claim | CheckpointError]:
        if not requests:
            return []

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for request in requests:
                keys, args = self._claim_call(request, claimer, released_grace, queued_grace)
                self._claim(keys=keys, args=args, client=pipe)
            return list(pipe.execute(raise_on_error=False))

        claims: list[Claim | CheckpointError] = []
        for request, reply in zip(requests, self._call("claim", None, run), strict=True):
            if isinstance(reply, redis.RedisError):
                claims.append(self._failed("claim", request.task_id, reply))
                continue
            try:
                claims.append(_claim(request.task_id, reply))
            except CorruptCheckpoint as exc:
                claims.append(exc)
        return claims

    def _claim_call(
        self, request: ClaimRequest, claimer: str, released_grace: float, queued_grace: float | None
    ) -> tuple[list[str], list[Any]]:
        task_id, expected_owner = request.task_id, request.expected_owner
        keys = [
            self.record_key(task_id),
            self.owned_key(expected_owner) if expected_owner else self.released_key,
            self.owned_key(claimer),
            self.released_key,
            self.owners_key,
            self.workers_key,
            self.call_key(task_id),
            self.waiting_key,
        ]
        args = [
            task_id,
            expected_owner,
            claimer,
            request.max_resumes,
            int(released_grace * 1000),
            "" if queued_grace is None else int(queued_grace * 1000),
            self.save_key(task_id, ""),
            "" if request.expected_fence is None else request.expected_fence,
        ]
        return keys, args

    # -- inspection --------------------------------------------------------

    def get(self, task_id: str) -> CheckpointRecord | None:
        try:
            reply = self._call(
                "read",
                task_id,
                lambda: self._read(keys=self._read_keys(task_id), args=[self.save_key(task_id, "")]),
            )
        except CheckpointStoreError as exc:
            if isinstance(exc.__cause__, redis.ResponseError):  # WRONGTYPE: not a hash
                raise CorruptCheckpoint(
                    f"task {task_id}: {self.record_key(task_id)} is not a checkpoint hash"
                ) from exc
            raise
        if not reply:
            return None
        return _record(task_id, _pairs(reply))

    def _read_keys(self, task_id: str) -> list[str]:
        return [self.record_key(task_id), self.call_key(task_id)]

    def get_many(self, task_ids: Sequence[str]) -> list[CheckpointRecord | CorruptEntry | None]:
        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for task_id in task_ids:
                self._read(keys=self._read_keys(task_id), args=[self.save_key(task_id, "")], client=pipe)
            return list(pipe.execute(raise_on_error=False))

        replies = self._call("read", None, read) if task_ids else []
        found: list[CheckpointRecord | CorruptEntry | None] = []
        for task_id, reply in zip(task_ids, replies, strict=True):
            if isinstance(reply, redis.ResponseError):  # WRONGTYPE: not a hash
                found.append(CorruptEntry(self.record_key(task_id), f"not a checkpoint hash: {reply}"))
            elif not reply:
                found.append(None)
            else:
                try:
                    found.append(_record(task_id, _pairs(reply)))
                except CorruptCheckpoint as exc:
                    found.append(CorruptEntry(self.record_key(task_id), str(exc)))
        return found

    def scan(self) -> Iterator[CheckpointRecord | CorruptEntry]:
        structural = {self.workers_key, self.owners_key, self.released_key, self.waiting_key}
        record_prefix = self.record_key("")
        internal_prefixes = (
            self.owned_key(""),
            self.done_key(""),
            self.key("save", ""),
            self.call_key(""),
        )
        # MATCH reads the prefix as a glob: unescaped, ``ck[1]:`` would match
        # none of its own keys, and ``cp?:`` other stores' keys as foreign ones.
        pattern = _glob_escape(self.prefix) + "*"
        keys = self._call(
            "list",
            None,
            lambda: sorted(_text(k) for k in self.client.scan_iter(match=pattern, count=1000)),
        )
        for key in keys:
            if key in structural or key.startswith(internal_prefixes):
                continue
            if not key.startswith(record_prefix):
                yield CorruptEntry(key, "foreign key under the checkpoint prefix")
                continue
            task_id = key[len(record_prefix) :]
            try:
                record = self.get(task_id)
            except CorruptCheckpoint as exc:
                yield CorruptEntry(key, str(exc))
            else:
                if record is not None:
                    yield record

    def delete(self, task_id: str) -> bool:
        for _ in range(3):
            owner = self._call("read", task_id, lambda: self.client.hget(self.record_key(task_id), "owner"))
            if owner is None:
                return False
            deleted = self._call(
                "delete", task_id, functools.partial(self._delete_owned, task_id, _text(owner))
            )
            if int(deleted) >= 0:
                return bool(deleted)
        raise CheckpointStoreError(f"task {task_id}: checkpoint kept changing owner while deleting it")

    def _delete_owned(self, task_id: str, owner: str) -> Any:
        return self._delete(
            keys=[
                self.record_key(task_id),
                self.owned_key(owner),
                self.released_key,
                self.call_key(task_id),
                self.waiting_key,
            ],
            args=[task_id, owner, self.save_key(task_id, "")],
        )

    def close(self) -> None:
        self._wire.close()
        self.client.close()


def _glob_escape(text: str) -> str:
    """``text`` as a Redis glob that matches only itself."""
    return "".join("\\" + char if char in GLOB_SPECIAL else char for char in text)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return {_text(k): v for k, v in zip(flat[0::2], flat[1::2], strict=True)}


def _claim(task_id: str, reply: list[Any]) -> Claim:
    if int(reply[0]) == CLAIM_MALFORMED:  # the script checked before writing: the record is as it was
        raise CorruptCheckpoint(f"task {task_id}: checkpoint hash is malformed: {_text(reply[1])}")
    outcome = {0: ClaimOutcome.GONE, 1: ClaimOutcome.CLAIMED, 2: ClaimOutcome.POISONED}[int(reply[0])]
    if outcome is ClaimOutcome.GONE:
        return Claim(outcome)
    return Claim(outcome, _record(task_id, _pairs(reply[1:])))


def _record(task_id: str, fields: dict[str, Any]) -> CheckpointRecord:
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise CorruptCheckpoint(f"task {task_id}: checkpoint hash lacks fields {missing}")
    try:
        progress = _text(fields.get("progress", b""))
        return CheckpointRecord(
            task_id=task_id,
            task_name=_text(fields["name"]),
            status=Status(_text(fields["status"])),
            owner=_text(fields["owner"]),
            pid=int(fields.get("pid") or 0),
            fence=int(fields["fence"]),
            saves=int(fields["saves"]),
            resume_count=int(fields["resumes"]),
            progress=float(progress) if progress else None,
            saved_at=float(fields["saved_at"]),
            created_at=float(fields["created_at"]),
            state=EncodedState(
                bytes(fields["state"]), _text(fields.get("ctype", b"")), _text(fields.get("cenc", b""))
            ),
            envelope=EncodedState(
                bytes(fields.get("env", b"")),
                _text(fields.get("ectype", b"")),
                _text(fields.get("ecenc", b"")),
            ),
            resend_at=float(fields["resend_at"]) / 1000 if fields.get("resend_at") else None,
            resends=int(fields.get("resends") or 0),
        )
    except (ValueError, TypeError) as exc:
        raise CorruptCheckpoint(f"task {task_id}: checkpoint hash is malformed: {exc}") from exc
