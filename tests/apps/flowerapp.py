"""The app the Flower tests run in a real worker and a real Flower, configured by CC_* variables.

With ``CC_FLOWER_INSTALL=app`` the module itself calls
:func:`celery_checkpoint.flower.install` (the no-config-file way to enable
it); otherwise Flower is started with ``--conf=tests/apps/flowerconfig.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

import celery_checkpoint.flower
from celery_checkpoint import CheckpointTask

app = Celery(
    "flowerapp",
    broker=os.environ.get("CC_BROKER_URL", "redis://127.0.0.1:6379/15"),
    backend=os.environ.get("CC_BACKEND_URL", "redis://127.0.0.1:6379/15"),
)
app.conf.update(
    checkpoint_store_url=os.environ.get("CC_STORE_URL"),
    checkpoint_throttle=float(os.environ.get("CC_THROTTLE", "0.2")),
    checkpoint_lease_ttl=float(os.environ.get("CC_LEASE_TTL", "30")),
    checkpoint_sweep_interval=float(os.environ.get("CC_SWEEP_INTERVAL", "10")),
    checkpoint_max_resumes=int(os.environ.get("CC_MAX_RESUMES", "5")),
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": float(os.environ.get("CC_VISIBILITY_TIMEOUT", "3600"))},
    result_expires=3600,
    task_track_started=True,
)

if os.environ.get("CC_FLOWER_INSTALL") == "app":
    celery_checkpoint.flower.install()


@app.task(base=CheckpointTask, bind=True)
def crawl(self: Any, pages: int, seconds_per_page: float = 0.05, checkpoint: Any = None) -> int:
    """Visits ``pages`` pages slowly, saving (throttled) after each; returns the count."""
    state = checkpoint.load() or {"page": 0}
    for page in range(state["page"], pages):
        time.sleep(seconds_per_page)
        state = {"page": page + 1}
        checkpoint.save(state, progress=(page + 1) / pages)
    return int(state["page"])


@app.task
def ping() -> str:
    return "pong"
