"""Figure 1: a throttled (skipped) ``save()`` against the hand-written throttle check.

Both statements run in the same ``timeit`` loop machinery, many iterations per
sample, so the loop's own cost (a few ns) is in both. The baseline is what a
body would write by hand instead: ``monotonic() < next_save``.
"""

from __future__ import annotations

import time
import timeit

from celery_checkpoint.stores.redis import RedisStore

from .common import Context, checkpointer
from .report import Figure, alternate, median


def skipped_save(ctx: Context) -> Figure:
    loops = 100_000 if ctx.quick else 200_000
    repeats = 1 if ctx.quick else 41
    store = RedisStore(ctx.redis_url, prefix=f"{ctx.namespace}:micro:")
    try:
        handle = checkpointer(store, "micro-skipped", throttle=3600.0)
        state = {"cursor": 1}
        # One real write first: from then on every save() inside the hour is skipped.
        if not handle.save(state) or handle.save(state):
            raise RuntimeError("expected one persisted save followed by a throttled one")
        ours = timeit.Timer("checkpoint.save(state)", globals={"checkpoint": handle, "state": state})
        base = timeit.Timer(
            "monotonic() < next_save",
            globals={"monotonic": time.monotonic, "next_save": time.monotonic() + 3600.0},
        )
        ours.timeit(loops // 10)  # warm up (specialisation, caches)
        base.timeit(loops // 10)
        samples = alternate(
            {
                "ours": lambda: ours.timeit(loops) / loops * 1e9,
                "baseline": lambda: base.timeit(loops) / loops * 1e9,
            },
            repeats,
        )
        if handle.saves != 1:
            raise RuntimeError(f"a throttled save was persisted ({handle.saves} saves)")
        handle.complete()
        handle.close()
    finally:
        store.close()
    return Figure(
        key="1",
        name="skipped (throttled) save() vs monotonic() + compare",
        unit="ns",
        ours=median(samples["ours"]),
        baseline=median(samples["baseline"]),
        check="ratio<=",
        limit=2.0,
        ours_samples=samples["ours"],
        baseline_samples=samples["baseline"],
        info=f"{loops:,} calls per sample",
    )


def run(ctx: Context) -> list[Figure]:
    ctx.log("1: skipped save() micro-benchmark")
    return [skipped_save(ctx)]
