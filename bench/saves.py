"""Figures 2 and 3: a persisted ``save()`` against the raw write of the same bytes.

``ours`` is the whole ``Checkpointer.save()`` with throttle 0 on a checkpoint
that already exists (the first save, a create, happens before timing), so
every timed call is a steady-state update: serialization, the lock, the
fenced store write and the (disabled) event hook. The baseline writes the
very bytes that save() produces, serialized beforehand, with the client
library alone: redis-py ``SET``, or a sqlite3 upsert in autocommit mode with
the store's own journal settings (WAL, synchronous=NORMAL, busy timeout).

States are ``{"cursor": n, "blob": "<random letters>"}`` whose JSON is
exactly 1 KB or 64 KB, eight of them used in turn, so that every write
changes the stored bytes, as a real checkpoint does. (Writing one value
over and over would flatter SQLite's baseline: it skips rewriting pages whose
content did not change.) Letters need no JSON escaping, and the state holds
no ``None`` (which sends a save to kombu's slower encoder, see
``celery_checkpoint.fastjson``): the ratio is as close to the library's own
overhead as a literal "same bytes" baseline allows. Where the time goes is
measured too (serialization alone, the store call alone) and reported with
the figure.
"""

from __future__ import annotations

import functools
import itertools
import random
import sqlite3
import string
import time
from collections.abc import Callable
from typing import Any

from celery_checkpoint.record import EncodedState, NewCheckpoint, encode
from celery_checkpoint.stores.base import CheckpointStore
from celery_checkpoint.stores.redis import RedisStore
from celery_checkpoint.stores.sqlite import SQLiteStore

from .common import Context, checkpointer
from .report import Figure, alternate, median

SIZES = (("1 KB", 1024), ("64 KB", 64 * 1024))
STATES = 8


def state_of(size: int, seed: int) -> dict[str, Any]:
    """A JSON state whose encoding is exactly ``size`` bytes, different per seed."""
    state: dict[str, Any] = {"cursor": seed, "blob": ""}
    rng = random.Random(seed)
    state["blob"] = "".join(rng.choices(string.ascii_letters, k=size - len(encoded(state))))
    return state


def encoded(state: dict[str, Any]) -> bytes:
    """The bytes save() writes for ``state``, as the store gets them."""
    return encode_only(state).payload


class Rotation:
    """STATES states and their encodings, handed out in turn."""

    def __init__(self, size: int) -> None:
        self.states = [state_of(size, seed) for seed in range(STATES)]
        self.payloads = [encoded(state) for state in self.states]
        if any(len(p) != size for p in self.payloads):
            raise RuntimeError(f"states are not {size} bytes: {[len(p) for p in self.payloads]}")
        self.encoded = [EncodedState(p, "application/json", "utf-8") for p in self.payloads]


def per_call_us(fn: Callable[[Any], Any], items: list[Any], loops: int) -> Callable[[], float]:
    """A sampler: mean microseconds of ``fn(item)`` over ``loops`` calls, items in turn."""
    cycle = itertools.cycle(items)

    def sample() -> float:
        start = time.perf_counter()
        for _ in range(loops):
            fn(next(cycle))
        return (time.perf_counter() - start) / loops * 1e6

    return sample


def encode_only(state: Any) -> EncodedState:
    return encode(state, "json", what="state", task_id="bench", limit=8 * 1024 * 1024)


def measure(
    ctx: Context,
    store: CheckpointStore,
    raw_write: Callable[[bytes], Any],
    size: int,
    task_id: str,
    *,
    loops: int,
    repeats: int,
) -> dict[str, list[float]]:
    """Samples of save() and of the raw write, plus save()'s parts, interleaved."""
    if ctx.quick:
        loops, repeats = 20, 1
    rotation = Rotation(size)
    handle = checkpointer(store, task_id, throttle=0.0)
    handle.save(rotation.states[-1])  # the create; everything timed below is an update
    # The store call alone, on a record of its own (fence 1: a fresh create).
    store_id = f"{task_id}-store"
    envelope = EncodedState(b"{}", "application/json", "utf-8")
    new = NewCheckpoint(
        "bench.task", "bench@localhost|parts", 1, rotation.encoded[0], envelope, None, time.time()
    )
    if store.create(store_id, new) != 1:
        raise RuntimeError(f"could not create {store_id}")
    samplers = {
        "ours": per_call_us(handle.save, rotation.states, loops),
        "baseline": per_call_us(raw_write, rotation.payloads, loops),
        "encode": per_call_us(encode_only, rotation.states, loops),
        "store": per_call_us(
            lambda e: store.update(store_id, 1, e, None, time.time()), rotation.encoded, loops
        ),
    }
    for sampler in samplers.values():
        sampler()  # warm up
    samples = alternate(samplers, repeats)
    expected = 1 + loops * (repeats + 1)  # the create, the warm-up, the samples
    if handle.saves != expected:
        raise RuntimeError(f"expected {expected} persisted saves, the store counted {handle.saves}")
    handle.complete()
    handle.close()
    store.delete(store_id)
    samples["loops"] = [float(loops)]
    return samples


