"""The store protocol every backend implements, and the types it returns.

A store keeps three things: checkpoint records (one per task id), worker
leases (one per worker start, renewed by the worker's main process), and
"done" markers (a short-lived note that a task id finished, so a late
redelivery is dropped instead of run again from zero).

Stores only offer atomic primitives. Decisions that are the same for every
backend (may this run take the checkpoint over?) live in
:mod:`celery_checkpoint.ownership`, so the three backends cannot disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import CheckpointError, CheckpointStoreError
from ..record import CheckpointRecord, EncodedState, NewCheckpoint, Status


@dataclass(frozen=True)
class Peek:
    """What a run needs to know before touching a checkpoint."""

    exists: bool
    done: bool
    status: Status | None = None
    owner: str = ""
    pid: int = 0
    fence: int = 0
    owner_alive: bool = False


#: The two answers almost every first run gets, built once.
NOTHING = Peek(exists=False, done=False)
FINISHED = Peek(exists=False, done=True)


#: A re-sent record (its message never started) waits twice as long before
#: each further re-send, up to this many doublings of the grace (64 x: every
#: ~5 h with the default ``checkpoint_requeue_after``), so a task routed to
#: a queue no worker reads collects a handful of copies, not one per grace.
MAX_RESEND_DOUBLINGS = 6


def resend_grace(grace: float, resends: int) -> float:
    """How long an unowned ``queued`` record waits before its next re-send."""
    return grace * (1 << min(resends, MAX_RESEND_DOUBLINGS))


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    POISONED = "poisoned"
    GONE = "gone"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    record: CheckpointRecord | None = None


@dataclass(frozen=True)
class Candidate:
    """A checkpoint the scan believes is interrupted, and why."""

    task_id: str
    owner: str


@dataclass(frozen=True)
class ClaimRequest:
    """One claim of a batch (:meth:`CheckpointStore.claim_many`)."""

    task_id: str
    expected_owner: str
    max_resumes: int
    #: The fence the caller read, or ``None`` to claim at whatever fence (see :meth:`CheckpointStore.claim`).
    expected_fence: int | None = None


@dataclass(frozen=True)
class CorruptEntry:
    """An entry under the store's namespace that is not a readable record."""

    key: str
    reason: str


