"""Crashes, duplicates, stale runs, poison, revokes, outages and bad data, with real processes."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

from celery_checkpoint.record import EncodedState, NewCheckpoint, Status, worker_id
from tests.harness import Cluster, Worker, cluster, wait_for
from tests.integration.helpers import Client, connect, events, saved_at_least, starts

pytestmark = pytest.mark.integration

TOTAL = lambda n: n * (n + 1) // 2  # noqa: E731


def test_a_dead_worker_is_adopted_by_a_live_one_without_any_restart(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="2", sweep_interval="0.5") as c:
        app = connect(c)
        w1 = c.worker("w1").wait_ready()
        result = app.delay("count_to", 60, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 10), 30, "saves on w1")
        w2 = c.worker("w2").wait_ready()
        w1.kill(signal.SIGKILL)
        assert result.get(timeout=60) == TOTAL(60)
        runs = starts(c, result.id)
        assert len(runs) == 2 and runs[1]["resume_count"] == 1 and runs[1]["i"] >= 10
        assert runs[1]["pid"] in w2.children()


def test_a_redelivery_while_the_run_is_alive_is_dropped(tmp_path) -> None:
    # A 2 s visibility timeout: Redis hands the message out again while the first run works.
    with cluster(tmp_path, visibility_timeout="2") as c:
        app = connect(c)
        c.worker("w1").wait_ready()
        result = app.delay("count_to", 120, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 50), 30, "the run is past the visibility timeout")
        c.worker("w2").wait_ready()  # restores the unacked message at start
        assert result.get(timeout=60) == TOTAL(120)
        assert len(starts(c, result.id)) == 1, "only one copy may run"
        logs = "".join(w.output() for w in c.workers)
        assert f"task {result.id}: another run of this task id is alive; dropping this delivery" in logs


def test_a_run_whose_duplicate_was_dropped_and_whose_process_then_died_still_finishes(tmp_path) -> None:
    # Found by the chaos test. The run outlives the visibility timeout, so the
    # broker hands its message out again (w2 restores it at start); w2 drops
    # that copy as a duplicate of the live run, which acknowledges it. Then
    # the run's pool process dies: w1 claims the checkpoint and Celery
    # requeues the message, but the broker no longer holds it. The scan must
    # send the task again once checkpoint_requeue_after has passed.
    with cluster(tmp_path, visibility_timeout="2", requeue_after="2", sweep_interval="0.5") as c:
        app = connect(c)
        w1 = c.worker("w1").wait_ready()
        result = app.delay("count_to", 300, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 60), 30, "the run is past the visibility timeout")
        w2 = c.worker("w2").wait_ready()
        dropped = f"task {result.id}: another run of this task id is alive; dropping this delivery"
        wait_for(lambda: dropped in w1.output() + w2.output(), 20, "the duplicate dropped")
        os.kill(starts(c, result.id)[0]["pid"], signal.SIGKILL)
        assert result.get(timeout=60) == TOTAL(300)
        runs = starts(c, result.id)
        assert len(runs) == 2, "the lost run, then one resume"
        assert runs[1]["resume_count"] == 1 and runs[1]["i"] >= 60, "resumed from the checkpoint"
        assert not w1.exited() and not w2.exited()


def _finished_then_sent_again(c: Cluster, **options: Any) -> tuple[Client, Worker, AsyncResult]:
    """A short call that succeeded, then a second message with its task id."""
    app = connect(c)
    w = c.worker("w1").wait_ready()
    result = app.delay("count_to", 5, 0.01)
    assert result.get(timeout=30) == TOTAL(5)
    wait_for(lambda: app.store.get(result.id) is None, 5, "checkpoint removed")
    app.app.send_task("tests.apps.longtask.count_to", args=(5, 0.01), task_id=result.id, **options)
    return app, w, result


def test_a_redelivery_after_success_is_dropped_not_rerun(tmp_path) -> None:
    with cluster(tmp_path) as c:
        app, w, result = _finished_then_sent_again(c)
        wait_for(lambda: "already finished; dropping this late delivery" in w.output(), 20, "drop logged")
        assert len(starts(c, result.id)) == 1
        assert app.app.AsyncResult(result.id).get(timeout=5) == TOTAL(5)


def test_an_unflagged_duplicate_of_a_new_call_stops_at_its_first_save(tmp_path) -> None:
    """A call whose id apply_async minted skips the read before its body (one round
    trip less per task); a copy of its message that the broker does not flag as a
    redelivery (a publisher retry, say) runs only up to its first save."""
    with cluster(tmp_path) as c:
        app, w, result = _finished_then_sent_again(c, headers={"checkpoint_fresh": True})
        wait_for(lambda: "already finished; dropping this late delivery" in w.output(), 20, "stop logged")
        duplicate = [e for e in events(c, result.id) if e["event"] == "lost"]
        assert len(duplicate) == 1 and duplicate[0]["i"] == 1, "stopped at its first save"
        assert [e["event"] for e in events(c, result.id)].count("done") == 1
        assert app.store.get(result.id) is None
        assert app.app.AsyncResult(result.id).get(timeout=5) == TOTAL(5)


def test_a_stale_run_cannot_overwrite_the_newer_runs_checkpoint(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="2", sweep_interval="0.5") as c:
        app = connect(c)
        w1 = c.worker("w1").wait_ready()
        result = app.delay("count_to", 100, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 10), 30, "saves on w1")
        c.worker("w2").wait_ready()
        os.killpg(w1.pid, signal.SIGSTOP)  # frozen past its lease, as a stalled VM would be
        try:
            wait_for(lambda: len(starts(c, result.id)) == 2, 30, "w2 adopted the task")
        finally:
            os.killpg(w1.pid, signal.SIGCONT)
        assert result.get(timeout=60) == TOTAL(100)
        lost = [e for e in events(c, result.id) if e["event"] == "lost"]
        assert lost and lost[0]["pid"] == starts(c, result.id)[0]["pid"], "the stale run was told it lost"
        done = [e for e in events(c, result.id) if e["event"] == "done"]
        assert len(done) == 1 and done[0]["pid"] == starts(c, result.id)[1]["pid"]


def test_a_poison_task_is_failed_after_max_resumes_and_its_checkpoint_kept(tmp_path) -> None:
    with cluster(tmp_path, max_resumes="2") as c:
        app = connect(c)
        c.worker("w1").wait_ready()
        result = app.delay("doomed")
        with pytest.raises(Exception) as info:
            result.get(timeout=90)
        message = str(info.value)
        assert result.id in message and "2 resumes" in message and "checkpoint_max_resumes=2" in message
        assert [r["resume_count"] for r in starts(c, result.id)] == [0, 1, 2]
        record = app.store.get(result.id)
        assert record is not None and record.status is Status.POISONED


def test_revoking_a_running_task_removes_its_checkpoint_for_good(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="600") as c:
        app = connect(c)
        w = c.worker("w1").wait_ready()
        result = app.delay("count_to", 200, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 5), 30, "saves")
        app.app.control.revoke(result.id, terminate=True)
        wait_for(lambda: app.store.get(result.id) is None, 20, "checkpoint removed on revoke")
        w.kill(signal.SIGKILL)
        c.worker("w1").wait_ready()
        time.sleep(2)
        assert len(starts(c, result.id)) == 1, "a revoked task must never be resurrected"


def test_revoking_an_interrupted_task_stops_its_resume(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="3", sweep_interval="0.5") as c:
        app = connect(c)
        w1 = c.worker("w1").wait_ready()
        result = app.delay("count_to", 200, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 5), 30, "saves")
        c.worker("w2").wait_ready()
        w1.kill(signal.SIGKILL)
        app.app.control.revoke(result.id)  # w2 learns it before w1's lease ends
        wait_for(lambda: app.store.get(result.id) is None, 20, "checkpoint removed by w2's scan")
        time.sleep(2)
        assert len(starts(c, result.id)) == 1


def test_a_store_outage_fails_saves_loudly_and_tasks_resume_after_it(tmp_path) -> None:
    with cluster(tmp_path, separate_store=True, store_retry_delay="1") as c:
        app = connect(c)
        w = c.worker("w1").wait_ready()
        result = app.delay("count_to", 120, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 20), 30, "saves before the outage")
        port = c.store_redis.port
        c.store_redis.stop()
        wait_for(
            lambda: any(e["event"] == "save-error" for e in events(c, result.id)), 10, "a save that failed"
        )
        time.sleep(3)
        c.store_redis.start()
        assert c.store_redis.port == port
        assert result.get(timeout=90) == TOTAL(120)
        runs = starts(c, result.id)
        assert runs[-1]["i"] >= 20, "once the store is back, the retried run resumes from its checkpoint"
        assert runs[-1]["retries"] >= 1
        # A countdown would park the retry in a worker's prefetch as an ETA
        # message, where kombu's Redis transport can lose messages to a SIGKILL.
        assert all(run["eta"] is None for run in runs), "each retry was due at once"
        assert not w.exited()
        assert "checkpoint store failed; retrying" in w.output()
        failed = [e for e in events(c, result.id) if e["event"] == "save-error"]
        assert failed[0]["error"] == "CheckpointStoreError"


def test_a_retry_that_could_not_reach_the_store_either_hands_the_checkpoint_on(tmp_path) -> None:
    # w1's run fails a save in an outage and retries; w1 then takes no more
    # messages but stays alive, so its checkpoint stays "running" under a live
    # owner. The retry lands on w2 while the store is still down and retries
    # again. The delivery after that must still be allowed to take over.
    with cluster(tmp_path, separate_store=True, store_retry_delay="1") as c:
        app = connect(c)
        w1 = c.worker("w1", concurrency=1).wait_ready()
        result = app.delay("count_to", 120, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 10), 30, "saves on w1")
        replies = app.app.control.cancel_consumer(
            "celery", destination=[f"w1@{socket.gethostname()}"], reply=True
        )
        assert replies, "w1 stopped consuming"
        w2 = c.worker("w2", concurrency=1).wait_ready()
        c.store_redis.stop()
        wait_for(lambda: "retrying in 2.0s" in w2.output(), 30, "the retry on w2 failed too")
        c.store_redis.start()
        assert result.get(timeout=60) == TOTAL(120)
        assert starts(c, result.id)[-1]["i"] >= 10, "the third delivery resumed from w1's checkpoint"
        assert not w1.exited()
        assert "dropping this delivery" not in w2.output()


def test_a_pool_process_lost_during_a_store_outage_is_resumed_once_the_store_is_back(tmp_path) -> None:
    # w1 cannot claim the checkpoint when its pool child dies (the store is
    # down), so the checkpoint stays "running" under w1, which lives on. The
    # requeued message goes to w2. Without w1 noticing its own lost process,
    # every delivery would be dropped as a duplicate of a run that is gone.
    with cluster(
        tmp_path, separate_store=True, store_retry_delay="1", sweep_interval="1", lease_ttl="3"
    ) as c:
        app = connect(c)
        w1 = c.worker("w1").wait_ready()
        result = app.delay("count_to", 120, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 10), 30, "saves on w1")
        replies = app.app.control.cancel_consumer(
            "celery", destination=[f"w1@{socket.gethostname()}"], reply=True
        )
        assert replies, "w1 stopped consuming"
        w2 = c.worker("w2").wait_ready()
        c.store_redis.stop()
        os.kill(starts(c, result.id)[0]["pid"], signal.SIGKILL)
        wait_for(
            lambda: "could not update its checkpoint after the run was lost" in w1.output(),
            30,
            "a failed claim",
        )
        time.sleep(2)  # the requeued message reaches w2 and fails on the store too
        c.store_redis.start()
        assert result.get(timeout=60) == TOTAL(120)
        assert starts(c, result.id)[-1]["i"] >= 10, "resumed from the checkpoint, not from the start"
        assert "checkpoint released for resume" in w1.output()
        assert not w1.exited() and not w2.exited()


def test_bad_entries_are_reported_once_and_left_in_place(tmp_path) -> None:
    with cluster(tmp_path, sweep_interval="0.3") as c:
        app = connect(c)
        store = app.store
        dead = worker_id("gone@host", "dead")
        good = app.sig("count_to", 10, 0.01).freeze()

        def interrupted(task_id: str, name: str, state: bytes, envelope: bytes) -> None:
            new = NewCheckpoint(
                name,
                dead,
                1,
                EncodedState(state, "application/json", "utf-8"),
                EncodedState(envelope, "application/json", "utf-8"),
                None,
                time.time(),
            )
            assert store.create(task_id, new) == 1

        env = b'{"args": [10, 0.01], "kwargs": {}, "options": {"task_id": "%s"}}'
        interrupted(good.id, "tests.apps.longtask.count_to", b'{"i": 4, "total": 10}', env % good.id.encode())
        interrupted("unknown", "no.such.task", b"{}", env % b"unknown")
        interrupted("garbled", "tests.apps.longtask.count_to", b"{}", b"\xff\xfe not json")
        interrupted("huge", "tests.apps.longtask.count_to", b"[" + b"1," * 5_000_000 + b"1]", env % b"huge")
        raw = redis.Redis.from_url(c.env()["CC_STORE_URL"])
        raw.set("checkpoint:junk", "not ours")
        raw.sadd(f"checkpoint:owned:{dead}", "wrongtype")
        raw.set("checkpoint:task:wrongtype", "a string, not a hash")

        w = c.worker("w1").wait_ready()
        assert app.app.AsyncResult(good.id).get(timeout=30) == TOTAL(10)
        assert starts(c, good.id)[0]["i"] == 4, "the good one resumed from its checkpoint"
        time.sleep(1.5)  # several more sweeps
        log = w.output()
        for task_id in ("unknown", "garbled", "huge", "wrongtype"):
            assert log.count(f"checkpoint {task_id} is not resumable") == 1, task_id
        assert store.get("unknown") is not None and store.get("garbled") is not None
        assert store.get("huge") is not None
        assert raw.get("checkpoint:junk") == b"not ours"
        assert raw.type("checkpoint:task:wrongtype") == b"string"
        assert not w.exited()


def test_an_invalid_app_setting_stops_the_worker_at_boot_and_names_it(tmp_path) -> None:
    # Celery swallows an exception raised by a worker_init handler: the worker
    # used to start anyway and run every task without checkpoints, silently.
    with cluster(tmp_path, on_store_error="later") as c:
        w = c.worker("w1")
        wait_for(w.exited, 30, "the worker to refuse to start")
        assert w.proc is not None and w.proc.returncode == 1
        log = w.output()
        assert "checkpoint_on_store_error must be 'retry', 'raise' or 'warn', not 'later'" in log
        assert "the worker does not start" in log
        assert "ready." not in log
