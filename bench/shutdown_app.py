"""Two versions of the same long task for bench/shutdown.py: plain and checkpointed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

from celery_checkpoint import CheckpointTask

app = Celery("shutdown_bench", broker=os.environ["BENCH_BROKER_URL"], backend=os.environ["BENCH_BACKEND_URL"])
app.conf.update(
    checkpoint_store_url=os.environ["BENCH_STORE_URL"],
    checkpoint_throttle=0.1,
    worker_prefetch_multiplier=1,
)
MARKS = Path(os.environ["BENCH_MARKS_DIR"])


def mark(task_id: str, what: str) -> None:
    (MARKS / f"{task_id}.{what}.{os.getpid()}").write_text(repr(time.time()))


@app.task(bind=True, acks_late=True)
def plain_long(self, steps: int, step: float) -> int:
    mark(self.request.id, "start")
    for _ in range(steps):
        time.sleep(step)
    return steps


@app.task(base=CheckpointTask, bind=True)
def checkpointed_long(self, steps: int, step: float, checkpoint) -> int:  # type: ignore[no-untyped-def]
    mark(self.request.id, "start")
    done = checkpoint.load() or 0
    for i in range(done, steps):
        time.sleep(step)
        checkpoint.save(i + 1)
    return steps
