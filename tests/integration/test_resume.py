"""A checkpointed task survives the death of its worker, end to end."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def events(c: Cluster, task_id: str) -> list[dict]:
    path = Path(c.env()["CC_FLAGS_DIR"]) / f"{task_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def saved_at_least(c: Cluster, task_id: str, n: int) -> bool:
    return any(e["event"] == "saved" and e["i"] >= n for e in events(c, task_id))


def app_and_store(c: Cluster):
    from tests.apps import longtask

    longtask.app.conf.broker_url = c.env()["CC_BROKER_URL"]
    longtask.app.conf.result_backend = c.env()["CC_BACKEND_URL"]
    longtask.app.conf.checkpoint_store_url = c.env()["CC_STORE_URL"]
    longtask.count_to._checkpoint_config_cache = None
    return longtask, longtask.count_to.checkpoint_store()


def test_main_process_sigkill_then_restart_resumes_same_task_id(redis_cluster: Cluster) -> None:
    longtask, store = app_and_store(redis_cluster)
    w = redis_cluster.worker("w1").wait_ready()
    result = longtask.count_to.delay(60, 0.05)
    wait_for(lambda: saved_at_least(redis_cluster, result.id, 15), 30, "15 saved steps")
    w.kill(signal.SIGKILL)
    record = store.get(result.id)
    assert record is not None and record.saves >= 1

    redis_cluster.worker("w1").wait_ready()
    assert result.get(timeout=60) == sum(range(61))
    starts = [e for e in events(redis_cluster, result.id) if e["event"] == "start"]
    assert starts[0]["i"] == 0
    assert len(starts) == 2 and starts[1]["i"] >= 15, starts
    assert starts[1]["resume_count"] == 1
    wait_for(lambda: store.get(result.id) is None, 5, "checkpoint deleted after success")
