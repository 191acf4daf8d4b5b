"""Chaos: 50 checkpointed tasks, 3 real workers, random SIGKILLs and a store outage.

Every few seconds a random worker's main process or one of its pool children
is SIGKILLed (a killed main process is restarted under the same node name),
and once the checkpoint store's own redis-server is killed and restarted.
At the end every task must have succeeded with the right result, exactly once
in the result backend, with no checkpoint left behind.

A task killed before its first checkpoint (or whose first load failed during
the outage) has nothing to resume from: it comes back through Celery's own
acks_late redelivery, which on Redis means kombu restoring the dead
consumer's unacked message after the visibility timeout. The test makes
kombu look for those every second instead of every 100 s, and lets kombu's
restore lock expire after 5 s instead of 300 s: a worker SIGKILLed while it
holds that lock otherwise stops every restore for five minutes. A first load
that fails in the outage retries due at once, after waiting in its run: as an
ETA message it let kombu lose other messages to a SIGKILL, and with them tasks
that had never saved (scripts/kombu_eta_loss.py).

A third of the tasks retry once with a countdown halfway through, so the
crashes also meet ETA retries: held in a worker's prefetch until due, and
lost with it if kombu loses them; a worker's scan sends a lost retry again
``requeue_after`` seconds after it was due.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from datetime import datetime

import pytest
import redis
from celery.result import AsyncResult

from celery_checkpoint.record import CheckpointRecord
from tests.harness import Cluster, Worker, cluster, wait_for
from tests.integration.helpers import Client, connect, events

pytestmark = pytest.mark.chaos

TASKS = 50
STEP = 0.05
THROTTLE = 0.2
CHAOS_SECONDS = 75
DEADLINE = 240
#: The share of tasks that retry once with a countdown.
RETRYING = 1 / 3


def total(n: int) -> int:
    return n * (n + 1) // 2


def chaos(
    c: Cluster,
    workers: dict[str, Worker],
    done: callable,  # type: ignore[valid-type]
    rng: random.Random,
    log: list[str],
) -> dict[str, int]:
    """Crash things until ``done()`` or CHAOS_SECONDS; note each action in ``log``, timed as worker logs."""
    counts = {"main": 0, "child": 0, "outage": 0}

    def note(action: str) -> None:
        log.append(f"{datetime.now():%H:%M:%S,%f}"[:-3] + f" {action}")

    outage_at = time.monotonic() + rng.uniform(6, 12)
    stop_at = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < stop_at and not done():
        time.sleep(rng.uniform(1.5, 3.5))
        if counts["outage"] == 0 and time.monotonic() >= outage_at:
            note("store redis-server stopped")
            c.store_redis.stop()
            time.sleep(3)
            c.store_redis.start()
            note("store redis-server started")
            counts["outage"] += 1
            continue
        name = rng.choice(sorted(workers))
        worker = workers[name]
        children = worker.children()
        if children and rng.random() < 0.5:
            child = rng.choice(children)
            os.kill(child, signal.SIGKILL)
            note(f"{name}: pool child {child} SIGKILLed")
            counts["child"] += 1
        else:
            worker.kill(signal.SIGKILL)
            note(f"{name}: main process SIGKILLed")
            counts["main"] += 1
            time.sleep(rng.uniform(0.2, 1.0))
            workers[name] = c.worker(name)
            workers[name].wait_ready()
    return counts


def queues(c: Cluster) -> dict[str, object]:
    r = redis.Redis.from_url(c.redis.url)
    keys = {k.decode(): r.ttl(k) for k in r.keys("*") if not k.startswith(b"_kombu.binding")}
    return {"celery": r.llen("celery"), "unacked": r.hlen("unacked"), "keys (ttl)": keys}


def stuck_report(
    c: Cluster, client: Client, results: list[AsyncResult], workers: dict[str, Worker], actions: list[str]
) -> str:
    """What a person debugging a hang needs: each unfinished task's runs, checkpoint and the queues."""
    records = {r.task_id: r for r in client.store.scan() if isinstance(r, CheckpointRecord)}
    lines = [f"leases: {client.store.leases()}", f"broker: {queues(c)}", "chaos:"]
    lines.extend(f"    {action}" for action in actions)
    for r in results:
        if r.ready():
            continue
        rec = records.get(r.id)
        lines.append(f"task {r.id} state={r.state} checkpoint={rec!r}")
        lines.extend(f"    {e}" for e in events(c, r.id)[-8:])
        for name, w in workers.items():
            lines.extend(f"    {name}: {line}" for line in w.output().splitlines() if r.id in line)
    return "\n".join(lines)


