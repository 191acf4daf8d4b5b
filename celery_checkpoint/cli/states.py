"""The state an operator sees for each entry of the store.

A record's status says what its last owner wrote; whether that owner is
still alive is in the leases. The CLI puts the two together, so a run whose
worker died shows as ``interrupted`` even though its record says ``running``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..record import CheckpointRecord, Status
from ..stores import CheckpointStore
from ..stores.base import CorruptEntry

#: Every state ``list --state`` and ``purge --state`` understand.
STATES = ("running", "interrupted", "queued", "waiting", "poisoned", "corrupt")


@dataclass(frozen=True)
class Entry:
    """One checkpoint as the CLI shows it: a readable record, or a corrupt entry and why."""

    key: str  #: the task id, or the store's own key for an entry that names no task
    state: str
    task_id: str | None
    record: CheckpointRecord | None = None
    reason: str = ""


def state_of(record: CheckpointRecord, leases: dict[str, float], now: float) -> str:
    """The operator's view: ``running``/``queued`` only while the owner's lease lives."""
    if record.status is Status.RELEASED:
        return "interrupted"
    if record.status is Status.QUEUED and not record.owner:
        return "queued"  # its message is in the broker; no process owns it
    status = str(record.status.value)
    if record.status in (Status.RUNNING, Status.QUEUED):
        return status if leases.get(record.owner, 0.0) > now else "interrupted"
    return status


def entry_of(
    item: CheckpointRecord | CorruptEntry, leases: dict[str, float], now: float, store: CheckpointStore
) -> Entry:
    if isinstance(item, CorruptEntry):
        return Entry(
            key=item.key, state="corrupt", task_id=_task_id_of_key(store, item.key), reason=item.reason
        )
    return Entry(key=item.task_id, state=state_of(item, leases, now), task_id=item.task_id, record=item)


def _task_id_of_key(store: CheckpointStore, key: str) -> str | None:
    """The task id a corrupt entry's key names, or None for a foreign key.

    Key-value stores (Redis) report the full key; SQLite reports the task id.
    """
    record_key = getattr(store, "record_key", None)
    if record_key is None:
        return key
    prefix = str(record_key(""))
    return key[len(prefix) :] if key.startswith(prefix) else None
