"""The worker's steward and lost-run handling, in-process: leases, scans, lost pool processes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery

from celery_checkpoint import CheckpointTask
from celery_checkpoint import worker as worker_module
from celery_checkpoint.config import CheckpointConfig
from celery_checkpoint.errors import CheckpointStoreError
from celery_checkpoint.record import EncodedState, NewCheckpoint, Status, worker_id
from celery_checkpoint.resume import ScanReport
from celery_checkpoint.runtime import identity
from celery_checkpoint.stores import CheckpointStore, Peek, create_store
from celery_checkpoint.worker import Steward, _acks_on_timeout, on_run_lost

W1 = worker_id("w1@host", "aaaa")
W2 = worker_id("w2@host", "bbbb")


def _state(payload: bytes = b'{"i": 1}') -> EncodedState:
    return EncodedState(payload, "application/json", "utf-8")


def _new(owner: str, pid: int, name: str = "app.task") -> NewCheckpoint:
    return NewCheckpoint(name, owner, pid, _state(), _state(b'{"args": []}'), None, time.time())


def make_task(**conf: Any) -> CheckpointTask:
    """A registered CheckpointTask of an app of its own (``task.app``)."""
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://")
    app.conf.update(**conf)

    @app.task(base=CheckpointTask, bind=True, name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask, checkpoint: Any) -> None:
        return None

    app.finalize()
    return app.tasks[work.name]  # type: ignore[no-any-return]


def test_a_scan_that_blocks_does_not_let_the_lease_lapse() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = make_task(checkpoint_store_url=url, checkpoint_lease_ttl=0.6, checkpoint_sweep_interval=0.1).app
    store = create_store(url)
    steward = Steward(app, store, CheckpointConfig.from_sources(app.conf), W1)
    steward.register()
    scanning = threading.Event()
    release = threading.Event()

    def hung_scan(**_: Any) -> ScanReport:
        scanning.set()
        release.wait(10)  # a result backend or broker that stopped answering
        return ScanReport()

    steward.resumer.scan = hung_scan  # type: ignore[method-assign]
    steward.start()
    try:
        assert scanning.wait(5)
        time.sleep(3 * 0.6)  # three lease TTLs into the hung scan
        assert store.leases()[W1] > time.time(), "the lease lapsed while a scan blocked"
    finally:
        release.set()
        steward.stop()
    assert W1 not in store.leases() or store.leases()[W1] <= time.time(), "stop() ends the lease"


def test_no_scan_within_a_lease_ttl_of_a_failed_renewal() -> None:
    """After an outage in which every lease lapsed, the others get a TTL to renew first."""
    url = f"memory://{uuid.uuid4().hex}"
    ttl = 0.6
    app = make_task(checkpoint_store_url=url, checkpoint_lease_ttl=ttl, checkpoint_sweep_interval=0.05).app
    store = create_store(url)
    steward = Steward(app, store, CheckpointConfig.from_sources(app.conf), W1)
    steward.register()
    down = threading.Event()
    failures: list[float] = []
    scans: list[float] = []
    heartbeat = store.heartbeat

    def flaky_heartbeat(worker: str, lease_ttl: float) -> None:
        if down.is_set():
            failures.append(time.monotonic())
            raise CheckpointStoreError("the store is down")
        heartbeat(worker, lease_ttl)

    def recorded_scan(**_: Any) -> ScanReport:
        scans.append(time.monotonic())
        return ScanReport()

    store.heartbeat = flaky_heartbeat  # type: ignore[method-assign]
    steward.resumer.scan = recorded_scan  # type: ignore[method-assign]
    steward.start()
    try:
        time.sleep(0.3)
        down.set()
        time.sleep(0.5)
        down.clear()
        time.sleep(1.5 * ttl)
    finally:
        steward.stop()
    assert failures, "the outage was never seen"
    assert scans[-1] > failures[-1], "scans start again after the outage"
    too_soon = [s - f for s in scans for f in failures if 0 < s - f < ttl]
    assert not too_soon, f"scanned {too_soon} s after a failed renewal"


def _steward(store: CheckpointStore, me: str = W1) -> Steward:
    config = CheckpointConfig.from_sources({"checkpoint_store_url": "memory://unused"})
    return Steward(None, store, config, me)


def test_a_run_of_ours_whose_pool_process_is_gone_is_released(store: CheckpointStore) -> None:
    store.register(W1, 30)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert store.create("t1", _new(W1, gone.pid)) == 1
    _steward(store).release_lost_runs()
    record = store.get("t1")
    assert record is not None and record.status is Status.RELEASED and record.owner == ""


def test_a_run_taken_over_after_it_was_listed_is_not_released(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's pid means nothing on this host: its live run must not be fenced out."""
    store.register(W1, 30)
    store.register(W2, 30)
    assert store.create("t1", _new(W1, 999_999)) == 1
    listed = store.held_by

    def listed_then_taken_over(worker: str) -> list[str]:
        ids = listed(worker)
        assert store.takeover("t1", 1, W1, W2, 4_000_000) is not None  # e.g. a retry's handover
        return ids

    monkeypatch.setattr(store, "held_by", listed_then_taken_over)
    _steward(store).release_lost_runs()
    record = store.get("t1")
    assert record is not None and record.owner == W2 and record.status is Status.RUNNING
    saved = store.update("t1", 2, _state(b'{"i": 2}'), None, time.time())
    assert saved is not None, "W2's run was fenced out"
    monkeypatch.undo()
    assert store.held_by(W2) == ["t1"] and store.held_by(W1) == []


