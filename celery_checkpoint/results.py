"""Which interrupted tasks already have their final result: one read per result backend.

A task can finish while its checkpoint outlives it (the store was down when
the run tried to delete it). The resume scan asks the result backend before
it sends such a task again. Asked one task at a time, a scan of 1,000
interrupted tasks with a Redis result backend made 1,000 round trips (a
quarter more time in all, BENCHMARKS.md figure 7d), and a backend that
stopped answering cost each of them its timeout (``redis_socket_timeout``,
120 s by default). A key-value backend (Redis, memcached, the in-memory
cache) answers a whole batch in one ``mget``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from celery.backends.base import DisabledBackend
from celery.states import READY_STATES

logger = logging.getLogger(__name__)


def finished(tasks: Iterable[tuple[Any, str]]) -> set[str]:
    """The ids among ``(task, task_id)`` pairs whose backend holds SUCCESS, FAILURE or REVOKED.

    A backend that cannot answer (none configured, or down) finishes none:
    the checkpoint alone decides, as it would with no backend at all.
    """
    by_backend: dict[int, tuple[Any, list[tuple[Any, str]]]] = {}
    for task, task_id in tasks:
        backend = task.backend
        by_backend.setdefault(id(backend), (backend, []))[1].append((task, task_id))
    done: set[str] = set()
    for backend, pairs in by_backend.values():
        if isinstance(backend, DisabledBackend):
            continue
        try:
            done.update(_read(backend, pairs))
        except Exception as exc:
            logger.warning(
                "the result backend could not say whether %d interrupted tasks already finished; "
                "their checkpoints decide: %s: %s",
                len(pairs),
                type(exc).__name__,
                exc,
            )
    return done


def _read(backend: Any, pairs: Sequence[tuple[Any, str]]) -> list[str]:
    try:
        keys = [backend.get_key_for_task(task_id) for _, task_id in pairs]
        values = backend.mget(keys)
    except (AttributeError, NotImplementedError):  # not a key-value backend: one question per task
        return [task_id for task, task_id in pairs if task.AsyncResult(task_id).state in READY_STATES]
    if hasattr(values, "get"):  # memcached-style clients answer with a mapping
        values = [values.get(key) for key in keys]
    return [task_id for (_, task_id), value in zip(pairs, values, strict=True) if _is_final(backend, value)]


def _is_final(backend: Any, value: Any) -> bool:
    if not value:
        return False
    try:
        return backend.decode_result(value)["status"] in READY_STATES
    except Exception:  # not a result this backend wrote: not a reason to skip a resume
        return False
