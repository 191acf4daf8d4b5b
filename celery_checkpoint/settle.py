"""Settling a finished run's checkpoint after the store failed to answer.

By the time a checkpoint is settled (deleted on success, kept on retry) the
task's outcome is already stored, so a store blip (or a soft time limit that
cut the store call short) must not fail the task and must not leave a
finished task's checkpoint behind to be resumed. The
settlement is retried in a daemon thread until the store answers. If the
process dies first, the resume scan is the safety net: it removes the
checkpoint of a task whose result is already final instead of resuming it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import CheckpointError, CheckpointStoreError

logger = logging.getLogger(__name__)

#: Seconds between the background retries of a failed settlement (doubling, capped).
SETTLE_RETRY_DELAYS = (0.5, 1, 2, 4, 8, *([15] * 40))


def settle_in_background(task_id: str, settle: Callable[[], object]) -> None:
    """Call ``settle`` in a daemon thread until it stops raising ``CheckpointStoreError``."""

    def retry() -> None:
        for delay in SETTLE_RETRY_DELAYS:
            time.sleep(delay)
            try:
                settle()
            except CheckpointStoreError:
                continue
            except CheckpointError:
                break
            logger.info("task %s: checkpoint settled after a store failure", task_id)
            return
        logger.error("task %s: gave up settling its checkpoint; the resume scan will", task_id)

    threading.Thread(target=retry, name=f"checkpoint-settle-{task_id}", daemon=True).start()