def _gone_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


@pytest.fixture
def lost_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[CheckpointTask]:
    """A task as the worker's main process sees it, under worker id W1."""
    monkeypatch.setattr(identity, "worker_id", W1)
    task = make_task(checkpoint_store_url=f"memory://{uuid.uuid4().hex}")
    store = task.checkpoint_store()
    assert store is not None
    store.register(W1, 30)
    store.register(W2, 30)
    yield task
    store.close()


def _lost() -> WorkerLostError:
    return WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL).")


@pytest.mark.parametrize("requeued", [True, False])
def test_a_lost_duplicate_leaves_the_run_of_another_live_pool_process_alone(
    lost_task: CheckpointTask, requeued: bool
) -> None:
    lost_task.reject_on_worker_lost = requeued
    store = lost_task.checkpoint_store()
    assert store is not None
    fence = store.create("t1", _new(W1, os.getpid(), lost_task.name))  # the live run, in "process A"
    on_run_lost(lost_task, SimpleNamespace(id="t1", worker_pid=_gone_pid()), _lost())  # "process B"
    peek = store.peek("t1")
    assert (peek.status, peek.owner, peek.pid, peek.fence) == (Status.RUNNING, W1, os.getpid(), fence)


@pytest.mark.parametrize("requeued", [True, False])
def test_a_lost_duplicate_leaves_another_live_workers_run_alone(
    lost_task: CheckpointTask, requeued: bool
) -> None:
    lost_task.reject_on_worker_lost = requeued
    store = lost_task.checkpoint_store()
    assert store is not None
    fence = store.create("t1", _new(W2, 4_000_000, lost_task.name))
    on_run_lost(lost_task, SimpleNamespace(id="t1", worker_pid=_gone_pid()), _lost())
    peek = store.peek("t1")
    assert (peek.status, peek.owner, peek.fence) == (Status.RUNNING, W2, fence)


