"""The task's call, recorded so it can be sent again as itself.

Recorded at the first save, and replaced by the retry's call when the task
retries. It is built with Celery's own ``Task.signature_from_request`` (what
``Task.retry`` uses), so the resumed message keeps the task id, root and
parent ids, group and chord membership, chain, link and link_error, time
limits, headers and routing of the delivery that first ran.
"""

from __future__ import annotations

from typing import Any

from .record import ResumeEnvelope

#: Header of a call whose id ``CheckpointTask.apply_async`` minted (its first
#: delivery skips reading the checkpoint); never recorded, so a resumed call reads it.
FRESH_HEADER = "checkpoint_fresh"
#: Header by which a run hands its checkpoint to the run it sent (``self.retry``);
#: meant for that one delivery, so never recorded either.
FENCE_HEADER = "checkpoint_fence"
#: Headers about one delivery that a resumed call must not inherit.
_NOT_RECORDED = (FRESH_HEADER, FENCE_HEADER)
#: Delivery details that describe the old delivery, not where to send the new one.
_DELIVERY_ONLY = ("redelivered", "is_eager")
#: When a retry was due: a call sent again is due at once.
_WHEN = ("countdown", "eta")


def envelope_from_request(task: Any, request: Any) -> dict[str, Any]:
    """The call of the delivery that runs now."""
    args = list(request.args or ())
    signature = task.signature_from_request(request, args, _without_checkpoint(request.kwargs))
    return _envelope(signature, request.id)


def envelope_from_retry(signature: Any, task_id: str) -> dict[str, Any]:
    """The call a ``self.retry()`` just sent (``Retry.sig``), due at once.

    Recorded in place of the first delivery's call when the run parks its
    checkpoint as ``waiting``: if the retry message is lost, or the retried
    run is interrupted, what is sent again is the retry, with its args,
    routing and ``retries`` count.
    """
    return _envelope(signature, task_id, drop=_WHEN)


def _envelope(signature: Any, task_id: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    skip = _DELIVERY_ONLY + drop
    options = {k: v for k, v in signature.options.items() if v is not None and k not in skip}
    options["task_id"] = task_id
    headers = options.get("headers")
    if headers and any(name in headers for name in _NOT_RECORDED):
        options["headers"] = {k: v for k, v in headers.items() if k not in _NOT_RECORDED}
    return {
        "args": list(signature.args or ()),
        "kwargs": _without_checkpoint(signature.kwargs),
        "options": options,
    }


def _without_checkpoint(kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in (kwargs or {}).items() if k != "checkpoint"}


def parse_envelope(value: Any, *, task_id: str) -> ResumeEnvelope:
    """Validate a decoded envelope; a malformed one raises ``ValueError``."""
    if not isinstance(value, dict):
        raise ValueError(f"task {task_id}: recorded call is a {type(value).__name__}, not a mapping")
    args, kwargs, options = value.get("args"), value.get("kwargs"), value.get("options")
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(options, dict):
        raise ValueError(f"task {task_id}: recorded call lacks args/kwargs/options")
    if options.get("task_id") != task_id:
        raise ValueError(f"task {task_id}: recorded call belongs to task {options.get('task_id')!r}")
    return ResumeEnvelope(args=args, kwargs=kwargs, options=options)