def test_random_crashes_lose_nothing_and_finish_every_task_once(tmp_path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed} (rerun with CHAOS_SEED={seed})")
    with cluster(
        tmp_path,
        separate_store=True,
        throttle=str(THROTTLE),
        lease_ttl="3",
        sweep_interval="1",
        visibility_timeout="15",
        store_retry_delay="1",
        max_resumes="50",
        requeue_after="5",
        restore_interval="1",
        restore_throttle="1",
        restore_mutex_expire="5",
        note_steps="1",
    ) as c:
        client = connect(c)
        workers = {name: c.worker(name) for name in ("w1", "w2", "w3")}
        for w in workers.values():
            w.wait_ready()
        sizes = [rng.randint(30, 90) for _ in range(TASKS)]
        retry_at = [rng.randint(5, n - 5) if rng.random() < RETRYING else 0 for n in sizes]
        calls = zip(sizes, retry_at, strict=True)
        results = [client.delay("count_to", n, STEP, retry_at=k) for n, k in calls]
        started = time.monotonic()

        def all_ready() -> bool:
            return all(r.ready() for r in results)

        actions: list[str] = []
        counts = chaos(c, workers, all_ready, rng, actions)
        remaining = DEADLINE - (time.monotonic() - started)
        try:
            wait_for(all_ready, max(remaining, 30), "every task finished", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stuck_report(c, client, results, workers, actions)}") from None

        values = [r.get(timeout=5) for r in results]
        assert values == [total(n) for n in sizes]
        wait_for(lambda: not list(client.store.scan()), 20, "no checkpoint left")

        resumes, redone, runs_with_done = 0, [], 0
        retries = {
            "asked of": sum(1 for k in retry_at if k),
            "sent": 0,
            "ran from its ETA message": 0,
            "ran otherwise": 0,
        }
        for r in results:
            evs = events(c, r.id)
            runs_with_done += sum(1 for e in evs if e["event"] == "done") > 0
            reached, after_retry = 0, False
            for e in evs:
                if e["event"] == "retry":
                    retries["sent"] += 1
                    after_retry = True
                elif e["event"] == "start" and after_retry:
                    # The run after a retry: its ETA message, or (killed around the
                    # retry, or the message lost) a resume or the scan's re-send.
                    retries["ran from its ETA message" if e["eta"] else "ran otherwise"] += 1
                    after_retry = False
                elif e["event"] == "start" and reached:
                    resumes += 1
                    redone.append(reached - e["i"])
                if e["event"] == "step":
                    reached = max(reached, e["i"])
            assert AsyncResult(r.id, app=client.app).state == "SUCCESS"
        window = THROTTLE / STEP
        print(
            f"chaos: {counts['main']} main-process kills, {counts['child']} pool-child kills, "
            f"{counts['outage']} store outage; {TASKS} tasks, {resumes} resumes; "
            f"countdown retries: {retries}; "
            f"work redone per resume in steps of {STEP}s (throttle window = {window:.0f} steps): "
            f"median {statistics.median(redone) if redone else 0}, max {max(redone, default=0)}; "
            f"{time.monotonic() - started:.0f}s"
        )
        assert runs_with_done == TASKS
        assert counts["main"] + counts["child"] >= 5, "the chaos must actually have happened"
        assert retries["sent"] >= 1, "the chaos must have met countdown retries"
