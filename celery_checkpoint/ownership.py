"""Who may run a task id: the one rule every store and every run follows.

A delivery of a checkpointed task either takes the checkpoint over or is a
duplicate. It is a duplicate while another run of the same task id is alive:
on another worker whose lease has not expired, or on this worker in another
live pool process, or in another thread of this process. Everything else
(a dead owner, a queued resume, a retry, a handoff) is taken over, and the
takeover bumps the fence so the previous run can no longer write.
"""

from __future__ import annotations

import enum
import os
import random
from dataclasses import dataclass
from typing import Any

from .record import Status
from .stores.base import Peek

#: New checkpoints start at a fence drawn below this: exact as a Lua number
#: (Redis formats numbers with 14 significant digits) with room to count up.
FIRST_FENCE_LIMIT = 2**40


def first_fence() -> int:
    """A random fence for a new checkpoint, never 0 (which no record has).

    Fences only ever count up from it. Were every record to start at 1, a
    run whose checkpoint was deleted under it (``celery checkpoint purge``
    of a live run) would hold the fence of the next checkpoint created for
    its task id, and its next save would overwrite that checkpoint. From a
    random start it is fenced out instead (one chance in 2**40 otherwise).
    """
    return random.randrange(1, FIRST_FENCE_LIMIT)


class Decision(str, enum.Enum):
    TAKE = "take over"
    BUSY = "another run of this task id is alive"
    POISONED = "the checkpoint is poisoned (resumed too many times) and kept for inspection"


@dataclass(frozen=True)
class Handover:
    """What a run that ended by sending its next delivery (``self.retry``) puts in it.

    The fence the run held, or the one a store call would have given it when
    the call failed without an answer (the store may have applied it), and
    the run's owner and process. A checkpoint still at that fence under that
    owner and process belongs to a run that has ended by sending this
    delivery, whatever its process does now.
    """

    fence: int
    owner: str
    pid: int

    def matches(self, peek: Peek) -> bool:
        return peek.fence == self.fence and peek.owner == self.owner and peek.pid == self.pid

    def to_header(self) -> list[Any]:
        return [self.fence, self.owner, self.pid]

    @classmethod
    def from_header(cls, value: Any) -> Handover | None:
        """Read the header back; anything malformed is treated as no handover."""
        if isinstance(value, (list, tuple)) and len(value) == 3:
            fence, owner, pid = value
            if isinstance(fence, int) and isinstance(owner, str) and isinstance(pid, int) and fence > 0:
                return cls(fence, owner, pid)
        return None


def decide(peek: Peek, me: str, pid: int, runs_here: int, handed: Handover | None = None) -> Decision:
    """Decide from one consistent ``peek``; the takeover then fences on it."""
    if peek.status is Status.POISONED:
        return Decision.POISONED
    if peek.status is not Status.RUNNING or (handed is not None and handed.matches(peek)):
        return Decision.TAKE
    if peek.owner != me:
        return Decision.BUSY if peek.owner_alive else Decision.TAKE
    if peek.pid == pid:
        # Same process: busy only if another thread runs this task id now
        # (this run counts itself once).
        return Decision.BUSY if runs_here > 1 else Decision.TAKE
    return Decision.BUSY if pid_alive(peek.pid) else Decision.TAKE


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs (a lost pool child does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
