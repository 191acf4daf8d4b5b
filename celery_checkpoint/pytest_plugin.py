"""pytest fixtures for testing your own checkpointed tasks, with no broker and no worker.

Loaded automatically (the ``pytest11`` entry point ``celery_checkpoint``):

* ``checkpoint_store``: a fresh in-memory store for the test.
* ``checkpoint_runner``: runs a task, crashes it after N persisted saves,
  resumes it the way a worker would, and returns what happened::

      def test_total_resumes(checkpoint_runner):
          run = checkpoint_runner.run_interrupted(total, args=(10,), interrupt_after=4)
          assert run.result == 55
          assert run.saved_states == [{"i": i, "total": i * (i + 1) // 2} for i in range(1, 11)]

The crash is a private ``BaseException`` raised inside ``checkpoint.save()``
right after the Nth save reached the store. Celery's tracer re-raises a
``BaseException`` that is not an ``Exception`` without calling
``on_failure``, so, as after a SIGKILL, nothing after that save runs and the
checkpoint stays. (Unlike a SIGKILL, ``finally:`` blocks in the body do run.)
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from .checkpointer import Checkpointer
from .config import CheckpointConfig
from .envelope import envelope_from_request, parse_envelope
from .record import ResumeEnvelope, Status, accepted_content_types, decode, worker_id
from .stores.base import CheckpointStore, ClaimOutcome
from .stores.memory import MemoryStore
from .task import CheckpointTask

__all__ = ["CheckpointRunner", "InterruptedRun", "checkpoint_runner", "checkpoint_store"]


class _SimulatedCrash(BaseException):
    """Raised from ``save()`` to stop a run the way a dead worker would.

    Not an ``Exception``: the task body's ``except Exception`` does not catch
    it, and Celery's tracer lets it through without running ``on_failure``
    (which would delete the checkpoint a crash leaves behind).
    """


@dataclass
class InterruptedRun:
    """What ``run_interrupted`` saw, for the test's assertions."""

    #: The one task id both runs used.
    task_id: str
    #: The resumed run's return value.
    result: Any
    #: States the first run persisted, read back from the store, in order.
    first_run_states: list[Any]
    #: States the resumed run persisted, in order.
    resumed_states: list[Any]
    #: The state the checkpoint held when the task was resumed (the last first-run save).
    resumed_from: Any
    #: ``checkpoint.resume_count`` as the resumed run saw it (1 for a resumed task).
    resume_count: int
    #: Whether the resumed run called ``checkpoint.load()`` at all.
    loaded_on_resume: bool

    @property
    def saved_states(self) -> list[Any]:
        """Every persisted state of both runs: a task that restarted from zero
        shows its first states twice."""
        return [*self.first_run_states, *self.resumed_states]


