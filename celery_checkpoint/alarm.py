"""Reopening throttle windows from one thread, so a skipped ``save()`` reads no clock.

A throttled ``save()`` has to find out whether its window is over. Reading
``time.monotonic()`` for that costs ~40 ns in a tight loop, but in a real loop
body, after tens of microseconds of other work, the read and the comparison
cost ~0.5-1 us (figure 6 of BENCHMARKS.md): a fifth of what a 1.02x budget
leaves a 50 us iteration. So a body that keeps saving inside a window is told
when the window ends instead: the first skipped call arms an alarm for the
window's end, every further skipped call reads one attribute, and this
process's alarm thread clears it at the deadline.

A window shorter than :data:`MIN_WINDOW` is not worth a thread's wake-up and
keeps the clock read. So does every window in a process whose ``threading``
gevent or eventlet patched (``-P gevent``, ``-P eventlet``): the alarm's thread
would be a greenlet, run only when the body yields, and a CPU-bound body that
saves in a loop never does: its window would never reopen.

A task that saves once and ends never skips a save, so it never arms one:
short tasks cost the alarm nothing. Short tasks that do skip one leave an
entry whose run has ended; those are dropped, oldest
first, whenever the alarm is armed or wakes, and arming never wakes the
thread for a deadline later than the one it already sleeps until. So a
stream of them costs about one wake-up per window, not one per task, and
the heap holds the live runs, not every run of the last window: ended runs
queued behind a live run's earlier window (a long task's 60 s throttle, short
tasks' 300 s) are swept out whenever the heap has doubled since the last sweep.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import sys
import threading
import time
import weakref
from typing import Protocol

#: Windows shorter than this (seconds) are checked with the clock on every call.
MIN_WINDOW = 0.1

#: The longest timed wait a lock accepts (~292 years on Linux); a longer one
#: raises ``OverflowError``. A throttle meant as "never" (``1e10``) arms a
#: deadline past it: the thread sleeps this long and looks again.
_LONGEST_WAIT = threading.TIMEOUT_MAX

#: The heap is never swept below this size (a sweep then costs nothing worth saving).
_SWEEP_FLOOR = 64


class Reopenable(Protocol):
    def window_over(self) -> None: ...


def _green_threads() -> bool:
    """Whether gevent or eventlet patched ``threading``: a new thread would be a greenlet."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("threading"):
        return True
    eventlet = sys.modules.get("eventlet.patcher")
    return eventlet is not None and bool(eventlet.is_monkey_patched("thread"))


class Alarm:
    """A heap of (deadline, target) served by one daemon thread, started on first use."""

    #: False once the alarm found it cannot run beside the body (green threads): nothing is armed.
    serves = True

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, weakref.ref[Reopenable]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        #: The deadline the thread sleeps until (``inf``: until something is armed).
        self._waking_at = math.inf
        #: How many times the thread has woken up.
        self.wakeups = 0
        #: The heap size at which ended runs are swept out of it (twice the live ones).
        self._sweep_at = _SWEEP_FLOOR
        #: The window the thread has taken off the heap and is reopening.
        self._firing: weakref.ref[Reopenable] | None = None

    @property
    def pending(self) -> int:
        """Windows held, including those of ended runs not dropped yet."""
        return len(self._heap)

    def at(self, deadline: float, target: Reopenable) -> bool:
        """Call ``target.window_over()`` once ``time.monotonic()`` has reached ``deadline``.

        Returns ``False``, arming nothing, when no thread can do that beside
        the body (see :func:`_green_threads`, checked when the first thread
        would start): the caller keeps reading the clock.
        """
        with self._cond:
            if self._thread is None and _green_threads():
                self.serves = False
                return False
            self._drop_ended()
            heapq.heappush(self._heap, (deadline, next(self._order), weakref.ref(target)))
            if len(self._heap) > self._sweep_at:
                self._sweep()
            if self._thread is None or not self._thread.is_alive():  # first use, or it died
                self._thread = threading.Thread(target=self._run, name="checkpoint-throttle", daemon=True)
                self._thread.start()
            elif deadline < self._waking_at:
                self._cond.notify()
        return True

    def _drop_ended(self) -> None:
        """Forget the earliest windows while their runs have ended (the target is gone)."""
        heap = self._heap
        while heap and heap[0][2]() is None:
            heapq.heappop(heap)

    def _sweep(self) -> None:
        """Forget the windows of every ended run, wherever it sits in the heap.

        ``_drop_ended`` stops at the first live run: behind its window every
        later one stays, ended or not. Sweeping once the heap has doubled
        costs O(1) per arming, amortised.
        """
        self._heap = [entry for entry in self._heap if entry[2]() is not None]
        heapq.heapify(self._heap)
        self._sweep_at = max(_SWEEP_FLOOR, 2 * len(self._heap))

    def _run(self) -> None:
        while True:
            with self._cond:
                self._drop_ended()
                deadline = self._heap[0][0] if self._heap else math.inf
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._waking_at = deadline
                    self._cond.wait(None if deadline == math.inf else min(delay, _LONGEST_WAIT))
                    self.wakeups += 1
                    continue
                self._firing = heapq.heappop(self._heap)[2]
                target = self._firing()
            if target is not None:
                target.window_over()
            self._firing = None

    def _forget_after_fork(self) -> None:
        # The thread does not survive a fork: the child reopens every window
        # it held (an early reopening only costs a clock read), the one the
        # thread was reopening included, and starts its own thread when it
        # next arms one.
        held, self._heap = self._heap, []
        if self._firing is not None:
            held.append((0.0, 0, self._firing))
            self._firing = None
        self._sweep_at = _SWEEP_FLOOR
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self._waking_at = math.inf
        for _, _, ref in held:
            target = ref()
            if target is not None:
                target.window_over()


alarm = Alarm()
os.register_at_fork(after_in_child=alarm._forget_after_fork)
