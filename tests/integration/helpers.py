"""Reading what the test app's tasks left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from celery import Celery, Signature
from celery.result import AsyncResult

from celery_checkpoint.stores import create_store
from tests.harness import Cluster


def events(c: Cluster, task_id: str) -> list[dict[str, Any]]:
    path = Path(c.env()["CC_FLAGS_DIR"]) / f"{task_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def starts(c: Cluster, task_id: str) -> list[dict[str, Any]]:
    return [e for e in events(c, task_id) if e["event"] == "start"]


def saved_at_least(c: Cluster, task_id: str, n: int) -> bool:
    return any(e["event"] == "saved" and e["i"] >= n for e in events(c, task_id))


class Client:
    """What a caller has: a Celery app that knows the broker, and the checkpoint store."""

    def __init__(self, c: Cluster) -> None:
        env = c.env()
        self.app = Celery("client", broker=env["CC_BROKER_URL"], backend=env["CC_BACKEND_URL"])
        self.store = create_store(env["CC_STORE_URL"])

    def sig(self, name: str, *args: Any, **kwargs: Any) -> Signature:
        return self.app.signature(f"tests.apps.longtask.{name}", args=args, kwargs=kwargs)

    def delay(self, name: str, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.sig(name, *args, **kwargs).delay()


def connect(c: Cluster) -> Client:
    return Client(c)
