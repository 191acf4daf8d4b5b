"""Deploys: a warm shutdown hands running tasks off at their next checkpoint."""

from __future__ import annotations

import signal

import pytest

from tests.harness import cluster, wait_for
from tests.integration.helpers import connect, events, saved_at_least, starts

pytestmark = pytest.mark.integration

HOUR_OF_STEPS = 36_000  # 36,000 steps of 100 ms: an hour of work
TOTAL = lambda n: n * (n + 1) // 2  # noqa: E731


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_sigterm_hands_a_long_task_off_to_another_worker(tmp_path, pool: str) -> None:
    with cluster(tmp_path, throttle="0.1", note_steps="1", lease_ttl="600") as c:
        app = connect(c)
        w1 = c.worker("w1", pool=pool).wait_ready()
        result = app.delay("count_to", HOUR_OF_STEPS, 0.1)
        wait_for(lambda: saved_at_least(c, result.id, 20), 30, "two seconds of work")
        w1.kill(signal.SIGTERM)
        # An hour-long task; the worker must be gone within seconds, not an hour.
        wait_for(w1.exited, 15, "w1 to exit after SIGTERM")
        assert w1.proc is not None and w1.proc.returncode == 0
        handoff = [e for e in events(c, result.id) if e["event"] == "handoff"]
        assert len(handoff) == 1
        record = app.store.get(result.id)
        assert record is not None and record.status.value in ("released", "queued")

        # Another worker, running the same task far faster, finishes it from the checkpoint.
        c.worker("w2", env={"CC_STEP_SCALE": "0.0001", "CC_NOTE_STEPS": "0"}).wait_ready()
        assert result.get(timeout=120) == TOTAL(HOUR_OF_STEPS)
        runs = starts(c, result.id)
        reached = max(e["i"] for e in events(c, result.id) if e["event"] == "step")
        assert len(runs) == 2
        assert runs[1]["i"] == handoff[0]["i"] >= reached - 1, "at most one save interval is redone"
        assert "worker shutting down; stopped at checkpoint" in w1.output()
        assert "CRITICAL" not in w1.output() and "Unrecoverable" not in w1.output()
        assert "re-enqueued" not in "".join(w.output() for w in c.workers), (
            "the requeued message itself must carry the task on, not a resume scan"
        )
        assert app.app.AsyncResult(result.id).state == "SUCCESS"


def test_sigterm_reaches_a_run_whose_acceptance_is_still_pending(tmp_path) -> None:
    """A run started in its pool child just before the shutdown, not yet known to the main process.

    The shutdown's signal handler sees no pool process for it (the child's
    acceptance is still queued for the main process), so it cannot be
    signalled then; it is asked to hand off once the acceptance arrives,
    instead of keeping a warm shutdown waiting for an hour of work.
    """
    with cluster(tmp_path, throttle="0.1", lease_ttl="600", slow_accept="5") as c:
        app = connect(c)
        w1 = c.worker("w1", concurrency=1).wait_ready()
        result = app.delay("count_to", HOUR_OF_STEPS, 0.1)
        wait_for(lambda: starts(c, result.id), 30, "the run to start in its pool child")
        marks = {e["event"] for e in events(c, result.id)}
        assert "accepting" in marks and "accepted" not in marks, "the main process must still be accepting"
        w1.kill(signal.SIGTERM)
        wait_for(w1.exited, 30, "w1 to exit after SIGTERM")
        assert w1.proc is not None and w1.proc.returncode == 0
        order = [e["event"] for e in events(c, result.id) if e["event"] in ("accepted", "handoff")]
        assert order == ["accepted", "handoff"], "handed off once the acceptance was handled"
        record = app.store.get(result.id)
        assert record is not None and record.status.value in ("released", "queued")

        c.worker("w2", env={"CC_STEP_SCALE": "0.0001", "CC_SLOW_ACCEPT": "0"}).wait_ready()
        assert result.get(timeout=120) == TOTAL(HOUR_OF_STEPS)
        runs = starts(c, result.id)
        assert len(runs) == 2 and runs[1]["i"] > 0, "the second run resumed from the handoff's checkpoint"