@pytest.mark.parametrize("requeued", [True, False], ids=["requeued: claimed", "failed for good: removed"])
def test_a_takeover_between_the_lost_runs_peek_and_its_claim_is_left_alone(
    lost_task: CheckpointTask, monkeypatch: pytest.MonkeyPatch, requeued: bool
) -> None:
    """Another pool process of this worker takes the checkpoint over after ``on_run_lost`` read it.

    Same owner as the lost run, new fence and pid: claimed and parked (a
    requeued message), or removed (a failure Celery stores for good), that
    live run would be fenced out.
    """
    lost_task.reject_on_worker_lost = requeued
    store = lost_task.checkpoint_store()
    assert store is not None
    pid = _gone_pid()
    store.create("t1", _new(W1, pid, lost_task.name))
    peek = store.peek

    def peeked_then_taken_over(task_id: str) -> Peek:
        seen = peek(task_id)
        assert store.takeover(task_id, seen.fence, W1, W1, os.getpid()) is not None  # in "process A"
        return seen

    monkeypatch.setattr(store, "peek", peeked_then_taken_over)
    on_run_lost(lost_task, SimpleNamespace(id="t1", worker_pid=pid), _lost())
    now = peek("t1")
    assert (now.status, now.owner, now.pid, now.fence) == (Status.RUNNING, W1, os.getpid(), 2)


@pytest.mark.parametrize("known", [True, False], ids=["pid known", "pid unknown"])
def test_the_lost_runs_checkpoint_is_handed_to_the_requeued_message(
    lost_task: CheckpointTask, known: bool
) -> None:
    store = lost_task.checkpoint_store()
    assert store is not None
    pid = _gone_pid()
    store.create("t1", _new(W1, pid, lost_task.name))
    on_run_lost(lost_task, SimpleNamespace(id="t1", worker_pid=pid if known else None), _lost())
    record = store.get("t1")
    assert record is not None
    assert (record.status, record.owner, record.resume_count) == (Status.QUEUED, "", 1)


def test_a_lost_run_whose_message_is_not_requeued_loses_its_checkpoint(lost_task: CheckpointTask) -> None:
    lost_task.reject_on_worker_lost = False
    store = lost_task.checkpoint_store()
    assert store is not None
    pid = _gone_pid()
    store.create("t1", _new(W1, pid, lost_task.name))
    on_run_lost(lost_task, SimpleNamespace(id="t1", worker_pid=pid), _lost())
    assert store.get("t1") is None
    assert store.peek("t1").done  # a late redelivery of a failed task is dropped, as after fail()


@pytest.mark.parametrize(("retries", "kept"), [(1, True), (2, False)])
def test_a_lost_run_celery_retries_keeps_its_checkpoint_until_its_retries_are_spent(
    lost_task: CheckpointTask, retries: int, kept: bool
) -> None:
    lost_task.retry_on_worker_lost = True  # Celery 5.7: a lost run is retried, up to max_retries
    lost_task.max_retries = 2
    store = lost_task.checkpoint_store()
    assert store is not None
    pid = _gone_pid()
    store.create("t1", _new(W1, pid, lost_task.name))
    request = SimpleNamespace(id="t1", worker_pid=pid, request_dict={"retries": retries})
    on_run_lost(lost_task, request, _lost())
    record = store.get("t1")
    if kept:
        assert record is not None and record.status is Status.QUEUED, "Celery retries it: it resumes"
    else:
        assert record is None, "Celery failed it for good: a scan must not run it again"


@pytest.mark.parametrize(
    ("conf", "requeued"),
    [
        ({"task_acks_on_timeout": False}, True),
        ({"task_acks_on_timeout": True, "task_acks_on_failure_or_timeout": False}, False),
        ({"task_acks_on_failure_or_timeout": False}, True),  # the deprecated flag, when the new one is unset
        ({}, False),
    ],
)
def test_a_timed_out_run_keeps_its_checkpoint_when_celery_requeues_it(
    monkeypatch: pytest.MonkeyPatch, conf: dict[str, bool], requeued: bool
) -> None:
    monkeypatch.setattr(identity, "worker_id", W1)
    task = make_task(checkpoint_store_url=f"memory://{uuid.uuid4().hex}", **conf)
    celery_requeues = task.acks_late and not task.acks_on_timeout  # Celery 5.7's Request.on_failure
    assert celery_requeues is requeued
    store = task.checkpoint_store()
    assert store is not None
    store.register(W1, 30)
    pid = _gone_pid()
    store.create("t1", _new(W1, pid, task.name))
    on_run_lost(task, SimpleNamespace(id="t1", worker_pid=pid), TimeLimitExceeded(10))
    record = store.get("t1")
    if requeued:
        assert record is not None and record.status is Status.QUEUED, "Celery requeues it: it resumes"
    else:
        assert record is None, "Celery failed it for good"


