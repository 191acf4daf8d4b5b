"""Exceptions a checkpointed task, the worker or the CLI can meet.

Every message names the task id and, where a store is involved, the store URL
(with its password removed), because the first thing an operator asks on a
failed save is "which task, which store".
"""

from __future__ import annotations

from celery.exceptions import Ignore, Reject


class CheckpointError(Exception):
    """Base class for every error raised by celery-checkpoint."""


class CheckpointStoreError(CheckpointError):
    """The store could not be reached or refused an operation.

    A save that raises this was *not* persisted, and the throttle clock did not
    move: the next ``save()`` tries again.
    """


class CheckpointSerializationError(CheckpointError, TypeError):
    """The state cannot be encoded with the configured serializer."""


class CheckpointStateTooLarge(CheckpointError, ValueError):
    """The encoded state is larger than ``checkpoint_max_state_bytes``."""


class CorruptCheckpoint(CheckpointError):
    """A stored entry cannot be decoded; it is left in place for inspection."""


class CheckpointOwnershipLost(CheckpointError, Ignore):  # type: ignore[misc]
    """Another run of the same task id owns the checkpoint now.

    It subclasses Celery's :class:`~celery.exceptions.Ignore` so that, when it
    escapes the task body, Celery records nothing for this run: the newer run
    owns the task's result. The stale run must stop doing work.
    """


class DuplicateRun(CheckpointOwnershipLost):
    """This delivery is a duplicate of a run that is alive or already done."""


class CheckpointHandoff(CheckpointError, Reject):  # type: ignore[misc]
    """Raised by ``save()`` after it persisted, when the worker is shutting down.

    It subclasses Celery's :class:`~celery.exceptions.Reject` with
    ``requeue=True``: the run ends without a failure or a retry, the message
    goes back to the queue at once, and the next delivery (on another worker,
    or on this node after its restart) resumes from the checkpoint just
    saved. Do not swallow it in the task body.
    """

    def __init__(self, reason: str | None = None, requeue: bool = True) -> None:
        # Reject's signature, so the exception survives the pickling from a
        # pool child to the worker's main process.
        Reject.__init__(self, reason, requeue=True)

    def __str__(self) -> str:
        return str(self.reason)
