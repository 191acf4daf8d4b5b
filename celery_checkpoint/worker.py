"""The worker side: leases, the resume scan, and lost runs.

All of it hangs on Celery's own worker signals and runs in the worker's main
process:

* ``celeryd_init`` names this start of the worker (node name + incarnation),
  before the pool forks, so pool children inherit the same owner id.
* ``worker_init`` registers the lease, which also ends the leases of earlier
  starts under the same node name: their runs are over, so their
  checkpoints are interrupted at once.
* ``worker_ready`` starts the steward's two threads. One renews the lease
  every third of ``checkpoint_lease_ttl``; the other scans for interrupted
  checkpoints right away and then every ``checkpoint_sweep_interval``.
  Threads, not timers on the worker's event loop, so store latency never
  stalls message consumption (and a stalled event loop never lets the lease
  lapse); two of them, so a scan that blocks (a result backend or broker
  that stopped answering) never lets it lapse either.
* ``task_revoked`` removes the checkpoint of a revoked task.
* ``worker_shutting_down`` (warm, soft or cold shutdown) asks every running
  checkpointed task to stop at its next ``save()`` and hand off: runs in
  this process directly (solo and threads pools), pool children through
  ``SIGUSR2`` sent by the main process to the children that run one
  (prefork); ``worker_process_init`` installs the children's handler.
* ``worker_shutdown`` stops the steward and ends the lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as os_signal
import threading
import time
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import Terminated, TimeLimitExceeded, WorkerLostError
from celery import signals
from celery.worker import state as worker_state

from .config import CheckpointConfig
from .errors import CheckpointError
from .ownership import pid_alive
from .record import Status
from .resume import Resumer, mark_poisoned
from .runtime import identity, runs_in_process, start_worker_identity
from .stores import CheckpointStore, ClaimOutcome, Peek, create_store
from .stores.urls import redact
from .task_stores import task_stores

logger = logging.getLogger(__name__)

#: Seconds ``Steward.stop`` waits for its threads before it ends the lease.
STOP_TIMEOUT = 5.0
#: Seconds between attempts to hold a lease never held yet: the first wait,
#: doubled per attempt up to the last (never above a third of the lease TTL).
FIRST_RETRY = 0.1
MAX_RETRY = 1.0


class Steward:
    """Keeps this worker's lease alive and resumes what dead workers left.

    ``store`` may be ``None`` when it could not be opened at worker start (a
    SQLite file whose directory is mounted a moment later, Redis down): the
    lease thread then keeps calling ``opener`` until it can, because the pool
    processes open the store on their own once it is there, and their runs
    must not be saved under an owner with no lease (every other worker's scan
    would take them for interrupted ones).
    """

    def __init__(
        self,
        app: Any,
        store: CheckpointStore | None,
        config: CheckpointConfig,
        worker_id: str,
        *,
        opener: Callable[[], CheckpointStore] | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.worker_id = worker_id
        self._opener = opener
        self.resumer: Resumer | None = None
        self.store: CheckpointStore | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.registered = False
        self.scans = 0
        #: No scan before this (monotonic) time: after a store outage every
        #: worker's lease lapsed, so give the others a lease TTL to renew
        #: before treating them as dead.
        self._quiet_until = 0.0
        #: Whether the last attempt to hold the lease failed (it is logged once
        #: per outage while the lease was never held, not at every retry).
        self._failing = False
        if store is not None:
            self._attach(store)
        else:  # the caller logged why
            self._quiet_until = time.monotonic() + config.lease_ttl
            self._failing = True

    def _attach(self, store: CheckpointStore) -> None:
        # The resumer first: the scan thread reads ``store`` to know it may scan.
        self.resumer = Resumer(
            self.app,
            store,
            self.worker_id,
            released_grace=self.config.lease_ttl,
            queued_grace=self.config.requeue_after,
        )
        self.store = store

    def register(self) -> None:
        self._renew()

    def start(self) -> None:
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._keep_lease, name="celery-checkpoint-lease", daemon=True),
                threading.Thread(target=self._keep_scanning, name="celery-checkpoint-steward", daemon=True),
            ]
            for thread in self._threads:
                thread.start()

    def request_stop(self) -> None:
        """Tell the threads to end, without waiting for them."""
        self._stop.set()

    def stop(self, *, retire: bool = True) -> None:
        self._stop.set()
        # The lease thread first: a renewal landing after retire() would
        # bring the lease back. A scan stuck in a call that does not honour
        # the stop (a hung result backend) is left behind, a daemon thread.
        deadline = time.monotonic() + STOP_TIMEOUT
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if retire and self.store is not None:
            try:
                self.store.retire(self.worker_id)
            except CheckpointError as exc:
                logger.warning("checkpoint lease not ended on shutdown (it will expire): %s", exc)

    def _keep_lease(self) -> None:
        """Renew the lease on a thread of its own.

        A scan can block far longer than a lease lives (a result backend that
        stopped answering holds an ``MGET`` for ``redis_socket_timeout``, 120 s
        by default; a slow broker, one publish per task), and a lapsed lease
        hands this worker's live runs to the other workers' scans.

        Until the lease is first held, attempts follow each other fast (from
        ``FIRST_RETRY``, doubling up to ``MAX_RETRY``): meanwhile this
        worker's runs may save under an owner no lease covers.
        """
        every = self.config.lease_ttl / 3
        retry = FIRST_RETRY
        while not self._stop.is_set():
            if self._renew() or self.registered:
                wait, retry = every, FIRST_RETRY
            else:
                wait, retry = min(retry, every), min(retry * 2, MAX_RETRY)
            self._stop.wait(wait)

    def _keep_scanning(self) -> None:
        tick = min(self.config.lease_ttl / 3, self.config.sweep_interval)
        next_scan = next_release = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self.store is None:  # not opened yet: the lease thread keeps trying
                self._stop.wait(tick)
                continue
            if now >= next_release:
                self.release_lost_runs()
                next_release = time.monotonic() + self.config.sweep_interval
            if self.config.resume_on_start and now >= next_scan and now >= self._quiet_until:
                self.scan()
                next_scan = time.monotonic() + self.config.sweep_interval
            self._stop.wait(tick)

    def _renew(self) -> bool:
        """Hold the lease (opening the store first if need be); whether it is held."""
        try:
            store = self.store
            if store is None:
                if self._opener is None:
                    return False
                store = self._opener()
                self._attach(store)
            if self.registered:
                store.heartbeat(self.worker_id, self.config.lease_ttl)
            else:
                store.register(self.worker_id, self.config.lease_ttl)
                self.registered = True
                if self._failing:
                    logger.info("checkpoint lease registered at last: store %s", store.url)
        except CheckpointError as exc:
            what = "renewed" if self.registered else "registered"
            self._failed(f"checkpoint lease not {what} (will keep trying): %s", exc)
            return False
        except Exception as exc:
            self._failed("checkpoint lease renewal crashed (will keep trying): %r", exc, crashed=True)
            return False
        self._failing = False
        return True

    def _failed(self, message: str, exc: BaseException, *, crashed: bool = False) -> None:
        self._quiet_until = time.monotonic() + self.config.lease_ttl
        if self.registered or not self._failing:
            logger.log(logging.ERROR if crashed else logging.WARNING, message, exc, exc_info=crashed)
        else:
            logger.debug(message, exc)
        self._failing = True

    def release_lost_runs(self) -> None:
        """Release this worker's checkpoints whose pool process died unnoticed.

        When Celery reports a lost pool child, ``on_run_lost`` claims its
        checkpoint. If the store was down at that moment the checkpoint stays
        ``running`` under this live worker, and every later delivery of the
        task would be dropped as a duplicate of a run that no longer exists.
        Parked ``released``, it is taken over by the requeued message or
        resumed by a scan.

        ``held_by`` and ``peek`` are two reads: a record listed may have been
        taken over in between (a retry's handover, another worker's claim), and
        its new owner's pid means nothing on this host. Only a record this
        worker still owns is parked, at the fence that peek saw.
        """
        store = self.store
        if store is None:
            return
        me = os.getpid()
        try:
            for task_id in store.held_by(self.worker_id):
                peek = store.peek(task_id)
                lost = (
                    peek.status is Status.RUNNING
                    and peek.owner == self.worker_id
                    and peek.pid != me
                    and not pid_alive(peek.pid)
                )
                if lost and store.park(task_id, peek.fence, self.worker_id, Status.RELEASED):
                    logger.warning(
                        "task %s: its pool process %d is gone; checkpoint released for resume",
                        task_id,
                        peek.pid,
                    )
        except CheckpointError as exc:
            logger.warning("checkpoints of lost pool processes not checked, will retry: %s", exc)
        except Exception:
            logger.exception("checking for lost pool processes crashed, will retry")

    def scan(self) -> None:
        if self.resumer is None:
            return
        try:
            report = self.resumer.scan(revoked=worker_state.revoked)
        except CheckpointError as exc:
            logger.warning("checkpoint resume scan failed, will retry: %s", exc)
            return
        except Exception:
            # Nothing may end the scanning thread.
            logger.exception("checkpoint resume scan crashed, will retry")
            return
        self.scans += 1
        if report.outcomes:
            logger.info("checkpoint resume scan: %s", report.summary())


#: One steward per store this worker's checkpointed tasks use; ``_steward``
#: is the app-level store's (or the first), for code that wants one.
_stewards: list[Steward] = []
_steward: Steward | None = None


def _name_this_start(sender: str | None = None, **_: Any) -> None:
    if sender:
        start_worker_identity(sender)


def _start_lease(sender: Any = None, **_: Any) -> None:
    global _steward
    worker = sender
    if not identity.worker_id:
        start_worker_identity(worker.hostname)
    identity.task_events = bool(getattr(worker, "task_events", False))
    try:
        config = CheckpointConfig.from_sources(worker.app.conf)
    except ValueError as exc:
        # Celery logs and swallows an Exception raised by a signal handler, before
        # its logging is set up: the worker would start and run every task without
        # checkpoints, saying nothing. SystemExit is not swallowed; the worker does
        # not start, as with Celery's own ImproperlyConfigured.
        raise SystemExit(f"celery-checkpoint: {exc}; the worker does not start") from exc
    inventory = task_stores(worker.app, config)
    for name, why in inventory.invalid.items():
        logger.error("task %s: its checkpoint settings are not valid: %s", name, why)
    configs, storeless = inventory.configs, inventory.storeless
    if storeless:
        logger.warning(
            "checkpoint_store_url is not set for %s: %s run without checkpoints and are never resumed",
            ", ".join(sorted(storeless)),
            "it" if len(storeless) == 1 else "they",
        )
    _stop_steward()  # a worker started earlier in this process (tests) that never shut down
    for each in configs:
        _stewards.append(_steward_for(worker.app, each))
    _steward = _stewards[0] if _stewards else None


def _steward_for(app: Any, config: CheckpointConfig) -> Steward:
    def open_store() -> CheckpointStore:
        return create_store(config.store_url or "", prefix=config.key_prefix, done_ttl=config.done_ttl)

    try:
        store: CheckpointStore | None = open_store()
    except CheckpointError as exc:
        # Not fatal: the steward keeps trying, and holds the lease once it can.
        logger.warning("checkpoint store not opened (will keep trying): %s", exc)
        store = None
    steward = Steward(app, store, config, identity.worker_id, opener=open_store)
    if store is not None:
        steward.register()
    logger.info("checkpoints: store %s, worker id %s", redact(config.store_url or ""), identity.worker_id)
    return steward


def _start_steward(**_: Any) -> None:
    for steward in _stewards:
        steward.start()


def _stop_steward(**_: Any) -> None:
    global _steward
    for steward in _stewards:
        steward.request_stop()  # all at once: each stop() may wait for a scan
    while _stewards:
        _stewards.pop().stop()
    _steward = None


def _forget_revoked(request: Any = None, sender: Any = None, **_: Any) -> None:
    task = sender
    if request is None or not _is_checkpoint_task(task):
        return
    store = task.checkpoint_store()
    if store is None:
        return
    try:
        if store.delete(request.id):
            logger.info("task %s was revoked: its checkpoint is removed", request.id)
    except CheckpointError as exc:
        logger.error("task %s was revoked but its checkpoint could not be removed: %s", request.id, exc)


#: The signal by which the main process asks a pool child to hand off its run.
HANDOFF_SIGNAL = os_signal.SIGUSR2


def _install_handoff_handler(**_: Any) -> None:
    os_signal.signal(HANDOFF_SIGNAL, _on_handoff_signal)


def _on_handoff_signal(signum: int, frame: Any) -> None:
    runs_in_process.request_stop()


def _hand_off_running_tasks(sig: str | None = None, how: str | None = None, **_: Any) -> None:
    """Runs in the main process's signal handler: set flags and send signals only.

    Reaches the runs whose acceptance this process has already handled; a
    run accepted later is asked by :func:`ask_pool_child_to_hand_off` from
    ``CheckpointRequest.on_accepted``.
    """
    runs_in_process.request_stop()
    for request in list(worker_state.active_requests):
        if _is_checkpoint_task(getattr(request, "task", None)):
            ask_pool_child_to_hand_off(getattr(request, "worker_pid", None))


def ask_pool_child_to_hand_off(pid: int | None) -> None:
    """Signal the pool child ``pid`` to stop its run at its next save and hand it off.

    Nothing for a run of this process (solo and threads pools): those are
    asked directly, by ``runs_in_process``. Only ever sent to a child that has
    accepted a task, so one past ``worker_process_init``, whose handler is
    installed (the default action of ``SIGUSR2`` would kill it).
    """
    if pid and pid != os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, HANDOFF_SIGNAL)


def on_run_lost(task: Any, request: Any, exc: BaseException) -> None:
    """Called in the main process when a run ended outside the task body."""
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    store = task.checkpoint_store()
    if store is None:
        return
    lost = isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt))
    timed_out = isinstance(exc, TimeLimitExceeded)
    if isinstance(exc, Terminated):
        store.delete(request.id)  # revoke(terminate=True): revoked, not interrupted
        return
    if not (lost or timed_out):
        return
    peek = store.peek(request.id)
    if _held_by_another_live_run(peek, request):
        logger.warning(
            "task %s: a duplicate's process was lost; the checkpoint stays with the run that holds it",
            request.id,
        )
        return
    requeued = task.acks_late and (
        (task.reject_on_worker_lost and lost and not _retries_spent_on_loss(task, request))
        or (timed_out and not _acks_on_timeout(task))
    )
    if requeued:
        # Claim it for this living worker before Celery requeues the message,
        # so the redelivery (on any worker) takes it over without waiting.
        # Fenced on the peek: a live run of another pool process of this
        # worker may have taken it over since (same owner, new fence). A
        # peek that found nothing saw fence 0, which no record ever has.
        me = identity.worker_id
        claim = store.claim(request.id, me, me, task.checkpoint_config.max_resumes, expected_fence=peek.fence)
        if claim.outcome is ClaimOutcome.POISONED and claim.record is not None:
            mark_poisoned(task, claim.record)
        elif claim.outcome is ClaimOutcome.CLAIMED and claim.record is not None:
            # Queued with no owner, as the resume scan leaves what it sends:
            # the requeued message takes it over; if none comes (the broker
            # had already handed this message out again, as a duplicate that
            # was dropped while this run was alive), the scan sends the task
            # again after checkpoint_requeue_after.
            store.park(request.id, claim.record.fence, me, Status.QUEUED)
            logger.warning("task %s: its process was lost; it resumes from its checkpoint", request.id)
    elif not worker_state.should_terminate and peek.exists:
        # A terminal failure stored by Celery: gone, and marked done as fail()
        # does, at the fence the peek saw (a takeover since keeps its record).
        store.finish(request.id, peek.fence, peek.owner)


def _acks_on_timeout(task: Any) -> bool:
    """Whether Celery acks (does not requeue) a run that hit its hard time limit.

    Celery 5.7 reads ``acks_on_timeout`` (``task_acks_on_timeout``), which
    falls back to the deprecated ``acks_on_failure_or_timeout`` when unset;
    older Celery has only the latter. Reading another flag than Celery does
    deletes the checkpoint of a message Celery requeues, or keeps one Celery
    failed for good.
    """
    flag = getattr(task, "acks_on_timeout", None)
    if flag is None:
        flag = getattr(task, "acks_on_failure_or_timeout", None)
    return True if flag is None else bool(flag)


def _retries_spent_on_loss(task: Any, request: Any) -> bool:
    """Whether Celery fails this lost run for good although it would requeue it.

    With ``retry_on_worker_lost`` (Celery 5.7), a lost run is retried by
    Celery itself until ``max_retries``; past it, Celery acks the message and
    stores FAILURE instead of requeueing. The checkpoint must then go, or a
    later scan would run a task Celery has failed.
    """
    if not getattr(task, "retry_on_worker_lost", False) or task.max_retries is None:
        return False
    retries = (getattr(request, "request_dict", None) or {}).get("retries") or 0
    return bool(retries >= task.max_retries)


def _held_by_another_live_run(peek: Peek, request: Any) -> bool:
    """Whether the checkpoint ``peek`` saw belongs to a live run other than the lost one.

    The lost process may have run a duplicate delivery (e.g. OOM-killed
    before its first ``save()`` found the task busy) while the real run goes
    on in another pool process of this worker, or on another worker: claiming
    or deleting its checkpoint would fence that run out. Without the lost
    process's pid (``Request.worker_pid``, unknown if it died before Celery
    heard it accepted the task) a run of this worker cannot be told apart,
    and the checkpoint is taken as the lost run's.

    The caller claims the checkpoint fenced on this same ``peek``: what is
    decided here holds only for the fence it saw.
    """
    if peek.status is not Status.RUNNING:
        return False
    if peek.owner != identity.worker_id:
        return peek.owner_alive
    lost_pid = getattr(request, "worker_pid", None)
    return bool(lost_pid) and peek.pid != lost_pid and pid_alive(peek.pid)


signals.celeryd_init.connect(_name_this_start, weak=False)
signals.worker_init.connect(_start_lease, weak=False)
signals.worker_ready.connect(_start_steward, weak=False)
signals.worker_shutdown.connect(_stop_steward, weak=False)
signals.task_revoked.connect(_forget_revoked, weak=False)
signals.worker_process_init.connect(_install_handoff_handler, weak=False)
signals.worker_shutting_down.connect(_hand_off_running_tasks, weak=False)


def _is_checkpoint_task(task: Any) -> bool:
    from .task import CheckpointTask

    return isinstance(task, CheckpointTask)