def _figure(key: str, name: str, limit: float, samples: dict[str, list[float]], write: str) -> Figure:
    return Figure(
        key=key,
        name=name,
        unit="us",
        ours=median(samples["ours"]),
        baseline=median(samples["baseline"]),
        check="ratio<=",
        limit=limit,
        ours_samples=samples["ours"],
        baseline_samples=samples["baseline"],
        info=(
            f"of save(): JSON encode {median(samples['encode']):.1f} us, "
            f"{write} {median(samples['store']):.1f} us; "
            f"{int(samples['loops'][0])} calls per sample"
        ),
    )


def redis_saves(ctx: Context) -> list[Figure]:
    store = RedisStore(ctx.redis_url, prefix=f"{ctx.namespace}:saves:")
    raw = ctx.client()
    figures = []
    try:
        for letter, (label, size) in zip("ab", SIZES, strict=True):
            raw_write = functools.partial(raw.set, f"{ctx.namespace}:saves:raw:{size}")
            # Many short samples, taking turns: a burst of noise from another
            # process spoils one sample of one variant, and the median drops it.
            loops = 60 if size > 4096 else 100
            samples = measure(ctx, store, raw_write, size, f"saves-{size}", loops=loops, repeats=41)
            figures.append(
                _figure(
                    f"2{letter}",
                    f"persisted save(), {label}, Redis vs redis-py SET",
                    1.3,
                    samples,
                    "store.update()",
                )
            )
    finally:
        store.close()
        raw.close()
    return figures


UPSERT = "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


def raw_sqlite(path: str) -> sqlite3.Connection:
    """The baseline connection: autocommit, the store's pragmas, a two-column table."""
    conn = sqlite3.connect(path, timeout=SQLiteStore.busy_timeout_ms / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={SQLiteStore.busy_timeout_ms}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
    return conn


def sqlite_saves(ctx: Context) -> list[Figure]:
    store = SQLiteStore(str(ctx.workdir / "store.db"))
    conn = raw_sqlite(str(ctx.workdir / "raw.db"))
    figures = []
    try:
        for letter, (label, size) in zip("ab", SIZES, strict=True):
            key = f"saves-{size}"
            # 1,000 calls a sample: each sample must hold the same number of WAL
            # checkpoints on both sides. SQLite checkpoints (and fsyncs) once
            # per 1,000 pages written, and a 1 KB save writes one page on
            # either side, so any 1,000 saves in a row hold exactly one. With
            # 1,500 a sample held one or two, the samples of each side fell
            # into two groups ~25 % apart, and a median of 15 could land in
            # either: 1 KB came out between 1.36x and 1.63x from run to run.
            # (A 64 KB save writes 17 pages: 1,000 hold 16 or 17.)
            loops = 1000
            samples = measure(
                ctx,
                store,
                lambda data, k=key: conn.execute(UPSERT, (k, data)),
                size,
                key,
                loops=loops,
                repeats=15,
            )
            figures.append(
                _figure(
                    f"3{letter}",
                    f"persisted save(), {label}, SQLite vs sqlite3 upsert",
                    1.5,
                    samples,
                    "store.update() (fenced UPDATE)",
                )
            )
    finally:
        store.close()
        conn.close()
    return figures


def run_redis(ctx: Context) -> list[Figure]:
    ctx.log("2: persisted save() on Redis vs SET")
    return redis_saves(ctx)


def run_sqlite(ctx: Context) -> list[Figure]:
    ctx.log("3: persisted save() on SQLite vs upsert")
    return sqlite_saves(ctx)
