"""Figure 8 (ours, not the issue's): the per-task cost stays flat as a worker runs.

A cost that grows with the tasks a process has run does not show in a
benchmark of a few thousand tasks, and shows in production after hours: the
SQLite store once purged expired done markers with a scan of all of them on
every finish, so by 24,000 tasks a finish cost five times what it cost at
the start. This runs the figure-5 task (load, save once, complete) 60,000
times in one process, through Celery's own tracer exactly as a pool process
runs it (no worker and no broker: only the task, its checkpointer and the
store), and compares the CPU time per task of the last 10,000 with that of
the first 10,000. Each store keeps everything it writes (done markers
included) for the whole run, as it would for a day's tasks.

The VM this runs on speeds up and slows down by a fifth within a minute, so
the two ends are not compared raw: slices of the plain Celery task (same
tracer, same process, no checkpoint, a cost that cannot grow) take turns
with slices of ours, and each block's figure is ours over the plain task's
in that block, scaled by the plain task's median over the run. A cost of
ours that grows still shows in full; the machine's drift, which slows both
alike, does not. Nor would a leak that slows every task of the process
alike (a heap the cyclic GC walks on every collection): the peak RSS growth
printed beside the figure is there for that.
"""

from __future__ import annotations

import resource
import time
import uuid
from typing import Any

from celery.app.trace import build_tracer

from celery_checkpoint.envelope import FRESH_HEADER

from .apps import CHECKPOINT_SAVE, PLAIN_NOOP, make_app
from .common import Context
from .report import Figure, median

BLOCK = 5_000
BLOCKS = 12
COMPARED = 2  # blocks at each end: the first 10,000 tasks against the last 10,000
#: Tasks of ours, then as many plain ones, in turns: short enough that both
#: see the machine at the same speed.
SLICE = 250


def request_for(task_id: str, queue: str, name: str = CHECKPOINT_SAVE) -> dict[str, Any]:
    """The request a pool process gets for a fresh ``apply_async()`` (what the worker passes on)."""
    return {
        "lang": "py",
        "task": name,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "bench@localhost",
        "ignore_result": True,
        FRESH_HEADER: True,
        "headers": {FRESH_HEADER: True},
        "reply_to": "bench-reply",
        "correlation_id": task_id,
        "hostname": "bench@localhost",
        "delivery_info": {"exchange": "", "routing_key": queue, "priority": 0, "redelivered": False},
        "args": [],
        "kwargs": {},
        "is_eager": False,
    }


def cpu_per_task_us(
    store_url: str, ctx: Context, blocks: int, block: int
) -> tuple[list[float], list[float], float]:
    """CPU microseconds per task of each block, ours and the plain task's, and the RSS growth (MB)."""
    queue = f"soak-{uuid.uuid4().hex[:6]}"
    app = make_app(
        ctx.redis_url,
        keyprefix=f"{ctx.namespace}:soak:",
        queue=queue,
        checkpoint=True,
        store_url=store_url,
        store_prefix=f"{ctx.namespace}:soak:",
    )
    app.finalize()
    task = app.tasks[CHECKPOINT_SAVE]
    trace = build_tracer(CHECKPOINT_SAVE, task, app=app, eager=False, propagate=False)
    plain = build_tracer(PLAIN_NOOP, app.tasks[PLAIN_NOOP], app=app, eager=False, propagate=False)

    def run_slice(tracer: Any, name: str, count: int) -> float:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        start = time.process_time()
        for task_id in ids:
            outcome = tracer(task_id, [], {}, request_for(task_id, queue, name))
            if outcome.info is not None:  # the tracer's ExceptionInfo for a failed run
                raise RuntimeError(f"the soak task {name} failed: {outcome.info!r}")
        return time.process_time() - start

    per_block: list[float] = []
    plain_per_block: list[float] = []
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for _ in range(blocks):
            ours = theirs = 0.0
            for start in range(0, block, SLICE):
                count = min(SLICE, block - start)
                ours += run_slice(trace, CHECKPOINT_SAVE, count)
                theirs += run_slice(plain, PLAIN_NOOP, count)
            per_block.append(ours / block * 1e6)
            plain_per_block.append(theirs / block * 1e6)
    finally:
        store = task.checkpoint_store()
        if store is not None:
            store.close()
        app.close()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) / 1024
    return per_block, plain_per_block, grown


def soak(ctx: Context) -> list[Figure]:
    blocks, block = (2, 100) if ctx.quick else (BLOCKS, BLOCK)
    stores = (
        ("8a", "SQLite", f"sqlite:///{ctx.workdir / 'soak.db'}"),
        ("8b", "Redis", ctx.redis_url),
    )
    figures = []
    for key, label, url in stores:
        raw, plain, grown = cpu_per_task_us(url, ctx, blocks, block)
        speed = median(plain)
        per_block = [ours / theirs * speed for ours, theirs in zip(raw, plain, strict=True)]
        first, last = per_block[:COMPARED], per_block[-COMPARED:]
        ends, total = COMPARED * block, blocks * block
        compared = f"last {ends:,} of {total:,} vs first {ends:,}"
        figures.append(
            Figure(
                key=key,
                name=f"steady state, {label} store: CPU per task at a steady machine speed, {compared}",
                unit="us",
                ours=median(last),
                baseline=median(first),
                check="ratio<=",
                limit=1.2,
                ours_samples=last,
                baseline_samples=first,
                info=(
                    f"{blocks} blocks of {block} tasks in one process through Celery's tracer, "
                    f"each taking turns with as many plain tasks in slices of {SLICE}; "
                    f"per block, raw (us/task): {', '.join(f'{v:.0f}' for v in raw)}; "
                    f"the plain task's: {', '.join(f'{v:.0f}' for v in plain)}; "
                    f"ours at the plain task's median speed ({speed:.0f} us), compared: "
                    f"{', '.join(f'{v:.0f}' for v in per_block)}; peak RSS grew {grown:.1f} MB"
                ),
            )
        )
        ctx.log(f"   {label}: {per_block[0]:.0f} -> {per_block[-1]:.0f} us/task (at the plain task's speed)")
    return figures


def run(ctx: Context) -> list[Figure]:
    ctx.log(f"8: steady state over {BLOCKS * BLOCK:,} tasks (in-process, Celery's tracer)")
    return soak(ctx)