class _RecordingCheckpointer(Checkpointer):
    """A real checkpointer that records each persisted state and can crash the run."""

    def __init__(self, *, sink: list[Any], crash_after: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sink = sink
        self.crash_after = crash_after
        self.loaded = False
        self.crashed = False

    def load(self) -> Any:
        self.loaded = True
        return super().load()

    def save(self, state: Any, progress: float | None = None, force: bool = False) -> bool:
        persisted = super().save(state, progress=progress, force=force)
        if persisted:
            self.sink.append(self._stored_state())
            if self.crash_after is not None and len(self.sink) >= self.crash_after:
                self.crashed = True
                raise _SimulatedCrash(f"simulated crash after save {len(self.sink)}")
        return persisted

    def _stored_state(self) -> Any:
        """The state as the store has it now: what a resumed run would load."""
        record = self.store.get(self.task_id)
        assert record is not None, f"task {self.task_id}: save() returned True but nothing is stored"
        return decode(record.state, self.accept, task_id=self.task_id)


@dataclass
class _Run:
    """One run's checkpointer(s), as created by the task while it ran."""

    handles: list[_RecordingCheckpointer] = field(default_factory=list)
    states: list[Any] = field(default_factory=list)

    @property
    def handle(self) -> _RecordingCheckpointer | None:
        return self.handles[-1] if self.handles else None


@dataclass(frozen=True)
class _Plan:
    """What both runs of one ``run_interrupted`` call share."""

    task: Any
    config: CheckpointConfig
    task_id: str
    throttle: float


class CheckpointRunner:
    """Runs checkpointed tasks in this process against one store (``checkpoint_store``)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def run_interrupted(
        self,
        task: Any,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        interrupt_after: int,
        throttle: float = 0.0,
    ) -> InterruptedRun:
        """Run ``task``, crash it after ``interrupt_after`` persisted saves, resume it.

        Both runs use the same task id and different worker ids, as when a
        worker dies and another one resumes the task. The resumed run gets the
        call recorded in the checkpoint (so the args must survive the
        serializer) and must finish; its checkpoint must then be deleted.
        ``throttle`` defaults to 0 so that every ``save()`` is persisted.
        """
        if interrupt_after < 1:
            raise ValueError("interrupt_after must be >= 1 (the run crashes after that many saves)")
        task = _registered(task)
        plan = _Plan(task, CheckpointConfig.from_sources(task.app.conf, task), uuid.uuid4().hex, throttle)
        first = self._first_run(plan, list(args), dict(kwargs or {}), interrupt_after)
        resumed_from, envelope = self._claim_like_a_worker(plan)
        second = _Run()
        with _checkpointers(task, self._factory(plan, second, "resumed-run", None)):
            eager = task.apply(envelope.args, envelope.kwargs, task_id=plan.task_id, throw=False)
        result = eager.get(disable_sync_subtasks=False)  # re-raises the body's error
        if self.store.get(plan.task_id) is not None:
            raise AssertionError(f"task {plan.task_id}: its checkpoint was not deleted after it succeeded")
        handle = second.handle
        return InterruptedRun(
            task_id=plan.task_id,
            result=result,
            first_run_states=first.states,
            resumed_states=second.states,
            resumed_from=resumed_from,
            resume_count=handle.resume_count if handle is not None else 0,
            loaded_on_resume=handle is not None and handle.loaded,
        )

    def _first_run(self, plan: _Plan, args: list[Any], kwargs: dict[str, Any], interrupt_after: int) -> _Run:
        """Run until the simulated crash; anything else is the test's failure."""
        run = _Run()
        try:
            with _checkpointers(plan.task, self._factory(plan, run, "first-run", interrupt_after)):
                eager = plan.task.apply(args, kwargs, task_id=plan.task_id, throw=False)
        except _SimulatedCrash:
            return run
        eager.get(disable_sync_subtasks=False)  # the body failed before the crash: its error
        if run.handle is not None and run.handle.crashed:
            raise AssertionError(
                f"{plan.task.name}: the task body swallowed the simulated crash (a bare `except:` or "
                "`except BaseException:`); a real crash cannot be caught like that"
            )
        raise AssertionError(
            f"{plan.task.name} finished after {len(run.states)} persisted save(s), before "
            f"interrupt_after={interrupt_after}: nothing was interrupted"
        )

    def _factory(self, plan: _Plan, run: _Run, host: str, crash_after: int | None) -> Any:
        """What ``CheckpointTask`` calls to build the run's checkpointer (see ``_checkpointers``)."""
        owner = worker_id(f"pytest-{host}", uuid.uuid4().hex[:12])
        config = plan.config

        def open_checkpointer(request: Any) -> Checkpointer:
            handle = _RecordingCheckpointer(
                sink=run.states,
                crash_after=crash_after,
                task_id=request.id,
                task_name=plan.task.name,
                store=self.store,
                owner=owner,
                throttle=plan.throttle,
                serializer=config.serializer,
                accept=accepted_content_types(config.serializer),
                max_state_bytes=config.max_state_bytes,
                envelope=functools.partial(envelope_from_request, plan.task, request),
            )
            run.handles.append(handle)
            return handle

        return open_checkpointer

    def _claim_like_a_worker(self, plan: _Plan) -> tuple[Any, ResumeEnvelope]:
        """Do what a worker's resume scan does with the dead run's checkpoint.

        Claiming is what counts a resume (``resume_count`` 1); the recorded
        call must decode, or no worker could have sent the task again.
        """
        task_id, config = plan.task_id, plan.config
        record = self.store.get(task_id)
        if record is None:
            raise AssertionError(f"task {task_id}: the crashed run left no checkpoint")
        accept = accepted_content_types(config.serializer)
        envelope = parse_envelope(decode(record.envelope, accept, task_id=task_id), task_id=task_id)
        claimer = worker_id("pytest-resume-scan", uuid.uuid4().hex[:12])
        claim = self.store.claim(task_id, record.owner, claimer, config.max_resumes)
        if claim.outcome is not ClaimOutcome.CLAIMED or claim.record is None:
            raise AssertionError(
                f"task {task_id}: the resume scan would not resume it ({claim.outcome.value}; "
                f"checkpoint_max_resumes={config.max_resumes})"
            )
        self.store.park(task_id, claim.record.fence, claimer, Status.QUEUED)
        return decode(record.state, accept, task_id=task_id), envelope


def _registered(task: Any) -> Any:
    """The task instance its app runs (``task.apply`` looks it up by name)."""
    if not isinstance(task, CheckpointTask):
        raise TypeError(f"{task!r} is not a CheckpointTask: declare it with base=CheckpointTask")
    registered = task.app.tasks.get(task.name)
    if registered is None:
        raise LookupError(f"task {task.name!r} is not registered in its app {task.app.main!r}")
    return registered


@contextmanager
def _checkpointers(task: Any, factory: Any) -> Iterator[None]:
    """Have ``task`` build its checkpointers with ``factory`` for a while.

    An instance attribute shadows ``CheckpointTask._open_checkpointer``, so
    the body, ``on_success`` and ``on_failure`` all run unchanged around a
    checkpointer the runner controls.
    """
    task._open_checkpointer = factory
    try:
        yield
    finally:
        del task._open_checkpointer


@pytest.fixture
def checkpoint_store() -> Iterator[MemoryStore]:
    """A fresh in-memory checkpoint store, private to the test."""
    store = MemoryStore(url="memory://pytest")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def checkpoint_runner(checkpoint_store: MemoryStore) -> CheckpointRunner:
    """Runs checkpointed tasks in-process, crashing and resuming them on ``checkpoint_store``."""
    return CheckpointRunner(checkpoint_store)
