"""Checkpoint metadata as Celery task events, for Flower and other monitors.

A ``task-checkpoint`` event goes out after each persisted save (never on a
skipped one, so the throttle bounds the event rate). Flower turns it into the
task state ``CHECKPOINT`` and merges its ``checkpoint_*`` fields into the
task; :mod:`celery_checkpoint.flower` makes Flower render them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .runtime import identity

if TYPE_CHECKING:
    from .checkpointer import Checkpointer

logger = logging.getLogger(__name__)

EVENT_TYPE = "task-checkpoint"


def events_wanted(setting: bool | None) -> bool:
    """``None`` (the default) follows the worker's ``-E`` / ``worker_send_task_events``."""
    return identity.task_events if setting is None else setting


def persist_hook(task: Any, setting: bool | None) -> Callable[[Checkpointer], None] | None:
    """What a run calls after each persisted save: the event, or ``None`` when none is wanted.

    Decided when the run starts, from the worker's ``-E`` as it was when the
    worker started, so a run that sends no events makes no call per save.
    """
    if not events_wanted(setting):
        return None
    return functools.partial(send_checkpoint_event, task)


def send_checkpoint_event(task: Any, handle: Checkpointer) -> None:
    try:
        task.send_event(EVENT_TYPE, retry=False, **handle.metadata())
    except Exception:  # monitoring must never fail a task
        logger.debug("task %s: checkpoint event not sent", handle.task_id, exc_info=True)
