"""The throttled per-run handle a checkpointed task body talks to.

The skipped path of :meth:`Checkpointer.save` is one attribute read, taken
without a lock: a body may call ``save()`` in its tightest loop. The first
call skipped in a window reads the clock and arms :mod:`.alarm`, which
reopens the window when it ends. The window advances only after the store
confirmed a write, so a failed write is never mistaken for a throttled one.

The store is touched lazily: a run whose body never calls ``load()`` or
``save()`` costs no store round trip at all.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .alarm import MIN_WINDOW, alarm
from .errors import (
    CheckpointError,
    CheckpointHandoff,
    CheckpointOwnershipLost,
    CheckpointSerializationError,
    CheckpointStoreError,
    CorruptCheckpoint,
    DuplicateRun,
)
from .ownership import Decision, Handover, decide, first_fence
from .record import (
    CALL_HINT,
    CheckpointRecord,
    EncodedState,
    NewCheckpoint,
    Status,
    decode,
    encode,
    worker_host,
)
from .runtime import runs_in_process
from .settle import settle_in_background
from .stores.base import CheckpointStore, Peek

logger = logging.getLogger(__name__)

_monotonic = time.monotonic
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)
_BEGIN_ATTEMPTS = 8


def _as_progress(progress: Any, task_id: str) -> float:
    """``progress`` as the float every store keeps, or a clear error; nothing is saved then.

    The stores do not check it themselves, and disagree: SQLite keeps the
    text ``"half"`` in its REAL column, a row no one can read back (the task
    is never resumed), and refuses a ``Decimal`` as if the store had failed
    (a store-error retry); Redis takes the ``Decimal`` and refuses the text.
    """
    try:
        return float(progress)
    except (TypeError, ValueError) as exc:
        raise CheckpointSerializationError(
            f"task {task_id}: progress must be a number (0.0 to 1.0), not {progress!r}; nothing was saved"
        ) from exc


class NullCheckpointer:
    """What a task gets when no store is configured: harmless no-ops.

    ``load()`` returns ``None`` and ``save()`` returns ``False``, so a task
    written for checkpoints still runs, just without resuming. It answers
    every call and attribute of :class:`Checkpointer`'s documented API the
    same way (``save(state, 0.5)`` included): a body must not crash only
    because it is called directly or checkpoints are off.
    """

    resume_count = 0
    saves = 0
    progress: float | None = None
    saved_at: float | None = None
    enabled = False

    def load(self) -> Any:
        return None

    def save(self, state: Any, progress: float | None = None, force: bool = False) -> bool:
        return False

    @property
    def should_stop(self) -> bool:
        return False

    def complete(self) -> None: ...

    def fail(self, exc: BaseException | None = None) -> None: ...

    def discard(self) -> None: ...

    def suspend(self, resend_after: float | None = None, call: Any = None) -> None: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class Checkpointer:
    """One run's view of its task's checkpoint.

    Created by :class:`~celery_checkpoint.CheckpointTask` for every run and
    passed to the body as ``checkpoint``.
    """

    enabled = True

    # Per-run values that start the same for every run: class attributes
    # until a run changes them (a short task builds one of these per run).
    #: How many times this task was resumed after an interruption (0 on a first run).
    resume_count = 0
    #: Persisted saves of this task id so far, across resumes.
    saves = 0
    #: The progress given to the last persisted save (0.0 to 1.0), if any.
    progress: float | None = None
    #: Wall-clock time of the last persisted save.
    saved_at: float | None = None
    _begun = False
    _fence = 0
    #: The fence a create or takeover that failed without an answer may have given.
    _unconfirmed_fence = 0
    #: The fence this run creates its checkpoint at: drawn once, so a create
    #: whose answer was lost is recognised by it when this run tries again.
    _create_fence = 0
    _latest: EncodedState | None = None
    _stop_requested = False
    _closed = False

    def __init__(
        self,
        *,
        task_id: str,
        task_name: str,
        store: CheckpointStore,
        owner: str,
        throttle: float,
        serializer: str,
        accept: frozenset[str],
        max_state_bytes: int,
        on_store_error: str = "raise",
        envelope: Callable[[], Any] = lambda: {},
        on_persist: Callable[[Checkpointer], None] | None = None,
        handed: Handover | None = None,
        unseen: bool = False,
    ) -> None:
        self.task_id = task_id
        self.task_name = task_name
        self.store = store
        self.owner = owner
        self.pid = _pid
        self.throttle = throttle
        self.serializer = serializer
        self.accept = accept
        self.max_state_bytes = max_state_bytes
        self.on_store_error = on_store_error
        self._envelope = envelope
        self._on_persist = on_persist
        self._handed = handed
        self._unseen = unseen
        if unseen:
            # A task id no run has used: nothing to read (see CheckpointTask.apply_async).
            self._begun = True
        self._lock = threading.Lock()
        # Set here, not on the class: the skipped path of save() reads them,
        # and instance attributes keep those reads specialised.
        #: True while the alarm holds this window shut: save() skips without a clock read.
        self._quiet = False
        self._next_save = float("-inf")
        runs_in_process.enter(task_id, self)

    # -- the body's API ----------------------------------------------------

    def load(self) -> Any:
        """The last persisted state of this task id, or ``None`` on a first run.

        An entry that cannot be decoded, or is larger than
        ``checkpoint_max_state_bytes``, raises
        :class:`~celery_checkpoint.errors.CorruptCheckpoint`; the task then
        fails and the entry is kept (``poisoned``) for inspection.
        """
        with self._lock:
            self._begin()
            latest = self._latest
        if latest is None:
            return None
        if len(latest.payload) > self.max_state_bytes:
            raise CorruptCheckpoint(
                f"task {self.task_id}: stored checkpoint is {len(latest.payload)} bytes, over "
                f"checkpoint_max_state_bytes={self.max_state_bytes}; not loaded"
            )
        return decode(latest, self.accept, task_id=self.task_id)

    # Not keyword-only: CPython (3.11 to 3.13) does not specialise calls to
    # functions with keyword-only parameters, which costs ~20 ns per call,
    # a fifth of the skipped path. Pass progress and force by keyword anyway.
    def save(self, state: Any, progress: float | None = None, force: bool = False) -> bool:
        """Persist ``state`` unless the last persisted save is younger than the throttle.

        Returns ``True`` when the state was written, ``False`` when it was
        skipped. ``force=True`` ignores the throttle; so does a pending
        shutdown (see :attr:`should_stop`). A store failure raises
        :class:`~celery_checkpoint.errors.CheckpointStoreError` and the next
        call tries again.
        """
        if self._quiet and not force:
            return False
        if _monotonic() < self._next_save and not force:
            self._arm()
            return False
        return self._persist(state, progress, force or self._stop_requested)

    def _arm(self) -> None:
        """Skip the rest of this window without reading the clock (see :mod:`.alarm`)."""
        if self.throttle < MIN_WINDOW or not alarm.serves:
            return
        self._quiet = True  # before arming: the alarm may fire at once
        if self._stop_requested:  # a stop requested since the clock was read
            self._quiet = False
            return
        if not alarm.at(self._next_save, self):  # green threads: nothing will reopen it
            self._quiet = False

    def window_over(self) -> None:
        """The alarm's call: the throttle window armed for has ended."""
        self._quiet = False

    @property
    def should_stop(self) -> bool:
        """True once the worker is shutting down and wants this run handed off.

        A body with long steps can check it between steps; the next
        ``save()`` then persists and hands the task off.
        """
        return self._stop_requested

    # -- persistence -------------------------------------------------------

    def _persist(self, state: Any, progress: float | None, forced: bool) -> bool:
        if progress is not None and type(progress) is not float:
            progress = _as_progress(progress, self.task_id)
        with self._lock:
            if not forced and _monotonic() < self._next_save:
                return False  # another thread persisted while this one waited
            encoded = encode(
                state, self.serializer, what="state", task_id=self.task_id, limit=self.max_state_bytes
            )
            try:
                if not self._begun:
                    self._begin()
                saved_at = time.time()
                saves = self._write(encoded, progress, saved_at)
            except CheckpointStoreError:
                if self.on_store_error == "warn":
                    logger.warning(
                        "task %s: checkpoint not saved, will retry on the next save",
                        self.task_id,
                        exc_info=True,
                    )
                    return False
                raise
            self._latest = encoded
            self.saves = saves
            self.progress = progress
            self.saved_at = saved_at
            self._next_save = max(self._next_save, _monotonic() + self.throttle)
        if self._on_persist is not None:
            self._on_persist(self)
        if self._stop_requested:
            self._hand_off()
        return True

    def _hand_off(self) -> None:
        """Release the checkpoint for an immediate resume and end this run."""
        with self._lock:
            if self._fence:
                self.store.park(self.task_id, self._fence, self.owner, Status.RELEASED)
                self._fence = 0
        raise CheckpointHandoff(
            f"task {self.task_id}: worker shutting down; stopped at checkpoint {self.saves} "
            "and handed off to be resumed"
        )

    def _write(self, encoded: EncodedState, progress: float | None, saved_at: float) -> int:
        if self._fence == 0:
            envelope = encode(
                self._envelope(),
                self.serializer,
                what="call (args, kwargs, options)",
                task_id=self.task_id,
                limit=self.max_state_bytes,
                hint=CALL_HINT,
            )
            if not self._create_fence:
                self._create_fence = first_fence()
            self._unconfirmed_fence = self._create_fence
            fence = self.store.create(
                self.task_id,
                NewCheckpoint(
                    self.task_name,
                    self.owner,
                    self.pid,
                    encoded,
                    envelope,
                    progress,
                    saved_at,
                    self._create_fence,
                ),
            )
            self._unconfirmed_fence = 0
            if fence is not None:
                self._fence = fence
                return 1
            # Refused: another run holds a checkpoint, the task finished, or
            # this very run created it on an earlier attempt whose answer
            # was lost. The ownership rule tells them apart.
            if self._unseen:
                self._reclaim_own_create()
            else:
                self._begun = False
                self._begin()
            if self._fence == 0:
                raise DuplicateRun(f"task {self.task_id}: its checkpoint is gone; this run stops")
        saves = self.store.update(self.task_id, self._fence, encoded, progress, saved_at)
        if saves is None:
            raise CheckpointOwnershipLost(
                f"task {self.task_id}: the checkpoint was taken over by a newer run "
                f"(this run's fence {self._fence} is stale); this run stops without saving"
            )
        return saves

    @property
    def fence(self) -> int:
        """This run's fencing token (0 until it owns a checkpoint)."""
        return self._fence

    @property
    def handover(self) -> Handover | None:
        """What this run hands to the delivery it sends for itself (a retry), if anything.

        Includes a fence this run may hold without knowing it: a create or
        takeover the store applied but whose answer the run never read.
        Without it, the checkpoint would stay "running" under this live
        process and every later delivery would be dropped as a duplicate.
        """
        fence = self._fence or self._unconfirmed_fence
        return Handover(fence, self.owner, self.pid) if fence else None

    def begin(self) -> None:
        """Settle ownership now, before the body runs (for suspect deliveries).

        Raises :class:`~celery_checkpoint.errors.DuplicateRun` when another
        run of this task id is alive or the task already finished.
        """
        with self._lock:
            self._begin()

    def _begin(self) -> None:
        """Take ownership of an existing checkpoint, or learn there is none."""
        if self._begun:
            return
        for _ in range(_BEGIN_ATTEMPTS):
            peek = self.store.peek(self.task_id)
            if not peek.exists:
                if peek.done:
                    raise DuplicateRun(f"task {self.task_id} already finished; dropping this late delivery")
                self._begun = True
                return
            decision = decide(peek, self.owner, self.pid, runs_in_process.count(self.task_id), self._handed)
            if decision is not Decision.TAKE:
                raise DuplicateRun(f"task {self.task_id}: {decision.value}; dropping this delivery")
            if self._take_over(peek):
                return
        raise CheckpointStoreError(
            f"task {self.task_id}: checkpoint in {self.store.url} kept changing hands; gave up taking it over"
        )

    def _reclaim_own_create(self) -> None:
        """After a refused create by a run that never read the store: only its own create is its.

        Such a run started from nothing (its ``load()`` read no checkpoint),
        so any other checkpoint of its task id, even one a scan would
        resume, belongs to a copy of its message: taking it over would
        overwrite that progress with this run's state from zero. The copy
        stops instead, and the checkpoint is resumed as it would have been.
        """
        peek = self.store.peek(self.task_id)
        own = (
            peek.exists
            and peek.status is Status.RUNNING
            and peek.fence == self._create_fence
            and peek.owner == self.owner
            and peek.pid == self.pid
            and runs_in_process.count(self.task_id) == 1
        )
        if not own:
            if peek.done:
                raise DuplicateRun(f"task {self.task_id} already finished; dropping this late delivery")
            raise DuplicateRun(f"task {self.task_id} is held by another run; this copy of a new call stops")
        if not self._take_over(peek):
            raise DuplicateRun(f"task {self.task_id}: its checkpoint changed hands; this run stops")

    def _take_over(self, peek: Peek) -> bool:
        """Take the checkpoint ``peek`` saw, fenced on it; whether it was still as seen."""
        self._unconfirmed_fence = peek.fence + 1  # the store may apply it and the answer be lost
        record = self.store.takeover(self.task_id, peek.fence, peek.owner, self.owner, self.pid)
        self._unconfirmed_fence = 0
        if record is None:
            return False
        self._adopt(record)
        return True

    def _adopt(self, record: CheckpointRecord) -> None:
        self._begun = True
        self._fence = record.fence
        self._latest = record.state
        self.resume_count = record.resume_count
        self.saves = record.saves
        self.progress = record.progress
        self.saved_at = record.saved_at
        logger.info(
            "task %s: resuming from checkpoint (save %d, resume %d)",
            self.task_id,
            record.saves,
            record.resume_count,
        )

    # -- the end of a run --------------------------------------------------

    def complete(self) -> None:
        """The run succeeded: delete the checkpoint and mark the task id done.

        A store that can send the delete without waiting for its answer
        (Redis, see :class:`~celery_checkpoint.stores.base.FinishesWithoutWaiting`)
        does: the result is already stored, the answer matters only if it
        is a failure, and then the delete is retried in the background like
        any settlement that failed.
        """
        fence = self._fence or self._lost_fence()
        if not fence:
            return
        send = getattr(self.store, "finish_nowait", None)
        if send is None:
            self.store.finish(self.task_id, fence, self.owner)
        else:
            send(self.task_id, fence, self.owner, functools.partial(self._finish_again, fence))
        self._fence = 0

    def _lost_fence(self) -> int:
        """The fence a create or takeover gave this run without its answer, if the store holds it.

        The store may have applied a call whose answer never came (a
        timeout, a soft time limit inside the call). Left alone, that
        checkpoint would stay ``running`` under this live process after the
        task ended, and a later scan would run a finished task again.
        """
        fence = self._unconfirmed_fence
        if not fence:
            return 0
        peek = self.store.peek(self.task_id)
        if peek.exists and peek.fence == fence and peek.owner == self.owner and peek.pid == self.pid:
            self._unconfirmed_fence = 0
            return fence
        return 0

    def _finish_again(self, fence: int, exc: CheckpointStoreError) -> None:
        logger.warning("task %s: could not delete its checkpoint, will retry: %s", self.task_id, exc)
        settle_in_background(
            self.task_id, functools.partial(self.store.finish, self.task_id, fence, self.owner)
        )

    def fail(self, exc: BaseException | None = None) -> None:
        """The run failed for good: delete the checkpoint, unless it is unreadable.

        A checkpoint that cannot be decoded is kept, as ``poisoned``, for the
        CLI: deleting it would lose the evidence.
        """
        fence = self._fence or self._lost_fence()
        if not fence:
            return
        if isinstance(exc, CorruptCheckpoint):
            self.store.park(self.task_id, fence, self.owner, Status.POISONED)
        else:
            self.store.finish(self.task_id, fence, self.owner)
        self._fence = 0

    def discard(self) -> None:
        """Remove this run's checkpoint without marking the task id finished.

        For ``self.replace()``: the replacement runs under this task id and
        must find neither this body's state nor a "finished" marker. The
        store deletes it only at this run's fence, in one atomic step, so a
        newer run's checkpoint is kept, even one taken over a moment before.
        """
        with self._lock:
            fence = self._fence or self._lost_fence()
            self._fence = 0
            self._latest = None
            if fence:
                self.store.discard(self.task_id, fence, self.owner)

    def suspend(self, resend_after: float | None = None, call: Any = None) -> None:
        """The run asked Celery to retry: keep the checkpoint for the retried run.

        ``call`` (the retry's, see :func:`~celery_checkpoint.envelope.envelope_from_retry`)
        replaces the recorded call, so what is sent again later is the retry.
        If no delivery has taken the checkpoint over ``resend_after`` seconds
        from now, the retry message was lost, and a worker's scan sends it again.
        """
        if not self._fence:
            return
        envelope = None
        if call is not None:
            try:
                envelope = encode(
                    call,
                    self.serializer,
                    what="retry's call",
                    task_id=self.task_id,
                    limit=self.max_state_bytes,
                    hint=CALL_HINT,
                )
            except CheckpointError as exc:  # keep the call recorded at the first save
                logger.warning("task %s: the retry's call is not recorded: %s", self.task_id, exc)
        self.store.park(self.task_id, self._fence, self.owner, Status.WAITING, resend_after, envelope)
        self._fence = 0

    def release(self) -> None:
        """Hand the checkpoint off to be resumed at once (a shutdown handoff, a requeue)."""
        fence = self._fence or self._lost_fence()
        if fence:
            self.store.park(self.task_id, fence, self.owner, Status.RELEASED)
            self._fence = 0

    def request_stop(self) -> None:
        """Make the next ``save()`` persist whatever the throttle, then hand off.

        Called from a signal handler: it only sets attributes, so the
        skipped path of ``save()`` stays one attribute read.
        """
        self._stop_requested = True
        self._next_save = float("-inf")
        self._quiet = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            runs_in_process.leave(self.task_id, self)

    def metadata(self) -> dict[str, Any]:
        """What Flower and logs show about this run's checkpoint."""
        return {
            "checkpoint_saves": self.saves,
            "checkpoint_progress": self.progress,
            "checkpoint_saved_at": self.saved_at,
            "checkpoint_resume_count": self.resume_count,
            "checkpoint_owner": worker_host(self.owner),
        }
