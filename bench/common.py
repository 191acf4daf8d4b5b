"""What every benchmark gets: where Redis is, how hard to try, and a checkpointer factory."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import redis

from celery_checkpoint.checkpointer import Checkpointer
from celery_checkpoint.events import persist_hook
from celery_checkpoint.record import accepted_content_types
from celery_checkpoint.stores.base import CheckpointStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    """One run of the suite."""

    #: ``redis://host:port/db`` the benchmarks use (private unless --redis-url).
    redis_url: str
    #: A fast smoke run: tiny sizes, one repeat; the numbers mean nothing.
    quick: bool
    #: Prefix of every key this run writes, so it can clean up after itself.
    namespace: str
    #: Scratch directory (SQLite files, worker logs), removed at the end.
    workdir: Path
    verbose: bool = False
    #: The private redis-server's pid, to count its CPU (None with --redis-url).
    redis_pid: int | None = None

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def forget_keys(self, pattern: str) -> int:
        """Delete this run's keys matching ``pattern`` (always under the namespace)."""
        if not pattern.startswith(self.namespace):
            raise ValueError(f"refusing to delete keys outside this run's namespace: {pattern!r}")
        client = self.client()
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
        client.close()
        return deleted


def checkpointer(store: CheckpointStore, task_id: str, *, throttle: float) -> Checkpointer:
    """A checkpointer wired the way ``CheckpointTask`` wires one in a worker.

    Same serializer (json), same accept list, and the same ``on_persist``
    hook, ``persist_hook`` in a worker without ``-E``, so a persisted save
    pays for events exactly as in production.
    """
    return Checkpointer(
        task_id=task_id,
        task_name="bench.task",
        store=store,
        owner="bench@localhost|inprocess",
        throttle=throttle,
        serializer="json",
        accept=accepted_content_types("json"),
        max_state_bytes=8 * 1024 * 1024,
        envelope=lambda: {"args": [], "kwargs": {}, "options": {"task_id": task_id}},
        on_persist=persist_hook(None, None),
    )