def test_celery_without_acks_on_timeout_reads_the_older_flag() -> None:
    assert _acks_on_timeout(SimpleNamespace(acks_on_failure_or_timeout=False)) is False
    assert _acks_on_timeout(SimpleNamespace(acks_on_failure_or_timeout=True)) is True
    assert _acks_on_timeout(SimpleNamespace()) is True  # Celery's default


def test_a_store_that_cannot_be_opened_at_start_is_leased_and_scanned_once_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite file's directory is not there yet (a volume mounted a moment later)."""
    monkeypatch.setattr(identity, "worker_id", W1)
    monkeypatch.setattr(identity, "task_events", False)
    url = f"sqlite:///{tmp_path / 'later' / 'c.db'}"
    ttl = 0.6
    task = make_task(checkpoint_store_url=url, checkpoint_lease_ttl=ttl, checkpoint_sweep_interval=0.1)
    worker = SimpleNamespace(hostname="w1@host", app=task.app, task_events=False)
    worker_module._start_lease(sender=worker)  # Celery would log an error and boot on, with no steward
    worker_module._start_steward()
    steward = worker_module._steward
    try:
        assert steward is not None
        time.sleep(0.3)
        (tmp_path / "later").mkdir()
        store = create_store(url)
        deadline = time.monotonic() + 5
        while steward.scans == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.leases().get(W1, 0) > time.time(), "the lease is held once the store opens"
        assert steward.scans > 0, "and the scans run"
    finally:
        worker_module._stop_steward()
    assert store.leases().get(W1, 0) <= time.time(), "stop() ends the lease"


def test_a_store_set_per_task_is_leased_and_scanned_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "worker_id", W1)
    monkeypatch.setattr(identity, "task_events", False)
    app_url, task_url = f"sqlite:///{tmp_path / 'app.db'}", f"sqlite:///{tmp_path / 'task.db'}"
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://")
    app.conf.checkpoint_store_url = app_url

    @app.task(base=CheckpointTask, bind=True, name=f"own-{uuid.uuid4().hex}", checkpoint_store_url=task_url)
    def own_store(self: CheckpointTask, checkpoint: Any) -> None:
        return None

    app.finalize()
    worker_module._start_lease(sender=SimpleNamespace(hostname="w1@host", app=app, task_events=False))
    try:
        task_store = create_store(task_url)
        task_store.create("live", _new(W1, os.getpid(), own_store.name))
        assert task_store.peek("live").owner_alive, "this live worker's runs in the task's store look dead"
        call = _state(b'{"args": [], "kwargs": {}, "options": {"task_id": "left"}}')
        left_by_w2 = NewCheckpoint(own_store.name, W2, 4_000_000, _state(), call, None, time.time())
        task_store.create("left", left_by_w2)  # W2 never held a lease: it is dead
        for steward in worker_module._stewards:
            steward.scan()
        left = task_store.get("left")
        assert left is not None and left.resume_count == 1, (
            "what a dead worker left in the task's store is resumed"
        )
        assert create_store(app_url).leases().get(W1, 0) > time.time()
    finally:
        worker_module._stop_steward()
    assert task_store.leases().get(W1, 0) <= time.time(), "stop() ends every lease"
