"""``CheckpointTask``: the Celery task base class that gives a body its checkpointer.

The task's own handlers decide the checkpoint's fate, after Celery stored the
outcome: ``on_success`` and a terminal ``on_failure`` delete it, ``on_retry``
keeps it for the retried run. A run that never reaches a handler (the process
was killed) keeps it for the resume scan. In the worker's main process,
:class:`CheckpointRequest` turns a lost pool child into a prompt resume.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.utils import uuid
from celery.utils.time import maybe_make_aware
from celery.worker.request import Request

from .checkpointer import Checkpointer, NullCheckpointer
from .config import CheckpointConfig
from .envelope import FENCE_HEADER, FRESH_HEADER, envelope_from_request, envelope_from_retry
from .errors import CheckpointError, CheckpointHandoff, CheckpointStoreError, DuplicateRun
from .events import persist_hook
from .ownership import Handover
from .record import accepted_content_types, warn_if_unsafe
from .runtime import current_worker_id, runs_in_process
from .settle import settle_in_background
from .stores import CheckpointStore, open_store

logger = logging.getLogger(__name__)

#: The keyword argument a task body receives its checkpointer by.
CHECKPOINT_ARG = "checkpoint"

AnyCheckpointer = Checkpointer | NullCheckpointer


class CheckpointRequest(Request):  # type: ignore[misc]
    """Celery's request, plus what a checkpointed task needs in the main process.

    A pool child killed mid-run (the OOM killer's usual victim) is reported
    here as ``WorkerLostError``. Before Celery requeues the message, the
    checkpoint is claimed by this (living) worker, so the requeued delivery
    takes it over at once instead of waiting for a lease that will never
    expire. A hard time limit is treated the same way when Celery requeues
    its message (``acks_late`` without ``acks_on_timeout``). A run whose
    message is not requeued failed for good: the checkpoint is deleted. A
    lost duplicate leaves alone the checkpoint of the live run that holds it.

    A run accepted after the worker began to shut down is asked to hand off
    as soon as its acceptance arrives: the shutdown's own request reached
    only the runs whose pool child the main process knew by then.
    """

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        super().on_accepted(pid, time_accepted)
        if runs_in_process.stopping:
            from .worker import ask_pool_child_to_hand_off  # the worker module imports this one

            ask_pool_child_to_hand_off(pid)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        from .worker import on_run_lost  # the worker module imports this one

        task: CheckpointTask = self.task
        try:
            on_run_lost(task, self, exc_info.exception)
        except Exception:
            logger.exception("task %s: could not update its checkpoint after the run was lost", self.id)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class CheckpointTask(Task):  # type: ignore[misc]
    """Base class for tasks that save their progress and resume after a crash.

    The body receives a ``checkpoint`` keyword argument (never sent in the
    message) when its signature has a ``checkpoint`` parameter; otherwise it
    reads ``self.checkpoint``.
    """

    #: Redelivered when the worker dies mid-run: a checkpointed task is meant
    #: to survive the loss of its process.
    acks_late = True
    #: A lost pool child requeues the message instead of storing WorkerLostError.
    reject_on_worker_lost = True
    Request = "celery_checkpoint.task:CheckpointRequest"

    #: Per-task overrides of the ``checkpoint_*`` settings (``None``: use app.conf).
    checkpoint_store_url: str | None = None
    checkpoint_throttle: float | None = None
    checkpoint_serializer: str | None = None
    checkpoint_max_state_bytes: int | None = None
    checkpoint_max_resumes: int | None = None
    checkpoint_on_store_error: str | None = None
    checkpoint_events: bool | None = None

    _takes_checkpoint_arg: ClassVar[bool] = False
    _checkpoint_config_cache: CheckpointConfig | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is None:
            return
        function = run.__func__ if isinstance(run, staticmethod) else run
        cls._takes_checkpoint_arg = CHECKPOINT_ARG in inspect.signature(function).parameters
        header = cls.__dict__.get("__header__")
        if cls._takes_checkpoint_arg and header is not None:
            check = header.__func__ if isinstance(header, staticmethod) else header
            cls.__header__ = staticmethod(_header_without_checkpoint(check))

    # -- configuration -------------------------------------------------------

    @property
    def checkpoint_config(self) -> CheckpointConfig:
        """The settings in force for this task (app.conf + task options)."""
        config = self._checkpoint_config_cache
        if config is None:
            config = CheckpointConfig.from_sources(self.app.conf, self)
            warn_if_unsafe(config.serializer)
            self._checkpoint_config_cache = config
        return config

    def checkpoint_store(self) -> CheckpointStore | None:
        """This process's store for this task, or ``None`` when none is configured."""
        config = self.checkpoint_config
        if not config.store_url:
            return None
        return open_store(config.store_url, prefix=config.key_prefix, done_ttl=config.done_ttl)

    # -- running -------------------------------------------------------------

    @property
    def checkpoint(self) -> AnyCheckpointer:
        """The current run's checkpointer (a no-op one outside a run).

        Created on first use, so a task that never asks for it pays nothing.
        """
        request = self.request
        handle: AnyCheckpointer | None = getattr(request, "checkpoint", None)
        if handle is None:
            if request.called_directly or request.id is None:
                return NullCheckpointer()
            handle = request.checkpoint = self._open_checkpointer(request)
        return handle

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        # A run that calls its own task directly finds its own request on
        # top (Celery pushes the direct call's after this): a plain call.
        if request.called_directly or request.id is None or hasattr(request, "checkpoint"):
            if self._takes_checkpoint_arg:
                kwargs[CHECKPOINT_ARG] = NullCheckpointer()
            return super().__call__(*args, **kwargs)
        request.checkpoint = None
        if self._takes_checkpoint_arg:
            kwargs[CHECKPOINT_ARG] = request.checkpoint = self._open_checkpointer(request)
        try:
            if _suspect_delivery(request):
                # A redelivery or a retry may race a live run of the same id:
                # settle ownership before the body has any side effect.
                handle = self.checkpoint
                if isinstance(handle, Checkpointer):
                    handle.begin()
            return self.run(*args, **kwargs)
        except DuplicateRun as exc:
            logger.warning("%s", exc)
            raise
        except (Ignore, Reject) as exc:
            if not isinstance(exc, CheckpointError):  # those settle themselves
                self._settle_unrecorded(exc)
            raise
        except CheckpointStoreError as exc:
            if self.checkpoint_config.on_store_error != "retry" or request.is_eager:
                raise
            raise self._retry_after_store_error(exc) from exc
        finally:
            opened = request.checkpoint
            if opened is not None:
                opened.close()

    def _settle_unrecorded(self, exc: Ignore | Reject) -> None:
        """The body ended by ``Ignore`` or ``Reject``, outcomes Celery reports to no handler.

        Left alone, the checkpoint would stay ``running`` under this live
        process, so the next delivery of the task id would be dropped as a
        duplicate, and a later scan would run the task again. A requeue
        (``Reject(requeue=True)``) hands it to the requeued delivery, as a
        shutdown handoff does; ``Ignore`` and a reject that drops the
        message end the task: the checkpoint is deleted like a finished one's.
        """
        if isinstance(exc, Reject) and exc.requeue:
            self._settle(self.request.id, lambda handle: handle.release())
        else:
            self._settle(self.request.id, lambda handle: handle.complete())

    def on_replace(self, sig: Any) -> Any:
        """Celery's ``replace``, once this run's checkpoint is gone.

        The replacement runs under this task id, and may be sent to another
        worker at once: it must not find this body's state, nor a checkpoint
        running under this live process (it would be dropped as a
        duplicate), nor a "finished" marker. So the checkpoint is removed
        before the replacement is sent.
        """
        handle = getattr(self.request, "checkpoint", None)
        if isinstance(handle, Checkpointer):
            handle.discard()
        return super().on_replace(sig)

    def _retry_after_store_error(self, exc: CheckpointStoreError) -> BaseException:
        """Wait out the delay in this run, then re-send the task due at once.

        A ``countdown`` would make the retry an ETA message, parked in some
        worker's prefetch until it is due. When it falls due Celery lowers
        that worker's prefetch limit again, and kombu's Redis transport keeps
        any message its outstanding ``BRPOP`` pops meanwhile unread in the
        socket: in neither the queue nor the unacked hash. A SIGKILL then
        loses that message for good, and a task that never saved (a first
        read failed in the same outage) had nothing else that knew its call.
        Waiting here costs a pool slot for the delay; while the store is down
        a checkpointed task cannot make progress anyway.
        """
        request = self.request
        retries = request.retries or 0
        if self.max_retries is not None and retries >= self.max_retries:
            logger.warning("task %s: checkpoint store failed; no retries left: %s", request.id, exc)
        else:
            delay = self.checkpoint_config.store_retry_delay * 2**retries
            logger.warning("task %s: checkpoint store failed; retrying in %.1fs: %s", request.id, delay, exc)
            time.sleep(delay)
        return self.retry(exc=exc, countdown=0)  # type: ignore[no-any-return]

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Celery's retry, handing this run's checkpoint to the retried run.

        The message carries this run's :class:`~celery_checkpoint.ownership.Handover`,
        so the retried delivery can take the checkpoint over even if this run
        could not mark it ``waiting`` (for instance because the store was down).
        """
        if isinstance(exc, CheckpointHandoff):
            # autoretry_for=(Exception,) catches the handoff (a Reject, not an
            # Ignore): it must still reach Celery, which requeues the message
            # at once, instead of becoming an ETA retry that spends a retry.
            raise exc
        handle = getattr(self.request, "checkpoint", None)
        handover = handle.handover if isinstance(handle, Checkpointer) else None
        headers = {**(self.request.headers or {}), **(options.get("headers") or {})}
        headers.pop(FRESH_HEADER, None)  # the retried delivery may find this run's checkpoint
        if handover is not None:  # else the handover this run was given, if any, goes on
            headers[FENCE_HEADER] = handover.to_header()
        options["headers"] = headers
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, *more: Any, **options: Any
    ) -> Any:
        """Celery's ``apply_async``; a call it names itself is marked as never seen.

        The first delivery of such a call cannot have a checkpoint to resume
        (nobody else knows its id), so its ``load()`` costs no round trip.
        A redelivery the broker flags, a retry and a resume are still read
        first; an unflagged duplicate is stopped at its first save, where
        the store refuses to create a second checkpoint or one for a task
        id already finished.
        """
        if task_id is None:
            task_id = uuid()
            options["headers"] = {**(options.get("headers") or {}), FRESH_HEADER: True}
        return super().apply_async(args, kwargs, task_id, *more, **options)

    def _open_checkpointer(self, request: Any) -> AnyCheckpointer:
        store = self.checkpoint_store()
        if store is None:
            return NullCheckpointer()
        config = self.checkpoint_config
        return Checkpointer(
            task_id=request.id,
            task_name=self.name,
            store=store,
            owner=current_worker_id(request.hostname),
            throttle=config.throttle,
            serializer=config.serializer,
            accept=accepted_content_types(config.serializer),
            max_state_bytes=config.max_state_bytes,
            on_store_error=config.on_store_error,
            envelope=_call_recorder(self, request),
            on_persist=persist_hook(self, config.events),
            handed=Handover.from_header(getattr(request, FENCE_HEADER, None)),
            unseen=bool(getattr(request, FRESH_HEADER, False)) and not _suspect_delivery(request),
        )

    # -- outcomes (called by Celery after it stored the outcome) --------------

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self._settle(task_id, lambda handle: handle.complete())

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, (Ignore, Reject)):
            return
        self._settle(task_id, lambda handle: handle.fail(exc))

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # If the retry has not started checkpoint_requeue_after seconds after
        # it was due, its message was lost (kombu can lose a message to a
        # SIGKILL; README): a worker's scan sends it again. The retry's own
        # call (its args, routing and retries count) is what a re-send, or a
        # resume of the retried run, sends from now on.
        retry = _retry_of(einfo)
        resend_after = self._retry_due_in(retry) + self.checkpoint_config.requeue_after
        call = None if retry is None or retry.sig is None else envelope_from_retry(retry.sig, task_id)
        self._settle(task_id, lambda handle: handle.suspend(resend_after, call))

    def _retry_due_in(self, retry: Retry | None) -> float:
        """Seconds until the retry Celery just sent is due (its ``countdown`` or ``eta``)."""
        when = None if retry is None else retry.when
        if isinstance(when, datetime.datetime):
            due: datetime.datetime = maybe_make_aware(when)
            now: datetime.datetime = self.app.now()
            return max(0.0, (due - now).total_seconds())
        if isinstance(when, (int, float)):
            return max(0.0, float(when))
        return float(self.default_retry_delay or 0)

    def _settle(self, task_id: str, action: Callable[[AnyCheckpointer], None]) -> None:
        """Apply ``action`` to this run's checkpoint; if the store call is cut short, in the background.

        The outcome is already stored, so nothing here may fail the task, and
        the checkpoint must not be left behind (a finished task's would be run
        again by a later scan). A soft time limit is raised asynchronously in
        whatever the pool process runs, the store call of an outcome handler
        included; escaping the handler it would be logged by Celery (or, from
        ``on_failure`` and ``on_retry``, replace the stored outcome) and the
        checkpoint kept. It is handled like a store blip: the action is
        retried in a thread, where no soft time limit is delivered. Retrying
        is safe even if the interrupted call was applied: every settlement
        is fenced by the run's token, so a second one changes nothing.
        """
        handle = getattr(self.request, "checkpoint", None)
        if handle is None:
            return
        try:
            action(handle)
        except (CheckpointStoreError, SoftTimeLimitExceeded) as exc:
            logger.warning("task %s: could not settle its checkpoint, will retry: %s", task_id, exc)
            settle_in_background(task_id, functools.partial(action, handle))
        except CheckpointError:
            logger.exception("task %s: could not settle its checkpoint", task_id)


def _call_recorder(task: CheckpointTask, request: Any) -> Callable[[], dict[str, Any]]:
    """What the first save records of the call, holding the request weakly.

    The request holds its checkpointer (``request.checkpoint``); a strong
    reference back would make every run's request, and all it holds, a
    cycle that only the cyclic GC frees: ~10 objects per task, a gen-0
    collection every ~70 short tasks, and a larger working set in a busy
    pool child. The request lives as long as its run, so it is there for
    any save the body makes.
    """
    ref = weakref.ref(request)
    task_id = request.id

    def record() -> dict[str, Any]:
        live = ref()
        if live is None:
            raise CheckpointError(f"task {task_id}: its run is over; a first save cannot record its call")
        return envelope_from_request(task, live)

    return record


def _retry_of(einfo: Any) -> Retry | None:
    """The ``Retry`` Celery raised, which billiard's ``ExceptionInfo`` wraps."""
    exception = getattr(einfo, "exception", None)
    for candidate in (exception, getattr(exception, "exc", None)):
        if isinstance(candidate, Retry):
            return candidate
    return None


def _suspect_delivery(request: Any) -> bool:
    """A delivery that may duplicate a live or finished run of its task id."""
    delivery_info = request.delivery_info or {}
    return bool(
        delivery_info.get("redelivered")
        or getattr(request, "redelivered", False)
        or getattr(request, FENCE_HEADER, None)
    )


def _header_without_checkpoint(check: Callable[..., Any]) -> Callable[..., Any]:
    """Celery's argument check, minus the injected ``checkpoint`` parameter."""

    @functools.wraps(check)
    def header(*args: Any, **kwargs: Any) -> Any:
        if CHECKPOINT_ARG in kwargs:
            raise TypeError(
                f"{CHECKPOINT_ARG!r} is injected by CheckpointTask when the task runs; "
                "do not pass it when calling the task"
            )
        return check(*args, **{CHECKPOINT_ARG: None}, **kwargs)

    return header
