"""Exceptions a checkpointed task, the worker or the CLI can meet.

Every message names the task id and, where a store is involved, the store URL
(with its password removed), because the first thing an operator asks on a
failed save is "which task, which store".
"""

from __future__ import annotations

from celery.exceptions import Ignore


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
