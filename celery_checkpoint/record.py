"""The checkpoint record, and how a state becomes bytes and back.

Encoding goes through kombu's serializer registry, the same one Celery uses
for messages, so ``json`` (the default, with kombu's round-tripping of
datetimes, UUIDs and decimals) and any serializer the user registered with
kombu work unchanged. ``pickle`` is accepted only when the user opts in.
"""

from __future__ import annotations

import datetime
import enum
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from kombu.exceptions import ContentDisallowed, DecodeError, EncodeError
from kombu.serialization import dumps, loads, prepare_accept_content

from . import fastjson
from .errors import CheckpointSerializationError, CheckpointStateTooLarge, CorruptCheckpoint

logger = logging.getLogger(__name__)

UNSAFE_SERIALIZERS = frozenset({"pickle", "yaml"})


class Status(str, enum.Enum):
    """Where a checkpoint is in its life.

    ``running``: a run owns it; its worker's lease says whether that run is
    alive. ``queued``: a scan claimed it and re-enqueued the task. ``waiting``:
    the task asked Celery to retry it; the retry message is in the broker.
    ``released``: a run stopped at a checkpoint on shutdown and handed it off.
    ``poisoned``: it was resumed ``checkpoint_max_resumes`` times and is kept
    for inspection only.
    """

    RUNNING = "running"
    QUEUED = "queued"
    WAITING = "waiting"
    RELEASED = "released"
    POISONED = "poisoned"


class EncodedState(NamedTuple):
    """A state as stored: its bytes and how to read them back.

    A named tuple rather than a frozen dataclass: one is built per persisted
    save, and it is half the cost (~0.4 us).
    """

    payload: bytes
    content_type: str
    content_encoding: str


@dataclass(frozen=True)
class CheckpointRecord:
    """Everything the store keeps about one task's checkpoint."""

    task_id: str
    task_name: str
    status: Status
    owner: str
    pid: int
    fence: int
    saves: int
    resume_count: int
    progress: float | None
    saved_at: float
    created_at: float
    state: EncodedState
    envelope: EncodedState = field(repr=False)
    #: ``waiting`` only: when a worker's scan sends the call again if the
    #: retry has not started by then (its message was lost); ``None``: never.
    resend_at: float | None = None
    #: Times the scan sent the call again because no run had started it since
    #: the last send; each doubles the wait before the next. A run resets it.
    resends: int = 0

    @property
    def owner_host(self) -> str:
        """The worker's node name, without the per-start incarnation suffix."""
        return worker_host(self.owner)

    def metadata(self) -> dict[str, Any]:
        """The fields shown by Flower and the CLI (no state, no args)."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "status": self.status.value,
            "owner": self.owner_host,
            "saves": self.saves,
            "resume_count": self.resume_count,
            "progress": self.progress,
            "saved_at": self.saved_at,
            "created_at": self.created_at,
            "size": len(self.state.payload),
        }


@dataclass(frozen=True)
class NewCheckpoint:
    """What the first persisted save of a run writes."""

    task_name: str
    owner: str
    pid: int
    state: EncodedState
    envelope: EncodedState
    progress: float | None
    saved_at: float
    #: The fence the record starts at. A run picks a random one (see
    #: :func:`~celery_checkpoint.ownership.first_fence`): a run whose
    #: checkpoint was deleted under it must not hold the fence of the task
    #: id's next checkpoint.
    fence: int = 1


@dataclass(frozen=True)
class ResumeEnvelope:
    """The task's call as it first ran: enough to send it again as itself."""

    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


WORKER_ID_SEPARATOR = "|"


def worker_id(hostname: str, incarnation: str) -> str:
    """Name one start of one worker: node name plus a random incarnation."""
    return f"{hostname}{WORKER_ID_SEPARATOR}{incarnation}"


