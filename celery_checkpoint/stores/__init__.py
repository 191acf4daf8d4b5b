"""Checkpoint stores, chosen by the scheme of ``checkpoint_store_url``.

Like Celery's result backends, a scheme maps to a class path through an alias
table, and third-party stores can register under the
``celery_checkpoint.stores`` entry-point group.
"""

from __future__ import annotations

import os
import threading
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from kombu.utils.imports import symbol_by_name

from .base import Candidate, CheckpointStore, Claim, ClaimOutcome, CorruptEntry, Peek
from .urls import sqlite_path

__all__ = [
    "Candidate",
    "CheckpointStore",
    "Claim",
    "ClaimOutcome",
    "CorruptEntry",
    "Peek",
    "open_store",
]

ALIASES = {
    "redis": "celery_checkpoint.stores.redis:RedisStore",
    "rediss": "celery_checkpoint.stores.redis:RedisStore",
    "sqlite": "celery_checkpoint.stores.sqlite:SQLiteStore",
    "memory": "celery_checkpoint.stores.memory:MemoryStore",
}

#: What a store from a ``celery_checkpoint.stores`` entry point must provide.
PROTOCOL_METHODS = tuple(
    name for name, value in vars(CheckpointStore).items() if callable(value) and not name.startswith("_")
)

_cache: dict[tuple[int, str, str, float], CheckpointStore] = {}
_cache_lock = threading.Lock()


def store_class(scheme: str) -> Any:
    if scheme in ALIASES:
        return symbol_by_name(ALIASES[scheme])
    for entry in entry_points(group="celery_checkpoint.stores"):
        if entry.name == scheme:
            return entry.load()
    known = sorted({*ALIASES, *(e.name for e in entry_points(group="celery_checkpoint.stores"))})
    raise ValueError(f"checkpoint_store_url: unknown scheme {scheme!r} (known: {', '.join(known)})")


def create_store(url: str, *, prefix: str = "checkpoint:", done_ttl: float = 86400.0) -> CheckpointStore:
    """Build a new store for ``url`` (no caching)."""
    scheme = urlsplit(url).scheme
    cls = store_class(scheme)
    if scheme == "sqlite":
        path = sqlite_path(url)
        if not path:
            raise ValueError("checkpoint_store_url: use sqlite:///relative.db or sqlite:////abs/path.db")
        sqlite_store: CheckpointStore = cls(path, url=url, done_ttl=done_ttl)
        return sqlite_store
    if scheme == "memory":
        memory: CheckpointStore = cls(url=url, done_ttl=done_ttl)
        return memory
    if scheme in ("redis", "rediss"):
        redis_store: CheckpointStore = cls(url, prefix=prefix, done_ttl=done_ttl)
        return redis_store
    other: CheckpointStore = cls(url)
    missing = [name for name in PROTOCOL_METHODS if not callable(getattr(other, name, None))]
    if missing:
        raise TypeError(
            f"checkpoint_store_url: the {scheme!r} store ({cls.__module__}.{cls.__qualname__}) lacks "
            f"{', '.join(missing)}; it was written for another version of celery_checkpoint's store "
            "protocol (celery_checkpoint.stores.base.CheckpointStore)"
        )
    return other


def open_store(url: str, *, prefix: str = "checkpoint:", done_ttl: float = 86400.0) -> CheckpointStore:
    """The store for ``url`` in this process, created once per process.

    A store is never shared across ``fork``: a pool child gets its own
    connections instead of inheriting the main process's (whose locks a
    background thread may have held at the moment of the fork).
    """
    key = (os.getpid(), url, prefix, done_ttl)
    store = _cache.get(key)
    if store is None:
        with _cache_lock:
            store = _cache.get(key)
            if store is None:
                store = _cache[key] = create_store(url, prefix=prefix, done_ttl=done_ttl)
    return store
