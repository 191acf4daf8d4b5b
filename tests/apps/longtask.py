"""The app the integration tests run in real workers, configured by CC_* variables.

Tasks leave evidence on disk (under CC_FLAGS_DIR) so a test can see where a
run started from, without relying on logs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery

from celery_checkpoint import CheckpointHandoff, CheckpointOwnershipLost, CheckpointTask

app = Celery(
    "longtask",
    broker=os.environ.get("CC_BROKER_URL", "redis://127.0.0.1:6379/15"),
    backend=os.environ.get("CC_BACKEND_URL", "redis://127.0.0.1:6379/15"),
)
app.conf.update(
    checkpoint_store_url=os.environ.get("CC_STORE_URL"),
    checkpoint_throttle=float(os.environ.get("CC_THROTTLE", "0.2")),
    checkpoint_lease_ttl=float(os.environ.get("CC_LEASE_TTL", "30")),
    checkpoint_requeue_after=float(os.environ.get("CC_REQUEUE_AFTER", "300")),
    checkpoint_sweep_interval=float(os.environ.get("CC_SWEEP_INTERVAL", "10")),
    checkpoint_max_resumes=int(os.environ.get("CC_MAX_RESUMES", "5")),
    checkpoint_on_store_error=os.environ.get("CC_ON_STORE_ERROR", "retry"),
    checkpoint_store_retry_delay=float(os.environ.get("CC_STORE_RETRY_DELAY", "1")),
    worker_prefetch_multiplier=1,
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("CC_VISIBILITY_TIMEOUT", "3600")),
        # How often kombu looks for unacked messages of dead consumers (default 10 x 10 s):
        # Celery's own recovery for a message whose task had not checkpointed yet.
        "unacked_restore_interval": float(os.environ.get("CC_RESTORE_INTERVAL", "10")),
        "unacked_restore_throttle": int(os.environ.get("CC_RESTORE_THROTTLE", "10")),
        # A consumer SIGKILLed while it holds kombu's restore lock stops every
        # restore for this long (default 300 s).
        "unacked_mutex_expire": float(os.environ.get("CC_RESTORE_MUTEX_EXPIRE", "300")),
    },
    result_expires=3600,
    task_track_started=True,
)

FLAGS = Path(os.environ.get("CC_FLAGS_DIR", "/tmp/celery-checkpoint-flags"))
NOTE_STEPS = os.environ.get("CC_NOTE_STEPS") == "1"
#: Lets a test make one worker run the same task much faster than another.
STEP_SCALE = float(os.environ.get("CC_STEP_SCALE", "1"))


def note(task_id: str, event: str, **data: object) -> None:
    """Append one line of evidence for a test to read."""
    FLAGS.mkdir(parents=True, exist_ok=True)
    with open(FLAGS / f"{task_id}.jsonl", "a") as fh:
        fh.write(json.dumps({"event": event, "pid": os.getpid(), **data}) + "\n")


#: Seconds the worker's main process takes to handle a pool child's acceptance
#: of a task, as a main process busy with other work would: widens the window
#: in which a run has started in its child but the main process does not know
#: which child runs it (``Request.worker_pid`` is unset).
SLOW_ACCEPT = float(os.environ.get("CC_SLOW_ACCEPT", "0"))

if SLOW_ACCEPT:
    from celery.worker.request import Request

    _on_accepted = Request.on_accepted

    def _slow_on_accepted(self, pid, time_accepted):
        note(self.id, "accepting", pid=pid)
        time.sleep(SLOW_ACCEPT)  # a shutdown signal that arrives now runs its handler, then sleeps on
        _on_accepted(self, pid, time_accepted)
        note(self.id, "accepted", pid=pid)

    Request.on_accepted = _slow_on_accepted


# Room for a countdown retry on top of the store-error retries of an outage.
@app.task(base=CheckpointTask, bind=True, max_retries=10)
def count_to(self, n, step_seconds=0.05, checkpoint=None, retry_at=0, retry_countdown=0.5):
    """Counts to n slowly, saving after every step; returns the sum 1..n.

    With ``retry_at``, the run that reaches that step saves it and retries with
    a ``countdown``, once per task (the checkpoint remembers it): an ETA
    message, the kind kombu's Redis transport can lose to a SIGKILL (README,
    *Lost retries*).
    """
    state = checkpoint.load() or {"i": 0, "total": 0}
    note(
        self.request.id,
        "start",
        i=state["i"],
        resume_count=checkpoint.resume_count,
        retries=self.request.retries,
        eta=self.request.eta,
    )
    for i in range(state["i"], n):
        time.sleep(step_seconds * STEP_SCALE)
        state = {**state, "i": i + 1, "total": state["total"] + i + 1}
        if NOTE_STEPS:
            note(self.request.id, "step", i=i + 1)
        try:
            if checkpoint.save(state, progress=(i + 1) / n):
                note(self.request.id, "saved", i=i + 1)
        except CheckpointOwnershipLost:
            note(self.request.id, "lost", i=i + 1)
            raise
        except CheckpointHandoff:
            note(self.request.id, "handoff", i=i + 1)
            raise
        except Exception as exc:
            note(self.request.id, "save-error", i=i + 1, error=type(exc).__name__)
            raise
        if i + 1 == retry_at and not state.get("retried"):
            state["retried"] = True
            checkpoint.save(state, force=True)
            note(self.request.id, "retry", i=i + 1)
            raise self.retry(countdown=retry_countdown)
    note(self.request.id, "done", i=n)
    return state["total"]


@app.task(base=CheckpointTask, bind=True, max_retries=3)
def flaky(self, n, fail_at, retry_countdown=0.1, checkpoint=None):
    """Retries itself once at fail_at; the retried run must continue from there."""
    state = checkpoint.load() or {"i": 0}
    note(self.request.id, "start", i=state["i"], retries=self.request.retries)
    for i in range(state["i"], n):
        state = {"i": i + 1}
        checkpoint.save(state, force=True)
        if i + 1 == fail_at and self.request.retries == 0:
            raise self.retry(countdown=retry_countdown)
    return state["i"]


@app.task(base=CheckpointTask, bind=True)
def explode(self, checkpoint):
    checkpoint.save({"step": 1}, force=True)
    raise ValueError("boom")


@app.task
def add_one(x):
    return x + 1


@app.task
def total(values):
    return sum(values)


@app.task(base=CheckpointTask, bind=True)
def doomed(self, checkpoint):
    """Kills its own pool process on every run, as an OOM would: a poison task."""
    state = checkpoint.load() or {"runs": 0}
    note(self.request.id, "start", runs=state["runs"], resume_count=checkpoint.resume_count)
    checkpoint.save({"runs": state["runs"] + 1}, force=True)
    os.kill(os.getpid(), 9)
