"""The task's call, recorded at its first save so it can be sent again as itself.

It is built with Celery's own ``Task.signature_from_request`` (what
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


def envelope_from_request(task: Any, request: Any) -> dict[str, Any]:
    kwargs = {k: v for k, v in (request.kwargs or {}).items() if k != "checkpoint"}
    args = list(request.args or ())
    signature = task.signature_from_request(request, args, kwargs)
    options = {k: v for k, v in signature.options.items() if v is not None and k not in _DELIVERY_ONLY}
    options["task_id"] = request.id
    headers = options.get("headers")
    if headers and any(name in headers for name in _NOT_RECORDED):
        options["headers"] = {k: v for k, v in headers.items() if k not in _NOT_RECORDED}
    return {"args": args, "kwargs": kwargs, "options": options}


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
