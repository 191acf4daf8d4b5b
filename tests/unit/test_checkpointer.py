"""The per-run handle: throttle, errors, threads, serialization."""

from __future__ import annotations

import datetime
import decimal
import importlib.util
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_checkpoint import (
    CheckpointOwnershipLost,
    CheckpointSerializationError,
    CheckpointStateTooLarge,
    CheckpointStoreError,
    DuplicateRun,
)
from celery_checkpoint import checkpointer as checkpointer_module
from celery_checkpoint.alarm import Alarm, alarm
from celery_checkpoint.checkpointer import Checkpointer
from celery_checkpoint.ownership import Handover
from celery_checkpoint.record import accepted_content_types, worker_id
from celery_checkpoint.stores import CheckpointStore, create_store
from tests.conftest import store_of_kind
from tests.harness import RedisServer, free_port, require

OWNER = worker_id("w1@host", "aaaa")


def make(store: CheckpointStore, throttle: float = 0.0, task_id: str = "t1", **kw: Any) -> Checkpointer:
    options: dict[str, Any] = {
        "task_id": task_id,
        "task_name": "app.task",
        "store": store,
        "owner": OWNER,
        "throttle": throttle,
        "serializer": "json",
        "accept": accepted_content_types("json"),
        "max_state_bytes": 1024,
        "envelope": lambda: {"args": [], "kwargs": {}, "options": {"task_id": task_id}},
    }
    options.update(kw)
    return Checkpointer(**options)


@pytest.fixture
def store() -> CheckpointStore:
    return create_store(f"memory://{uuid.uuid4().hex}")


def test_first_run_loads_none_and_persists(store: CheckpointStore) -> None:
    cp = make(store)
    assert cp.load() is None
    assert cp.save({"i": 1}) is True
    assert cp.resume_count == 0 and cp.saves == 1
    record = store.get("t1")
    assert record is not None and json.loads(record.state.payload) == {"i": 1}


def test_throttle_skips_inside_window_and_force_overrides(store: CheckpointStore) -> None:
    cp = make(store, throttle=60)
    assert cp.save({"i": 1}) is True
    assert cp.save({"i": 2}) is False
    assert cp.saves == 1
    assert cp.save({"i": 3}, force=True) is True
    record = store.get("t1")
    assert record is not None and json.loads(record.state.payload) == {"i": 3}


def test_throttle_zero_or_negative_persists_every_call(store: CheckpointStore) -> None:
    for throttle in (0.0, -1.0):
        cp = make(store, throttle=throttle, task_id=f"t{throttle}")
        assert all(cp.save({"i": i}) for i in range(5))
        assert cp.saves == 5


def test_throttle_window_reopens(store: CheckpointStore) -> None:
    cp = make(store, throttle=0.05)
    assert cp.save({"i": 1})
    assert not cp.save({"i": 2})
    time.sleep(0.06)
    assert cp.save({"i": 3})


def test_a_window_long_enough_for_the_alarm_holds_and_then_reopens(store: CheckpointStore) -> None:
    throttle = 0.3  # above alarm.MIN_WINDOW: skipped saves read no clock, the alarm reopens
    cp = make(store, throttle=throttle)
    assert cp.save({"i": 1})
    persisted_at = time.monotonic()
    calls = 1
    while not cp.save({"i": calls + 1}):
        calls += 1
        assert time.monotonic() - persisted_at < 5, "the window never reopened"
        time.sleep(0.005)
    assert time.monotonic() - persisted_at >= throttle, "a save persisted inside the window"
    assert calls > 10 and cp.saves == 2
    record = store.get("t1")
    assert record is not None and json.loads(record.state.payload) == {"i": calls + 1}


def test_a_forked_child_reopens_the_windows_the_parent_alarm_held(store: CheckpointStore) -> None:

    cp = make(store, throttle=0.3)
    assert cp.save({"i": 1})
    assert not cp.save({"i": 2})  # armed in this process; the alarm thread is not forked
    pid = os.fork()
    if pid == 0:  # the child: its copy must persist once the window is over
        code = 1
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if cp.save({"i": 3}):
                    code = 0
                    break
                time.sleep(0.01)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's saves stayed throttled"
    cp.close()


