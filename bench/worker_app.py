"""``celery -A bench.worker_app worker``: the app of :mod:`bench.apps`, from BENCH_* variables."""

from __future__ import annotations

import faulthandler
import os

from .apps import STACKS_SIGNAL, make_app

# Registered before the pool forks, so the pool processes inherit it; it
# writes to file descriptor 2, the worker's log.
faulthandler.register(STACKS_SIGNAL, all_threads=True)

app = make_app(
    os.environ["BENCH_BROKER_URL"],
    keyprefix=os.environ["BENCH_KEYPREFIX"],
    queue=os.environ["BENCH_QUEUE"],
    checkpoint=os.environ.get("BENCH_CHECKPOINT") == "1",
    store_url=os.environ.get("BENCH_STORE_URL") or None,
    store_prefix=os.environ.get("BENCH_STORE_PREFIX", "checkpoint:"),
)
