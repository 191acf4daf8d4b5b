"""What a process knows about the worker it belongs to.

The worker's main process fills this in at start-up (``celeryd_init``),
before the pool forks, so every pool child inherits the same worker id and
event setting without a round trip.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from .record import worker_id


@dataclass
class WorkerIdentity:
    hostname: str = ""
    worker_id: str = ""
    task_events: bool = False


identity = WorkerIdentity()


def start_worker_identity(hostname: str) -> WorkerIdentity:
    """A new incarnation id for this start of the worker named ``hostname``."""
    identity.hostname = hostname
    identity.worker_id = worker_id(hostname, uuid.uuid4().hex[:12])
    return identity


def current_worker_id(hostname: str | None) -> str:
    """This process's owner id; outside a real worker, one per process."""
    if identity.worker_id:
        return identity.worker_id
    return worker_id(hostname or socket.gethostname(), f"pid{os.getpid()}")


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


class RunsInProcess:
    """The checkpointed runs of this process: duplicate checks and shutdown.

    Counting task ids catches a duplicate running in another thread (threads
    pool); keeping the handles lets a shutdown ask every run to stop at its
    next checkpoint.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: Counter[str] = Counter()
        self._handles: set[Stoppable] = set()
        #: Set by the first shutdown request: the worker does not take it back.
        self._stopping = False

    def enter(self, task_id: str, handle: Stoppable) -> None:
        """Count a run that starts; once a shutdown was requested, ask it to stop at once.

        A run the pool starts just after the request (a ``threads`` pool
        thread freed by a handoff takes the next queued task; a ``solo`` or
        ``threads`` run still between its start and its checkpointer) is not
        among the handles the request reached: it would run to its end, and
        a warm shutdown would wait for all of it.
        """
        with self._lock:
            self._runs[task_id] += 1
            self._handles.add(handle)
        if self._stopping:  # read after the add: a request either saw the handle or is seen here
            handle.request_stop()

    def leave(self, task_id: str, handle: Stoppable) -> None:
        with self._lock:
            self._runs[task_id] -= 1
            if self._runs[task_id] <= 0:
                del self._runs[task_id]
            self._handles.discard(handle)

    @property
    def stopping(self) -> bool:
        """Whether a shutdown has asked this process's runs to stop."""
        return self._stopping

    def count(self, task_id: str) -> int:
        with self._lock:
            return self._runs[task_id]

    def request_stop(self) -> int:
        """Ask every run of this process to stop at its next save.

        Safe in a signal handler: it takes no lock (a copy of the set is
        read as it is) and each request only sets attributes. Runs that
        start later are asked as they start (:meth:`enter`).
        """
        self._stopping = True  # before the copy: see enter()
        handles = list(self._handles)
        for handle in handles:
            handle.request_stop()
        return len(handles)


runs_in_process = RunsInProcess()
