"""The app `celery -A tests.apps.cliapp checkpoint ...` runs against in the CLI tests.

No server is needed: the broker and the result backend live in the process
(``memory://``, ``cache+memory://``), so ``resume`` really publishes a
message the test can read back. The store comes from ``CLIAPP_STORE_URL``
(for subprocess tests); in-process tests set ``app.conf`` directly, and
give ``elsewhere`` a store of its own by setting its ``checkpoint_store_url``.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_checkpoint import CheckpointTask

app = Celery(
    "cliapp",
    broker=os.environ.get("CLIAPP_BROKER_URL", "memory://"),
    backend="cache+memory://",
)
app.conf.update(
    checkpoint_store_url=os.environ.get("CLIAPP_STORE_URL"),
    checkpoint_max_resumes=2,
)


@app.task(base=CheckpointTask, bind=True)
def crunch(self, n, checkpoint):
    """Sums 1..n, one checkpoint per step."""
    state = checkpoint.load() or {"i": 0, "total": 0}
    for i in range(state["i"], n):
        state = {"i": i + 1, "total": state["total"] + i + 1}
        checkpoint.save(state)
    return state["total"]


@app.task(base=CheckpointTask, bind=True, checkpoint_store_url=os.environ.get("CLIAPP_OWN_STORE_URL"))
def elsewhere(self, n, checkpoint):
    """Like crunch, with a store of its own when ``CLIAPP_OWN_STORE_URL`` (or a test) names one."""
    state = checkpoint.load() or {"i": 0}
    for i in range(state["i"], n):
        checkpoint.save({"i": i + 1})
    return n


@app.task
def plain(x):
    """Not a CheckpointTask: a checkpoint naming it cannot be resumed."""
    return x


@app.task(base=CheckpointTask, bind=True, checkpoint_throttle="5")
def misconfigured(self, checkpoint):
    """A per-task setting of the wrong kind: its checkpoints cannot be resumed, and others still are."""
    checkpoint.load()
