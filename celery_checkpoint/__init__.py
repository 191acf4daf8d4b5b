"""Checkpointed Celery tasks that resume where they stopped after a worker dies.

::

    from celery_checkpoint import CheckpointTask

    @app.task(base=CheckpointTask, bind=True)
    def reindex(self, shop_id, checkpoint):
        state = checkpoint.load() or {"next": 0}
        ...
        checkpoint.save(state)
"""

from __future__ import annotations

from . import worker as _worker  # noqa: F401  (connects the worker signals)
from .checkpointer import Checkpointer, NullCheckpointer
from .errors import (
    CheckpointError,
    CheckpointHandoff,
    CheckpointOwnershipLost,
    CheckpointSerializationError,
    CheckpointStateTooLarge,
    CheckpointStoreError,
    CorruptCheckpoint,
    DuplicateRun,
)
from .record import CheckpointRecord, Status
from .resume import CheckpointPoisoned
from .stores import CheckpointStore, create_store, open_store
from .task import CheckpointTask

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointHandoff",
    "CheckpointOwnershipLost",
    "CheckpointPoisoned",
    "CheckpointRecord",
    "CheckpointSerializationError",
    "CheckpointStateTooLarge",
    "CheckpointStore",
    "CheckpointStoreError",
    "CheckpointTask",
    "Checkpointer",
    "CorruptCheckpoint",
    "DuplicateRun",
    "NullCheckpointer",
    "Status",
    "create_store",
    "open_store",
]
