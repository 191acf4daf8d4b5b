"""The Celery apps the throughput and scan benchmarks run.

``make_app(checkpoint=False)`` is plain Celery: it does not even import
celery_checkpoint, so the baseline worker runs none of its signal handlers.
Every key the broker writes carries the run's ``global_keyprefix``, so a run
never mixes with anything else in the same Redis database.
"""

from __future__ import annotations

import signal
from typing import Any

from celery import Celery

#: Makes a bench worker process (main or pool) print every thread's stack to
#: its log (``faulthandler``), so a stalled run can say where it stands.
STACKS_SIGNAL = signal.SIGRTMIN + 3

PLAIN_NOOP = "bench.plain_noop"
PLAIN_NOOP_LATE = "bench.plain_noop_late"
PLAIN_SET_DELETE = "bench.plain_set_delete"
PLAIN_SET_DELETE_LATE = "bench.plain_set_delete_late"
CHECKPOINT_NOOP = "bench.checkpoint_noop"
CHECKPOINT_SAVE = "bench.checkpoint_save"
RESUMABLE = "bench.resumable"


def make_app(
    broker_url: str,
    *,
    keyprefix: str,
    queue: str,
    checkpoint: bool,
    store_url: str | None = None,
    store_prefix: str = "checkpoint:",
    result_backend: str | None = None,
) -> Celery:
    app = Celery("bench", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": keyprefix},
        task_default_queue=queue,
        task_ignore_result=True,
        result_backend=result_backend,
        broker_connection_retry_on_startup=True,
    )

    @app.task(bind=True, name=PLAIN_NOOP, shared=False)
    def plain_noop(self: Any) -> None:
        return None

    @app.task(bind=True, name=PLAIN_NOOP_LATE, shared=False, acks_late=True, reject_on_worker_lost=True)
    def plain_noop_late(self: Any) -> None:
        """The plain task with the delivery options CheckpointTask turns on (``bench.ab``)."""
        return None

    clients: list[Any] = []  # one redis-py client per pool process, made after the fork

    def set_and_delete(task_id: str) -> None:
        if not clients:
            import redis

            clients.append(redis.Redis.from_url(store_url or broker_url))
        key = f"{store_prefix}raw:{task_id}"
        clients[0].set(key, b'{"step": 1}')
        clients[0].delete(key)

    @app.task(bind=True, name=PLAIN_SET_DELETE, shared=False)
    def plain_set_delete(self: Any) -> None:
        """A hand-rolled checkpoint with redis-py: SET the state, DEL it at the end (``bench.ab``)."""
        set_and_delete(self.request.id)

    @app.task(bind=True, name=PLAIN_SET_DELETE_LATE, shared=False, acks_late=True, reject_on_worker_lost=True)
    def plain_set_delete_late(self: Any) -> None:
        """The same with the delivery options CheckpointTask turns on (``bench.ab``)."""
        set_and_delete(self.request.id)

    if not checkpoint:
        return app

    from celery_checkpoint import CheckpointTask

    app.conf.update(checkpoint_store_url=store_url, checkpoint_key_prefix=store_prefix)

    @app.task(base=CheckpointTask, bind=True, name=CHECKPOINT_NOOP, shared=False)
    def checkpoint_noop(self: Any) -> None:
        """Never touches its checkpointer: the cost of the base class alone."""
        return None

    @app.task(base=CheckpointTask, bind=True, name=CHECKPOINT_SAVE, shared=False)
    def checkpoint_save(self: Any, checkpoint: Any) -> None:
        """Loads (nothing there), saves once (a create), completes (finish)."""
        state = checkpoint.load() or {"step": 0}
        checkpoint.save({"step": state["step"] + 1})

    @app.task(base=CheckpointTask, bind=True, name=RESUMABLE, shared=False)
    def resumable(self: Any, checkpoint: Any) -> None:
        """What the resume scan re-enqueues (never run by the scan benchmark)."""
        checkpoint.load()

    return app