def iso_utc(timestamp: float) -> str:
    """A record's wall-clock time as operators read it (logs, the CLI)."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def worker_host(owner: str) -> str:
    return owner.rsplit(WORKER_ID_SEPARATOR, 1)[0]


JSON = "json"
JSON_CONTENT_TYPE = "application/json"


#: What to do about a state that will not serialize.
STATE_HINT = (
    "Save only {serializer}-serializable values "
    "(dict, list, str, int, float, bool, None; datetime/UUID/Decimal with json)."
)
#: What to do about a call that will not serialize: the body saved nothing wrong.
CALL_HINT = (
    "The first save records the task's args and kwargs with checkpoint_serializer, "
    "to send the task again after a crash: pass {serializer}-serializable arguments, or set "
    "checkpoint_serializer to one that carries them (pickle, say, an opt-in)."
)


def encode(
    value: Any, serializer: str, *, what: str, task_id: str, limit: int, hint: str = STATE_HINT
) -> EncodedState:
    """Serialize ``value``; the error names the task, the offending type and what to do.

    JSON takes orjson's fast path when it yields what kombu would decode
    to the same value (see :mod:`.fastjson`); everything else goes through
    kombu's registry exactly as a Celery message would.
    """
    if serializer == JSON:
        fast = fastjson.dumps(value)
        if fast is not None:
            if len(fast) > limit:
                _too_large(len(fast), what, task_id, limit)
            # The named tuple's own constructor is a Python call (~0.1 us more a save).
            return _new_tuple(EncodedState, (fast, JSON_CONTENT_TYPE, "utf-8"))
    try:
        content_type, content_encoding, payload = dumps(value, serializer=serializer)
    except (EncodeError, TypeError, ValueError) as exc:
        raise CheckpointSerializationError(
            f"task {task_id}: the checkpoint {what} cannot be serialized with "
            f"{serializer!r}: {exc}. {hint.format(serializer=serializer)}"
        ) from exc
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    return _sized(EncodedState(data, content_type, content_encoding), what, task_id, limit)


_new_tuple = tuple.__new__


def _sized(encoded: EncodedState, what: str, task_id: str, limit: int) -> EncodedState:
    if len(encoded.payload) > limit:
        _too_large(len(encoded.payload), what, task_id, limit)
    return encoded


def _too_large(size: int, what: str, task_id: str, limit: int) -> NoReturn:
    raise CheckpointStateTooLarge(
        f"task {task_id}: the checkpoint {what} is {size} bytes, over "
        f"checkpoint_max_state_bytes={limit}; nothing was saved"
    )


def decode(encoded: EncodedState, accept: frozenset[str], *, task_id: str) -> Any:
    """Deserialize, refusing content types the app did not accept.

    Checked here as well as by kombu, which trusts no content type at all,
    and ``application/data``, as raw: it returns such a payload undecoded,
    so an entry written without one (by hand, by another program) reached
    the body as a ``str`` or ``bytes``, and the failure that followed
    deleted the evidence instead of keeping it ``poisoned``.
    """
    if encoded.content_type not in accept:
        raise CorruptCheckpoint(_not_accepted(encoded, accept, task_id))
    try:
        return loads(
            encoded.payload,
            encoded.content_type,
            encoded.content_encoding,
            accept=accept,
        )
    except ContentDisallowed as exc:
        raise CorruptCheckpoint(_not_accepted(encoded, accept, task_id)) from exc
    except (DecodeError, ValueError, TypeError, UnicodeDecodeError, EOFError) as exc:
        raise CorruptCheckpoint(f"task {task_id}: checkpoint cannot be decoded: {exc}") from exc


def _not_accepted(encoded: EncodedState, accept: frozenset[str], task_id: str) -> str:
    return (
        f"task {task_id}: checkpoint is stored as {encoded.content_type!r}, which "
        f"is not accepted here ({sorted(accept)}); set checkpoint_serializer to opt in"
    )


@functools.cache
def accepted_content_types(serializer: str) -> frozenset[str]:
    """JSON is always readable; the configured serializer is added to it."""
    return frozenset(prepare_accept_content({"json", serializer}))


def warn_if_unsafe(serializer: str) -> None:
    if serializer in UNSAFE_SERIALIZERS:
        logger.warning(
            "checkpoint_serializer=%r: checkpoints will be loaded with %s, which can "
            "run arbitrary code from whoever can write to the checkpoint store. "
            "Use it only with a store you trust.",
            serializer,
            serializer,
        )