@runtime_checkable
class CheckpointStore(Protocol):
    """Atomic operations on checkpoints, leases and done markers.

    Every method that changes a record takes the caller's ``fence`` (or an
    expected owner) and does nothing when it no longer matches: that is what
    keeps a stale run from overwriting a newer run's checkpoint.
    """

    #: The store URL with any password removed, for messages and logs.
    url: str

    def peek(self, task_id: str) -> Peek:
        """Read a record's ownership head, whether its owner's lease is alive,
        and whether the task id is marked done."""
        ...

    def takeover(
        self, task_id: str, expected_fence: int, expected_owner: str, owner: str, pid: int
    ) -> CheckpointRecord | None:
        """Give the record to ``owner`` if its fence is still ``expected_fence``
        (which also pins ``expected_owner``, read by the same ``peek``).

        Bumps the fence and sets status ``running``. ``None`` if it changed.
        """
        ...

    def create(self, task_id: str, new: NewCheckpoint) -> int | None:
        """Write a first checkpoint at ``new.fence``; return that fence.

        ``None`` when the task id already has a checkpoint or is marked done:
        a run that skipped reading first (a call never seen before) learns
        here that it duplicates another.
        """
        ...

    def update(
        self, task_id: str, fence: int, state: EncodedState, progress: float | None, saved_at: float
    ) -> int | None:
        """Persist a newer state; return the save count, or ``None`` if fenced out."""
        ...

    def finish(self, task_id: str, fence: int, owner: str) -> bool:
        """Delete the record and mark the task id done (success or terminal failure)."""
        ...

    def discard(self, task_id: str, fence: int, owner: str) -> bool:
        """Delete the record if its fence is still ``fence``, and leave no done marker.

        For ``self.replace()``: the replacement runs under the same task id
        and must find neither the replaced run's state nor a "finished" mark.
        The fence is checked in the same atomic step as the delete, so a run
        that took the record over a moment before keeps it. ``False`` (and
        nothing changed) when the fence moved on.
        """
        ...

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
        """Leave the record with no owner, as ``waiting`` (a retry), ``released``
        (a handoff, resumed by the next scan), ``queued`` (its message is in
        the broker) or ``poisoned`` (kept for inspection only).

        ``resend_after`` (``waiting`` only): seconds after which a record that
        no delivery has taken over is listed by ``interrupted`` and may be
        claimed, because its retry message was lost; ``None``: never.
        ``call``: a new recorded call (the retry's) to send from now on.
        ``resume_count``: the count to put back (a claim whose message could
        not be sent gives back the resume it counted); ``None``: unchanged.
        """
        ...

    def register(self, worker_id: str, ttl: float) -> None:
        """Start a worker's lease, ending the leases of its earlier starts
        under the same node name (their runs are over)."""
        ...

    def heartbeat(self, worker_id: str, ttl: float) -> None:
        """Renew a worker's lease."""
        ...

    def retire(self, worker_id: str) -> None:
        """End a worker's lease now (clean shutdown)."""
        ...

    def leases(self) -> dict[str, float]:
        """Worker id -> lease expiry (unix time) of every known worker."""
        ...

    def interrupted(self) -> list[Candidate]:
        """Checkpoints whose run is over without an outcome.

        Reads only the owners whose lease ended, the unowned (released or
        queued) checkpoints and the waiting ones past their ``resend_after``,
        so its cost grows with the interrupted ones, not the live ones.
        """
        ...

    def held_by(self, worker_id: str) -> list[str]:
        """Task ids whose checkpoint ``worker_id`` holds: running, or queued by its claim.

        Not a poisoned one, though it keeps the owner that last held it: it is
        kept for inspection only, and no worker acts on it again.
        """
        ...

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
        """Atomically take an interrupted checkpoint for re-enqueueing.

        A ``released`` checkpoint (handed off at shutdown, its message
        requeued) is claimable only ``released_grace`` seconds after it was
        parked: the requeued message normally resumes it first, and the scan
        is the safety net if that message was lost. Likewise an unowned
        ``queued`` one (re-enqueued, its message in the broker) after
        ``queued_grace`` seconds (``None``: never); claiming it again sends a
        duplicate, which the ownership rule drops, and is not a resume. A
        ``waiting`` one past its ``resend_after`` (its retry message was lost)
        is claimed the same way, and never when ``queued_grace`` is ``None``.

        Exactly one of several concurrent claimers gets ``CLAIMED``. A record
        already resumed ``max_resumes`` times becomes ``POISONED`` instead.

        ``expected_fence``: the fence a ``peek`` of the caller saw; ``GONE``,
        with nothing changed, if the record has moved on since. The owner
        alone does not pin a run: a worker's own pool processes share its
        owner id, and one of them may have taken the checkpoint over since
        (same owner, new fence and pid). ``None``: any fence.
        """
        ...

    def get(self, task_id: str) -> CheckpointRecord | None:
        """The record, or ``None``; raises ``CorruptCheckpoint`` if unreadable."""
        ...

    def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        claimer: str,
        released_grace: float = 0.0,
        queued_grace: float | None = None,
    ) -> list[Claim | CheckpointError]:
        """:meth:`claim` for each request, in order, sent together (one round trip
        on Redis). Each claim is atomic on its own; one that fails is returned
        as its error, a store that cannot be reached raises."""
        ...

    def park_many(self, parks: Sequence[tuple[str, int]], owner: str, status: Status) -> list[bool]:
        """:meth:`park` for each ``(task_id, fence)``, in order, sent together;
        ``False`` where the fence had moved on."""
        ...

    def get_many(self, task_ids: Sequence[str]) -> list[CheckpointRecord | CorruptEntry | None]:
        """The records of ``task_ids``, in order, read together (one round trip on
        Redis): an unreadable one is a ``CorruptEntry``, a missing one ``None``."""
        ...

    def scan(self) -> Iterator[CheckpointRecord | CorruptEntry]:
        """Every entry, readable or not (for the CLI)."""
        ...

    def delete(self, task_id: str) -> bool:
        """Remove a record whatever its state (purge, revoke)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class FinishesWithoutWaiting(Protocol):
    """An optional capability: a store that can send ``finish`` without waiting.

    Not part of :class:`CheckpointStore` (a third-party store need not offer
    it). A successful run's checkpoint is deleted after its result is
    stored, so only a failure of that delete matters; a store over a network
    (Redis) sends it and reads the answer later, which spares a short task
    a round trip's wait (BENCHMARKS.md, figure 5).
    """

    def finish_nowait(
        self, task_id: str, fence: int, owner: str, on_failure: Callable[[CheckpointStoreError], None]
    ) -> None:
        """Send what ``finish`` does and return at once.

        Raises ``CheckpointStoreError`` if it could not be sent. A failure
        reported later (an error answer, a connection lost before the answer
        was read: the delete may or may not be applied) calls ``on_failure``
        from whichever thread reads it; it must not block. ``finish`` with
        the same arguments is then safe to call again.
        """
        ...
