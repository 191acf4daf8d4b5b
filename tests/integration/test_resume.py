"""A checkpointed task survives the death of its worker, end to end, with real processes."""

from __future__ import annotations

import json
import signal

import pytest
import redis
from celery import chain, chord

from tests.harness import cluster, wait_for
from tests.integration.helpers import Client, connect, saved_at_least, starts

pytestmark = pytest.mark.integration

TOTAL = lambda n: n * (n + 1) // 2  # noqa: E731


def test_main_process_sigkill_then_restart_resumes_same_task_id(tmp_path) -> None:
    # A lease far longer than the test: only "same node name restarted" can explain a prompt resume.
    with cluster(tmp_path, lease_ttl="600") as c:
        app = connect(c)
        store = app.store
        w = c.worker("w1").wait_ready()
        result = app.delay("count_to", 60, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 15), 30, "15 saved steps")
        w.kill(signal.SIGKILL)
        record = store.get(result.id)
        assert record is not None and record.saves >= 1

        c.worker("w1").wait_ready()
        assert result.get(timeout=60) == TOTAL(60)
        runs = starts(c, result.id)
        assert [r["resume_count"] for r in runs] == [0, 1]
        assert runs[0]["i"] == 0 and runs[1]["i"] >= 15, "the resumed run must start from its checkpoint"
        wait_for(lambda: store.get(result.id) is None, 5, "checkpoint deleted after success")


def test_pool_child_sigkill_resumes_on_the_living_worker(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="600") as c:
        app = connect(c)
        store = app.store
        w = c.worker("w1").wait_ready()
        result = app.delay("count_to", 60, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 15), 30, "15 saved steps")
        child = starts(c, result.id)[0]["pid"]
        assert child in w.children()
        import os

        os.kill(child, signal.SIGKILL)
        # The caller blocked in get() receives the final result, not WorkerLostError.
        assert result.get(timeout=60) == TOTAL(60)
        assert not w.exited()
        runs = starts(c, result.id)
        assert len(runs) == 2 and runs[1]["i"] >= 15 and runs[1]["resume_count"] == 1
        wait_for(lambda: store.get(result.id) is None, 5, "checkpoint deleted after success")


def test_retry_keeps_the_checkpoint_and_the_retried_run_loads_it(tmp_path) -> None:
    with cluster(tmp_path) as c:
        app = connect(c)
        store = app.store
        c.worker("w1").wait_ready()
        result = app.delay("flaky", 10, 4)
        assert result.get(timeout=30) == 10
        runs = starts(c, result.id)
        assert [(r["i"], r["retries"]) for r in runs] == [(0, 0), (4, 1)]
        wait_for(lambda: store.get(result.id) is None, 5, "checkpoint deleted after success")


def test_terminal_failure_deletes_the_checkpoint(tmp_path) -> None:
    with cluster(tmp_path) as c:
        app = connect(c)
        store = app.store
        c.worker("w1").wait_ready()
        result = app.delay("explode")
        with pytest.raises(ValueError, match="boom"):
            result.get(timeout=30)
        wait_for(lambda: store.get(result.id) is None, 5, "checkpoint deleted after failure")


def test_a_task_running_on_a_live_worker_is_never_stolen(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="2", sweep_interval="0.5") as c:
        app = connect(c)
        c.worker("w1").wait_ready()
        result = app.delay("count_to", 80, 0.05)
        wait_for(lambda: saved_at_least(c, result.id, 5), 30, "first saves")
        c.worker("w2").wait_ready()  # scans every 0.5 s while w1 runs the task
        assert result.get(timeout=60) == TOTAL(80)
        assert len(starts(c, result.id)) == 1, "w2 must not re-enqueue a task whose worker is alive"


def test_many_workers_starting_at_once_resume_each_task_exactly_once(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="2", sweep_interval="0.5") as c:
        app = connect(c)
        w0 = c.worker("w0", concurrency=4).wait_ready()
        results = [app.delay("count_to", 60, 0.05) for _ in range(4)]
        for r in results:
            wait_for(lambda r=r: saved_at_least(c, r.id, 5), 30, "each task saved")
        w0.kill(signal.SIGKILL)
        workers = [c.worker(f"w{n}") for n in (1, 2, 3)]
        for w in workers:
            w.wait_ready()
        assert [r.get(timeout=90) for r in results] == [TOTAL(60)] * 4
        for r in results:
            runs = starts(c, r.id)
            assert [run["resume_count"] for run in runs] == [0, 1], runs


def test_chain_and_chord_continue_after_resume(tmp_path) -> None:
    with cluster(tmp_path, lease_ttl="600") as c:
        app = connect(c)
        w = c.worker("w1", concurrency=3).wait_ready()
        chained = chain(app.sig("count_to", 40, 0.05), app.sig("add_one")).delay()
        header = [app.sig("count_to", 30, 0.05), app.sig("count_to", 30, 0.05)]
        chorded = chord(header)(app.sig("total"))
        first = chained.parent
        wait_for(lambda: saved_at_least(c, first.id, 10), 30, "chain head saved")
        w.kill(signal.SIGKILL)
        c.worker("w1", concurrency=3).wait_ready()
        assert chained.get(timeout=60) == TOTAL(40) + 1
        assert chorded.get(timeout=60) == 2 * TOTAL(30)
        assert starts(c, first.id)[-1]["resume_count"] == 1


def test_a_retry_whose_message_is_lost_is_sent_again_and_continues_from_its_checkpoint(tmp_path) -> None:
    """kombu's Redis transport can lose a message to a SIGKILL (README, *What is not covered*).

    Here the worker holding the retry (an ETA message, reserved at once) is
    SIGKILLed, and the message is deleted from kombu's unacked hash before
    anything restores it: gone, as in that loss.
    """
    with cluster(tmp_path, requeue_after="2", sweep_interval="0.5") as c:
        app = connect(c)
        broker = redis.Redis.from_url(c.env()["CC_BROKER_URL"])
        w = c.worker("w1").wait_ready()
        result = app.delay("flaky", 10, 4, 4)  # retries at step 4, due 4 s later
        wait_for(lambda: _status(app, result.id) == "waiting", 20, "the retry parked the checkpoint")
        wait_for(lambda: _unacked_retries(broker) == [1], 10, "the worker holds the retry and nothing else")
        w.kill(signal.SIGKILL)
        broker.delete("unacked", "unacked_index")
        queued = [
            m for key in broker.scan_iter() if broker.type(key) == b"list" for m in broker.lrange(key, 0, -1)
        ]
        assert not [m for m in queued if result.id.encode() in m], "the retry message is gone"

        again = c.worker("w1").wait_ready()
        assert result.get(timeout=40) == 10, "the caller's AsyncResult gets the result"
        runs = starts(c, result.id)
        assert [(r["i"], r["retries"]) for r in runs] == [(0, 0), (4, 1)], "the retry, from its checkpoint"
        assert "its retry had not started by" in again.output()
        wait_for(lambda: app.store.get(result.id) is None, 5, "checkpoint deleted after success")


def _unacked_retries(broker: redis.Redis) -> list[int]:
    """The ``retries`` header of each message kombu holds as delivered, not yet acknowledged."""
    return [json.loads(entry)[0]["headers"]["retries"] for entry in broker.hvals("unacked")]


def _status(app: Client, task_id: str) -> str | None:
    record = app.store.get(task_id)
    return None if record is None else record.status.value
