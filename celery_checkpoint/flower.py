"""Show checkpoint progress in Flower 2.x.

Flower builds its task view from Celery's events. It already receives the
``task-checkpoint`` event (see :mod:`celery_checkpoint.events`): it turns it
into the task state ``CHECKPOINT`` and keeps the ``checkpoint_*`` fields on
its task object. It does not show them, because its API and its task page
list only ``celery.events.state.Task._fields``. :func:`install` adds the
checkpoint fields there (with a class default of ``None``, so tasks without
a checkpoint still serialize), and plugs :func:`format_task` into Flower's
``format_task`` option so the page and the task list read well.

Call it once in the process that runs Flower, from ``flowerconfig.py``::

    import celery_checkpoint.flower

    celery_checkpoint.flower.install()

or from the app module that ``celery -A app flower`` imports (harmless in
workers and clients: there it only adds the fields to an event-state class
they do not use). See ``docs/flower.md``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import click

logger = logging.getLogger(__name__)

#: The fields of the ``task-checkpoint`` event, in the order Flower shows them.
CHECKPOINT_FIELDS: tuple[str, ...] = (
    "checkpoint_progress",
    "checkpoint_saves",
    "checkpoint_saved_at",
    "checkpoint_resume_count",
    "checkpoint_owner",
)

#: The state Celery's event state (and so Flower) gives a task after its
#: first ``task-checkpoint`` event, until it succeeds or fails.
CHECKPOINT_STATE = "CHECKPOINT"

#: Flower major versions whose task page and API are known to list ``Task._fields``.
SUPPORTED_FLOWER_MAJOR = 2

_lock = threading.Lock()


def install(*, formatter: bool = True) -> bool:
    """Make Flower show the checkpoint fields of its tasks; safe to call again.

    Returns ``True`` when Celery's event state (``celery.events.state.Task``)
    now carries the fields, which is what Flower reads; also without Flower
    in this process, where a monitor built on Celery's event state gets them.
    With an unsupported Flower or an event-state ``Task`` class of another
    shape, it logs a warning, changes nothing and returns ``False``: Flower
    then shows the ``CHECKPOINT`` state only.

    ``formatter``: inside Flower, also set Flower's ``format_task`` option to
    :func:`format_task`, unless another formatter is configured already.
    """
    version = _flower_version()
    if version is not None and _major(version) != SUPPORTED_FLOWER_MAJOR:
        logger.warning(
            "celery_checkpoint.flower supports Flower %d.x, not %s: checkpoint fields are not shown "
            "(running tasks still show the %s state)",
            SUPPORTED_FLOWER_MAJOR,
            version,
            CHECKPOINT_STATE,
        )
        return False
    if not _add_fields():
        return False
    if formatter and version is not None and _inside_flower():
        _plug_formatter()
    return True


def format_task(task: Any) -> Any:
    """Flower's ``format_task`` hook: checkpoint fields in readable form.

    Flower calls it with a copy of each task it renders on the task page and
    in the task list (never for its REST API, which keeps the raw values):

    * a running task's state ``CHECKPOINT`` becomes ``CHECKPOINT 42%``, and
      ``CHECKPOINT 42% · resumed 1x`` once the task was resumed;
    * a revoked one's becomes ``REVOKED`` (see :func:`_state_label`);
    * ``checkpoint_progress`` becomes a percentage;
    * ``checkpoint_saved_at`` becomes a time like Flower's own.

    Call it from your own formatter if you have one.
    """
    progress = getattr(task, "checkpoint_progress", None)
    resumes = getattr(task, "checkpoint_resume_count", None)
    saved_at = getattr(task, "checkpoint_saved_at", None)
    percent = _percent(progress)
    if getattr(task, "state", None) == CHECKPOINT_STATE:
        task.state = _state_label(task, percent, resumes)
    if percent is not None:
        task.checkpoint_progress = percent
    if isinstance(saved_at, (int, float)):
        task.checkpoint_saved_at = _format_time(float(saved_at))
    return task


# -- the parts --------------------------------------------------------------


def _add_fields() -> bool:
    from celery.events import state

    task_class = getattr(state, "Task", None)
    fields = getattr(task_class, "_fields", None)
    if task_class is None or not isinstance(fields, tuple) or not all(isinstance(f, str) for f in fields):
        logger.warning(
            "celery_checkpoint.flower: celery.events.state.Task has no _fields tuple in this Celery "
            "version: checkpoint fields are not shown (running tasks still show the %s state)",
            CHECKPOINT_STATE,
        )
        return False
    with _lock:
        # Defaults first: a task that never had a checkpoint event must still
        # serialize once its fields list names them.
        for name in CHECKPOINT_FIELDS:
            if not hasattr(task_class, name):
                setattr(task_class, name, None)
        fields = task_class._fields
        missing = tuple(name for name in CHECKPOINT_FIELDS if name not in fields)
        if missing:
            task_class._fields = fields + missing
    return True


def _plug_formatter() -> None:
    try:
        from flower.options import options
    except ImportError:  # pragma: no cover - Flower 2.x has this module
        return
    current = options.format_task
    if current is None:
        options.format_task = format_task
    elif current is not format_task:
        logger.info(
            "Flower has its own format_task: call celery_checkpoint.flower.format_task(task) "
            "from it for readable checkpoint fields"
        )


def _flower_version() -> str | None:
    try:
        return importlib.metadata.version("flower")
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get("flower")
        version = getattr(module, "__version__", None)
        return version if isinstance(version, str) else None


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _inside_flower() -> bool:
    """True in ``celery ... flower``: while its app is imported or its config file runs.

    ``'flower' in sys.modules`` says nothing: Celery imports Flower's command
    (an entry point) in every ``celery`` process, workers included.
    """
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.info_name == "flower" or ctx.invoked_subcommand == "flower":
            return True
        ctx = ctx.parent
    return False


def _state_label(task: Any, percent: str | None, resumes: object) -> str:
    """What the page and the list show for a task in the ``CHECKPOINT`` state.

    Celery's event state ranks any custom state above ``REVOKED``, so a task
    revoked after its first checkpoint (``revoke(terminate=True)``, the way
    docs/flower.md says to stop one) keeps ``CHECKPOINT`` and would be shown
    running forever. Its ``revoked`` time is set all the same: that wins.
    """
    if getattr(task, "revoked", None) is not None:
        return "REVOKED"
    label = CHECKPOINT_STATE if percent is None else f"{CHECKPOINT_STATE} {percent}"
    if isinstance(resumes, int) and resumes > 0:
        label += f" · resumed {resumes}x"
    return label


def _percent(progress: object) -> str | None:
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or math.isnan(progress):
        return None
    return f"{math.floor(min(max(progress, 0.0), 1.0) * 100)}%"


def _format_time(timestamp: float) -> str:
    try:
        from flower.utils.template import humanize

        text = humanize(timestamp, type="time")
        if isinstance(text, str) and text:
            return text
    except Exception:  # Flower's helper moved or failed: fall back to UTC
        pass
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
