"""Figure 7: the resume scan, 1,000 interrupted checkpoints among 100,000 live ones.

Two stores share the Redis server under different key prefixes. Both get
1,000 interrupted checkpoints (owned by a worker id whose lease ended); one
also holds 100,000 checkpoints of running tasks (owned by a worker id with a
live lease). Records are written with the store's own CREATE script,
pipelined, exactly as 101,000 first saves would have left them.

Timed: ``Resumer(app, store, claimer).scan()`` from the call until it
returns, by which point every interrupted task was claimed and published to
the broker (checked: 1,000 RESUMED outcomes and 1,000 messages in the
queue). The 1,000 interrupted checkpoints are written again before each
repeat, and the two stores alternate.

Figure 7d (ours, not the issue's) times the same scan of 1,000 interrupted
checkpoints in an app with a Redis result backend, against the app with
none: the scan asks the backend whether each task already finished, and
that question must not cost a round trip per task.

Also timed on its own: ``store.interrupted()``, the listing part, the one
that would grow with the live checkpoints if the key layout were wrong. It
takes a few ms, so the two stores' listings are timed in turns, back to
back, with both holding their 1,000 interrupted checkpoints: a listing a
scan apart (~2 s) differed by +-30 % from the VM's drift alone.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from celery_checkpoint.resume import Outcome, Resumer
from celery_checkpoint.stores import redis_lua
from celery_checkpoint.stores.redis import RedisStore

from .apps import RESUMABLE, make_app
from .common import Context
from .report import Figure, alternate, median

BATCH = 2000
#: Listings per sample, and samples per store, of figure 7c.
LISTINGS = 5
LISTING_SAMPLES = 21


def populate(store: RedisStore, owner: str, count: int, tag: str) -> list[str]:
    """``count`` records owned by ``owner``, as their first save() leaves them."""
    create = store.client.register_script(redis_lua.CREATE)
    state = json.dumps({"cursor": 0}).encode()
    now = repr(time.time())
    ids = []
    pipe = store.client.pipeline(transaction=False)
    for i in range(count):
        task_id = f"{tag}-{i:06d}-{uuid.uuid4().hex[:8]}"
        ids.append(task_id)
        envelope = json.dumps({"args": [], "kwargs": {}, "options": {"task_id": task_id}}).encode()
        create(
            keys=[
                store.record_key(task_id),
                store.owned_key(owner),
                store.owners_key,
                store.save_key(task_id, 1),
                store.done_key(task_id),
                store.call_key(task_id),
            ],
            args=[
                task_id,
                owner,
                4242,
                RESUMABLE,
                state,
                "application/json",
                "utf-8",
                envelope,
                "application/json",
                "utf-8",
                "",
                now,
                1,  # the first fence, as in save_key above
            ],
            client=pipe,
        )
        if len(pipe) >= BATCH:
            pipe.execute()
    if len(pipe):
        pipe.execute()
    return ids


class ScanCase:
    """One store: ``live`` running checkpoints, refilled with interrupted ones per repeat."""

    def __init__(self, ctx: Context, app: Any, label: str, live: int, interrupted: int) -> None:
        self.ctx = ctx
        self.app = app
        self.interrupted = interrupted
        self.prefix = f"{ctx.namespace}:{label}:"
        self.store = RedisStore(ctx.redis_url, prefix=self.prefix)
        self.claimer = f"bench-scanner-{label}@localhost|{uuid.uuid4().hex[:12]}"
        self.store.register(self.claimer, 3600)  # the scanning worker is alive
        if live:
            owner = f"bench-live-{label}@localhost|{uuid.uuid4().hex[:12]}"
            self.store.register(owner, 3600)
            populate(self.store, owner, live, "live")
        self.queue_key = f"{ctx.namespace}:broker:" + app.conf.task_default_queue
        self.rounds = 0

    def refill(self) -> list[str]:
        self.rounds += 1
        dead = f"bench-dead-{self.rounds}@localhost|{uuid.uuid4().hex[:12]}"
        self.store.register(dead, 60)
        ids = populate(self.store, dead, self.interrupted, f"lost{self.rounds}")
        self.store.retire(dead)  # its lease ends: its checkpoints are interrupted now
        return ids

    def listing(self) -> float:
        """The median time of a few ``interrupted()`` calls (read-only)."""
        listings = []
        for _ in range(LISTINGS):
            start = time.perf_counter()
            candidates = self.store.interrupted()
            listings.append(time.perf_counter() - start)
        if len(candidates) != self.interrupted:
            raise RuntimeError(f"listed {len(candidates)} interrupted, expected {self.interrupted}")
        return median(listings)

    def once(self) -> float:
        ids = self.refill()
        client = self.store.client
        client.delete(self.queue_key)
        resumer = Resumer(self.app, self.store, self.claimer)
        start = time.perf_counter()
        report = resumer.scan()
        elapsed = time.perf_counter() - start

        resumed = report.count(Outcome.RESUMED)
        published = int(client.llen(self.queue_key))
        if resumed != self.interrupted or published != self.interrupted:
            raise RuntimeError(
                f"scan resumed {resumed} ({report.summary()}) and published {published}, "
                f"expected {self.interrupted}"
            )
        client.delete(self.queue_key)
        pipe = client.pipeline(transaction=False)
        for t in ids:
            pipe.hget(self.store.record_key(t), "fence")
        fences = pipe.execute()
        client.unlink(
            *(self.store.record_key(t) for t in ids),
            *(self.store.save_key(t, int(f or 0)) for t, f in zip(ids, fences, strict=True)),
        )
        client.srem(self.store.released_key, *ids)  # resumed ones wait there for their message
        return elapsed

    def close(self) -> None:
        self.store.close()


def resume_scan(ctx: Context) -> list[Figure]:
    live = 2_000 if ctx.quick else 100_000
    interrupted = 100 if ctx.quick else 1_000
    repeats = 1 if ctx.quick else 7

    def scan_app(result_backend: str | None = None) -> Any:
        return make_app(
            ctx.redis_url,
            keyprefix=f"{ctx.namespace}:broker:",
            queue="resumed",
            checkpoint=True,
            store_url=ctx.redis_url,
            store_prefix=f"{ctx.namespace}:scan-app:",
            result_backend=result_backend,
        )

    app = scan_app()
    # The same app with a Redis result backend, which the scan asks whether
    # a task already finished (its keys under the run's namespace too).
    backed_app = scan_app(ctx.redis_url)
    backed_app.conf.result_backend_transport_options = {"global_keyprefix": f"{ctx.namespace}:results:"}
    ctx.log(f"   writing {live:,} live checkpoints")
    started = time.perf_counter()
    full = ScanCase(ctx, app, "scan-live", live, interrupted)
    empty = ScanCase(ctx, app, "scan-empty", 0, interrupted)
    backed = ScanCase(ctx, backed_app, "scan-backed", 0, interrupted)
    ctx.log(f"   written in {time.perf_counter() - started:.1f} s")
    try:
        for each in (app, backed_app):
            with each.producer_or_acquire():  # connect the producer pool before timing
                pass
        full.once()  # warm up: scripts loaded, connections open, task imported
        empty.once()
        backed.once()
        samples = alternate({"full": full.once, "empty": empty.once, "backed": backed.once}, repeats)
        full.refill()
        empty.refill()
        full.listing()  # the first listing forgets the dead owners of earlier rounds
        empty.listing()
        listings = alternate(
            {"full": full.listing, "empty": empty.listing}, 1 if ctx.quick else LISTING_SAMPLES
        )
    finally:
        full.close()
        empty.close()
        backed.close()
        app.close()
        backed_app.close()
        ctx.forget_keys(f"{ctx.namespace}:scan-*")
    info = f"{interrupted:,} interrupted among {live:,} live, {repeats} repeats"
    listing_info = (
        f"{interrupted:,} interrupted among {live:,} live; {len(listings['full'])} samples per store, "
        f"each the median of {LISTINGS} listings, the two stores in turns"
    )

    def against_empty(key: str, name: str, case: str, about: str) -> Figure:
        """A whole scan's time against the scan of the store with no live checkpoints."""
        return Figure(
            key=key,
            name=name,
            unit="s",
            ours=median(samples[case]),
            baseline=median(samples["empty"]),
            check="ratio<=",
            limit=1.2,
            ours_samples=samples[case],
            baseline_samples=samples["empty"],
            info=about,
        )

    return [
        Figure(
            key="7a",
            name=f"resume scan: {interrupted:,} interrupted among {live:,} live, until all re-enqueued",
            unit="s",
            ours=median(samples["full"]),
            baseline=None,
            check="value<",
            limit=2.0,
            ours_samples=samples["full"],
            info=info,
        ),
        against_empty("7b", f"resume scan cost, {live:,} live vs 0 live", "full", info),
        Figure(
            key="7c",
            name=f"interrupted() listing alone, {live:,} live vs 0 live",
            unit="ms",
            ours=median(listings["full"]) * 1000,
            baseline=median(listings["empty"]) * 1000,
            check="ratio<=",
            limit=1.2,
            ours_samples=[v * 1000 for v in listings["full"]],
            baseline_samples=[v * 1000 for v in listings["empty"]],
            info=listing_info,
        ),
        against_empty(
            "7d",
            f"resume scan, {interrupted:,} interrupted, Redis result backend vs none",
            "backed",
            f"{interrupted:,} interrupted among 0 live, {repeats} repeats; the scan asks the "
            "backend whether each task already finished",
        ),
    ]


def run(ctx: Context) -> list[Figure]:
    ctx.log("7: resume scan")
    return resume_scan(ctx)