def test_a_fork_while_the_alarm_reopens_a_window_reopens_it_in_the_child() -> None:
    """The window the thread has taken off its heap, but not reopened yet, is reopened in the child too."""
    parent = os.getpid()
    entered, release = threading.Event(), threading.Event()

    class Window:
        reopened = False

        def window_over(self) -> None:
            if os.getpid() == parent:  # the parent's alarm thread: hold it mid-reopening
                entered.set()
                release.wait(10)
            self.reopened = True

    window = Window()
    assert alarm.at(time.monotonic(), window)
    assert entered.wait(5), "the alarm thread never reached the window"
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if window.reopened else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
    assert os.waitstatus_to_exitcode(status) == 0, "the child's copy of the window stayed closed"


def test_short_runs_that_skipped_a_save_leave_the_alarm_nothing_to_do(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run arms the alarm and ends: their windows are dropped, and the thread does not wake per run."""
    own = Alarm()  # not the process's: earlier tests leave windows in that one
    monkeypatch.setattr(checkpointer_module, "alarm", own)
    for i in range(200):
        cp = make(store, throttle=0.3, task_id=f"short-{i}")
        assert cp.save({"i": 1}) and not cp.save({"i": 2})  # the skipped save arms the alarm
        cp.complete()
        cp.close()
        del cp  # the run is over: nothing holds its checkpointer
    assert own.pending <= 1
    time.sleep(0.5)  # past every window armed above
    assert own.pending == 0
    assert own.wakeups <= 5


def test_short_runs_behind_a_live_run_window_are_not_all_held(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ended runs' windows queued behind a live run's earlier one are dropped too, not kept for its window.

    A long task with a 60 s throttle and a stream of short ones with a
    300 s throttle (per-task options) kept an entry for every short run of
    the last minute: at 2,000 tasks a second, ~120,000 entries.
    """
    own = Alarm()
    monkeypatch.setattr(checkpointer_module, "alarm", own)
    long_run = make(store, throttle=60, task_id="long")
    assert long_run.save({"i": 1}) and not long_run.save({"i": 2})  # its window is the earliest
    for i in range(5000):
        cp = make(store, throttle=300, task_id=f"short-{i}")
        assert cp.save({"i": 1}) and not cp.save({"i": 2})
        cp.complete()
        cp.close()
        del cp
    assert own.pending < 500, f"{own.pending} windows held for 1 live run"
    long_run.close()


def test_a_window_too_long_for_a_timed_wait_does_not_kill_the_alarm(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A throttle past ``threading.TIMEOUT_MAX`` (~292 years, "never") must not end the alarm thread.

    The thread died on ``OverflowError``; a run arming while it was dying
    (its traceback being written) notified no one and its window never reopened.
    """
    own = Alarm()
    monkeypatch.setattr(checkpointer_module, "alarm", own)
    died: list[type[BaseException]] = []

    def slow_hook(args: threading.ExceptHookArgs) -> None:
        died.append(args.exc_type)
        time.sleep(1.0)  # a slow stderr: the dying thread still looks alive

    monkeypatch.setattr(threading, "excepthook", slow_hook)
    never = make(store, throttle=1e10, task_id="never")
    assert never.save({"i": 1}) and not never.save({"i": 2})  # arms for ~317 years from now
    time.sleep(0.2)
    cp = make(store, throttle=0.2, task_id="often")
    assert cp.save({"i": 1}) and not cp.save({"i": 2})
    deadline = time.monotonic() + 5
    while not cp.save({"i": 3}):
        assert time.monotonic() < deadline, "the window never reopened"
        time.sleep(0.01)
    assert not died, f"the alarm thread died: {died}"
    assert own._thread is not None and own._thread.is_alive()
    never.close()
    cp.close()


def test_a_resumed_run_loads_the_last_state_and_takes_over(store: CheckpointStore) -> None:
    first = make(store)
    first.save({"i": 7})
    first.close()
    claim = store.claim("t1", OWNER, worker_id("w2@h", "b"), 5)  # as the scan does
    assert claim.record is not None
    second = make(store, owner=worker_id("w3@h", "c"))
    assert second.load() == {"i": 7}
    assert second.resume_count == 1
    with pytest.raises(CheckpointOwnershipLost):
        first.save({"i": 8}, force=True)  # the stale run is fenced out
    assert second.save({"i": 8})
    record = store.get("t1")
    assert record is not None and json.loads(record.state.payload) == {"i": 8}


def test_a_duplicate_delivery_while_the_owner_lives_is_dropped(store: CheckpointStore) -> None:
    store.register(OWNER, 30)
    first = make(store)
    first.save({"i": 1})
    other = make(store, owner=worker_id("w2@h", "b"))
    with pytest.raises(DuplicateRun, match="alive"):
        other.load()


def test_a_late_delivery_after_success_is_dropped(store: CheckpointStore) -> None:
    cp = make(store)
    cp.save({"i": 1})
    cp.complete()
    assert store.get("t1") is None
    late = make(store, owner=worker_id("w2@h", "b"))
    with pytest.raises(DuplicateRun, match="already finished"):
        late.load()


class CountingStore:
    """The memory store, counting the reads a run makes before its body's first save."""

    def __init__(self, inner: CheckpointStore) -> None:
        self.inner = inner
        self.peeks = 0

    def peek(self, task_id: str) -> Any:
        self.peeks += 1
        return self.inner.peek(task_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TakenOverBeforeRemoval:
    """The memory store, where a newer run takes the checkpoint over just before any removal lands."""

    def __init__(self, inner: CheckpointStore, newer: str) -> None:
        self.inner = inner
        self.newer = newer

    def _take_over(self, task_id: str) -> None:
        seen = self.inner.peek(task_id)
        assert self.inner.takeover(task_id, seen.fence, seen.owner, self.newer, 5151) is not None

    def delete(self, task_id: str) -> bool:
        self._take_over(task_id)
        return self.inner.delete(task_id)

    def discard(self, task_id: str, fence: int, owner: str) -> bool:
        self._take_over(task_id)
        return self.inner.discard(task_id, fence, owner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_replaced_run_keeps_off_a_checkpoint_taken_over_as_it_discards_its_own(
    store: CheckpointStore,
) -> None:
    """``self.replace()`` removes the run's checkpoint, and only while it is still the run's."""
    newer = worker_id("w2@h", "b")
    cp = make(TakenOverBeforeRemoval(store, newer))  # type: ignore[arg-type]
    assert cp.save({"i": 1})
    first = cp.fence
    cp.discard()
    record = store.get("t1")
    assert record is not None, "the newer run's checkpoint was deleted"
    assert (record.owner, record.fence) == (newer, first + 1)


def test_a_run_whose_checkpoint_was_purged_cannot_overwrite_the_next_one(store: CheckpointStore) -> None:
    """``celery checkpoint purge`` of a live run, then a new delivery of its task id."""
    old = make(store)
    assert old.save({"i": 50})
    assert store.delete("t1")
    new = make(store, owner=worker_id("w2@h", "b"))
    assert new.load() is None
    assert new.save({"i": 1})
    assert new.fence != old.fence, "the new checkpoint must not start at the old run's fence"
    with pytest.raises(CheckpointOwnershipLost):
        old.save({"i": 51})
    record = store.get("t1")
    assert record is not None and json.loads(record.state.payload) == {"i": 1}
    assert new.save({"i": 2}) and new.saves == 2


def test_a_never_seen_call_loads_without_reading_the_store(store: CheckpointStore) -> None:
    counting = CountingStore(store)
    cp = make(counting, unseen=True)  # type: ignore[arg-type]
    assert cp.load() is None
    assert counting.peeks == 0
    assert cp.save({"i": 1}) is True
    cp.complete()
    assert store.get("t1") is None and store.peek("t1").done


def test_an_unflagged_duplicate_of_a_never_seen_call_stops_at_its_first_save(store: CheckpointStore) -> None:
    """What skipping the read costs: the duplicate runs up to its first save, not past it."""
    store.register(OWNER, 30)
    first = make(store, unseen=True)
    first.save({"i": 1})
    while_running = make(store, owner=worker_id("w2@h", "b"), unseen=True)
    assert while_running.load() is None
    with pytest.raises(CheckpointOwnershipLost):
        while_running.save({"i": 99})
    first.complete()
    after_success = make(store, owner=worker_id("w3@h", "c"), unseen=True)
    with pytest.raises(CheckpointOwnershipLost, match="already finished"):
        after_success.save({"i": 99})
    assert store.get("t1") is None, "neither duplicate left a checkpoint"


class AnswerLost:
    """The memory store, where the named calls are applied once but their answer never arrives."""

    def __init__(self, inner: CheckpointStore, *lose: str) -> None:
        self.inner = inner
        self.lose = set(lose)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in self.lose:
            return method

        def applied_then_lost(*args: Any, **kwargs: Any) -> Any:
            self.lose.discard(name)
            method(*args, **kwargs)
            raise CheckpointStoreError(f"connection lost before the answer to {name}")

        return applied_then_lost


W2 = worker_id("w2@h", "b")


def test_a_create_whose_answer_was_lost_is_handed_to_the_retry(store: CheckpointStore) -> None:
    """The run retries itself and its process lives on: only the handover lets the retry in."""
    store.register(OWNER, 30)
    store.register(W2, 30)
    first = make(AnswerLost(store, "create"))  # type: ignore[arg-type]
    with pytest.raises(CheckpointStoreError):
        first.save({"i": 5})
    handover = first.handover
    first.close()
    assert handover is not None and (handover.fence, handover.owner) == (store.peek("t1").fence, OWNER)
    without = make(store, owner=W2)
    with pytest.raises(DuplicateRun, match="alive"):
        without.load()
    without.close()
    retried = make(store, owner=W2, handed=handover)
    assert retried.load() == {"i": 5}
    assert retried.save({"i": 6}) and retried.fence == handover.fence + 1


def test_a_takeover_whose_answer_was_lost_is_handed_to_the_retry(store: CheckpointStore) -> None:
    store.register(W2, 30)
    store.register(worker_id("w3@h", "c"), 30)
    dead = make(store)
    dead.save({"i": 3})  # its worker, OWNER, holds no lease: it is dead
    dead_fence = dead.fence
    dead.close()
    resumed = make(AnswerLost(store, "takeover"), owner=W2)  # type: ignore[arg-type]
    with pytest.raises(CheckpointStoreError):
        resumed.load()
    handover = resumed.handover
    resumed.close()
    assert handover is not None and handover.fence == dead_fence + 1
    retried = make(store, owner=worker_id("w3@h", "c"), handed=handover)
    assert retried.load() == {"i": 3}


def test_a_handover_does_not_open_a_checkpoint_another_live_run_holds(store: CheckpointStore) -> None:
    store.register(W2, 30)
    holder = make(store, owner=W2)
    holder.save({"i": 1})
    stale = Handover(holder.fence, OWNER, holder.pid)  # right fence, another owner
    with pytest.raises(DuplicateRun, match="alive"):
        make(store, owner=worker_id("w3@h", "c"), handed=stale).load()
    holder.close()


def test_a_save_after_a_create_whose_answer_was_lost_finds_its_own_checkpoint(store: CheckpointStore) -> None:
    cp = make(AnswerLost(store, "create"), task_id="own")  # type: ignore[arg-type]
    with pytest.raises(CheckpointStoreError):
        cp.save({"i": 1})
    assert cp.save({"i": 2}) is True, "the store refused a second create; the run is not a duplicate"
    record = store.get("own")
    assert record is not None and json.loads(record.state.payload) == {"i": 2}


def test_unserializable_state_names_the_type_and_saves_nothing(store: CheckpointStore) -> None:
    cp = make(store)

    class Widget:
        pass

    with pytest.raises(CheckpointSerializationError, match="Widget"):
        cp.save({"w": Widget()})
    assert store.get("t1") is None
    assert cp.save({"i": 1}), "a bad state must not throttle the next save"


def test_json_round_trips_datetimes(store: CheckpointStore) -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    make(store).save({"when": when})
    assert make(store, owner=worker_id("w9@h", "z")).load() == {"when": when}


def test_oversized_state_is_refused(store: CheckpointStore) -> None:
    cp = make(store, max_state_bytes=100)
    with pytest.raises(CheckpointStateTooLarge, match="checkpoint_max_state_bytes=100"):
        cp.save({"blob": "x" * 200})
    assert store.get("t1") is None


def test_pickle_is_refused_unless_opted_in(store: CheckpointStore) -> None:
    make(store, serializer="pickle", accept=accepted_content_types("pickle")).save({"i": {1, 2}})
    reader = make(store, owner=worker_id("w2@h", "b"))
    with pytest.raises(Exception, match="not accepted"):
        reader.load()


def test_concurrent_saves_from_threads_keep_a_consistent_record(store: CheckpointStore) -> None:
    cp = make(store, throttle=0.0)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                cp.save({"thread": n, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    record = store.get("t1")
    assert record is not None and record.saves == 200 == cp.saves
    assert make(store, owner=worker_id("w2@h", "b")).load()["i"] in range(50)


def test_clock_never_moves_backwards_under_threads(store: CheckpointStore) -> None:
    cp = make(store, throttle=10.0)
    barrier = threading.Barrier(6)
    results: list[bool] = []

    def work() -> None:
        barrier.wait()
        results.append(cp.save({"x": 1}))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1, "one persist opens the window; the others are throttled"


def test_store_down_raises_naming_task_and_store_and_does_not_throttle(tmp_path: Path) -> None:
    port = free_port()
    store = create_store(f"redis://127.0.0.1:{port}/0")
    cp = make(store, throttle=60.0)
    with pytest.raises(CheckpointStoreError) as info:
        cp.save({"i": 1})
    assert "t1" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    server = RedisServer(tmp_path / "redis", port=port).start()
    try:
        assert cp.save({"i": 2}) is True, "the failed save must not have advanced the clock"
        assert cp.save({"i": 3}) is False
    finally:
        server.stop()


def test_store_errors_can_be_downgraded_to_warnings(caplog: pytest.LogCaptureFixture) -> None:
    store = create_store(f"redis://127.0.0.1:{free_port()}/0")
    cp = make(store, throttle=60.0, on_store_error="warn")
    assert cp.save({"i": 1}) is False
    assert "will retry on the next save" in caplog.text


def test_persist_callback_runs_only_on_persisted_saves(store: CheckpointStore) -> None:
    seen: list[int] = []
    callback: Callable[[Checkpointer], None] = lambda handle: seen.append(handle.saves)  # noqa: E731
    cp = make(store, throttle=60.0, on_persist=callback)
    cp.save({"i": 1})
    cp.save({"i": 2})
    assert seen == [1]


def test_shutdown_forces_the_next_save_then_hands_off(store: CheckpointStore) -> None:
    import pickle

    from celery_checkpoint import CheckpointHandoff
    from celery_checkpoint.record import Status

    cp = make(store, throttle=3600)
    assert cp.save({"i": 1})
    assert not cp.save({"i": 2})
    cp.request_stop()
    assert cp.should_stop
    with pytest.raises(CheckpointHandoff) as info:
        cp.save({"i": 3})
    record = store.get("t1")
    assert record is not None and json.loads(record.state.payload) == {"i": 3}
    assert record.status is Status.RELEASED
    copy = pickle.loads(pickle.dumps(info.value))  # crosses from pool child to main process
    assert copy.requeue and str(copy) == str(info.value)


def test_a_run_that_starts_after_the_shutdown_request_hands_off_too(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request reaches the runs of the moment; one the pool starts a moment later must not miss it.

    With ``-P threads`` or ``-P solo`` a run can be between its start and its
    checkpointer when the worker's signal handler asks this process's runs to
    stop (and a prefork child asked once may start another run): that run
    went on to its end, and a warm shutdown waited for all of it.
    """
    from celery_checkpoint import CheckpointHandoff
    from celery_checkpoint.record import Status
    from celery_checkpoint.runtime import RunsInProcess

    runs = RunsInProcess()  # not the process's: the stop must not reach other tests
    monkeypatch.setattr(checkpointer_module, "runs_in_process", runs)
    running = make(store, throttle=3600, task_id="running")
    assert runs.request_stop() == 1  # what the worker's warm shutdown does
    late = make(store, throttle=3600, task_id="late")
    assert late.should_stop, "a run started after the request was not asked to stop"
    with pytest.raises(CheckpointHandoff):
        late.save({"i": 1})
    record = store.get("late")
    assert record is not None and record.status is Status.RELEASED
    assert json.loads(record.state.payload) == {"i": 1}
    running.close()
    late.close()


GREEN_LOOP = """
from gevent import monkey

monkey.patch_all()
import time, uuid
from celery_checkpoint.stores import create_store
from tests.unit.test_checkpointer import make

cp = make(create_store(f"memory://{uuid.uuid4().hex}"), throttle=0.2, task_id="green")
assert cp.save({"i": 0})
start, i = time.monotonic(), 0
while time.monotonic() - start < 1.5:  # CPU-bound: never yields to the gevent hub
    i += 1
    cp.save({"i": i})
print(cp.saves)
"""


def test_a_cpu_bound_loop_under_gevent_still_saves_every_window() -> None:
    """With ``-P gevent`` the alarm's thread is a greenlet: a body that never yields never let it run.

    Its first skipped save shut the window for good, and the run saved
    nothing more until it ended.
    """
    import subprocess
    import sys

    require(importlib.util.find_spec("gevent") is not None, "gevent is not installed (the dev extra)")
    root = str(Path(__file__).resolve().parents[2])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([root, *sys.path[1:]])}
    out = subprocess.run(
        [sys.executable, "-c", GREEN_LOOP], env=env, cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 3, "the window never reopened: one save in 1.5 s with a 0.2 s throttle"


def test_green_threads_are_seen_and_the_alarm_arms_nothing(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gevent test relies on, without gevent: a patched ``threading`` keeps the clock read."""
    import sys
    import types

    fake = types.ModuleType("gevent.monkey")
    fake.is_module_patched = lambda name: name == "threading"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gevent.monkey", fake)
    own = Alarm()
    monkeypatch.setattr(checkpointer_module, "alarm", own)
    cp = make(store, throttle=0.2, task_id="green")
    assert cp.save({"i": 1}) and not cp.save({"i": 2})
    assert not own.serves and own.pending == 0 and own._thread is None
    assert not cp._quiet, "a skipped save shut a window nothing will reopen"
    time.sleep(0.25)
    assert cp.save({"i": 3}), "the window did not reopen by the clock"
    cp.close()


@pytest.fixture(params=["sqlite", "redis"])
def file_or_redis_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CheckpointStore]:
    """A store whose columns or fields do not check what they are given (SQLite, Redis)."""
    s = store_of_kind(request.param, request, tmp_path)
    yield s
    s.close()


@pytest.mark.parametrize("progress", ["half", [0.5], object()], ids=["text", "list", "object"])
def test_a_progress_that_is_no_number_is_refused_and_saves_nothing(
    file_or_redis_store: CheckpointStore, progress: Any
) -> None:
    """Stored as given, "half" made the SQLite row unreadable: the task could never be resumed."""
    cp = make(file_or_redis_store)
    with pytest.raises(CheckpointSerializationError, match=r"task t1: progress must be a number"):
        cp.save({"i": 1}, progress=progress)
    assert file_or_redis_store.get("t1") is None
    assert cp.save({"i": 1}, progress=0.5), "a bad progress must not throttle the next save"


def test_a_numeric_progress_is_kept_as_a_float_by_every_store(file_or_redis_store: CheckpointStore) -> None:
    """A Decimal was refused by SQLite as if the store had failed (a retry, by default)."""
    cp = make(file_or_redis_store)
    assert cp.save({"i": 1}, progress=decimal.Decimal("0.25"))
    assert cp.progress == 0.25 and type(cp.progress) is float
    record = file_or_redis_store.get("t1")
    assert record is not None and record.progress == 0.25
