"""What the commands print: the ``list`` table, ``show``'s detail, and their JSON forms."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from ..errors import CorruptCheckpoint
from ..record import CheckpointRecord, EncodedState, decode, iso_utc
from .states import Entry

PREVIEW_BYTES = 120

#: The keys of every object ``list --json`` prints, in order. With several
#: stores every object (and ``show --json``'s) also has ``store``, last.
JSON_FIELDS = (
    "task_id",
    "task_name",
    "state",
    "status",
    "owner",
    "owner_id",
    "progress",
    "saves",
    "resume_count",
    "saved_at",
    "saved_at_iso",
    "created_at",
    "resend_at",
    "resends",
    "size",
    "reason",
    "key",
)

HEADER = ("TASK ID", "NAME", "STATE", "OWNER", "PROGRESS", "SAVES", "RESUMES", "LAST SAVED", "SIZE")


def as_dict(entry: Entry) -> dict[str, Any]:
    """One JSON object; every entry has the same keys (``None`` where unknown)."""
    values: dict[str, Any] = {"task_id": entry.task_id, "state": entry.state, "key": None, "reason": None}
    if entry.record is None:
        values.update(key=entry.key, reason=entry.reason)
    else:
        values.update(
            entry.record.metadata(),
            owner_id=entry.record.owner,
            saved_at_iso=iso_utc(entry.record.saved_at),
            resend_at=entry.record.resend_at,
            resends=entry.record.resends,
        )
    return {name: values.get(name) for name in JSON_FIELDS}


def dumps(value: Any) -> str:
    return json.dumps(_printable(value), indent=2, default=_json_default, sort_keys=False, allow_nan=False)


def _printable(value: Any) -> Any:
    """``value`` with what JSON cannot hold spelled out, so ``--json`` prints valid JSON.

    A state may hold NaN and infinities (kombu's JSON writes them as the
    non-standard ``NaN``/``Infinity``, which jq and JavaScript refuse), and a
    pickled one keys JSON has no form for (a tuple: json.dumps raised, and
    ``show`` died on the very entry it is for). They are printed as their repr.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {_printable_key(key): _printable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(item) for item in value]
    return value


def _printable_key(key: Any) -> Any:
    return key if isinstance(key, (str, int)) or key is None else repr(key)


def _json_default(value: Any) -> Any:
    """States may hold what kombu's JSON round-trips (datetime, UUID, Decimal) or bytes."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return repr(value)
    return str(value)


def _age(timestamp: float, now: float) -> str:
    seconds = max(0, int(now - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _percent(progress: float | None) -> str:
    return "-" if progress is None else f"{progress * 100:.0f}%"


# -- list ----------------------------------------------------------------------


def render_list(entries: list[Entry], now: float, stores: list[str] | None = None) -> str:
    """The table; ``stores`` (one per entry, when there are several) adds a STORE column."""
    if stores is None:
        rows = [HEADER, *(_row(entry, now) for entry in entries)]
        places = [""] * len(entries)
    else:
        rows = [
            (*HEADER, "STORE"),
            *([*_row(entry, now), store] for entry, store in zip(entries, stores, strict=True)),
        ]
        places = [f" in {store}" for store in stores]
    text = _table(rows)
    corrupt = [(entry, place) for entry, place in zip(entries, places, strict=True) if entry.record is None]
    if corrupt:
        text += "\n\nCorrupt entries (kept for inspection; `purge --state corrupt` removes them):"
        text += "".join(f"\n  {entry.key}{place}: {entry.reason}" for entry, place in corrupt)
    return text


def _row(entry: Entry, now: float) -> list[str]:
    record = entry.record
    if record is None:
        return [entry.task_id or entry.key, "-", "corrupt", "-", "-", "-", "-", "-", "-"]
    return [
        record.task_id,
        record.task_name,
        entry.state,
        record.owner_host or "-",
        _percent(record.progress),
        str(record.saves),
        str(record.resume_count),
        _age(record.saved_at, now),
        str(len(record.state.payload)),
    ]


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


# -- show ----------------------------------------------------------------------


def decoded_parts(record: CheckpointRecord, accept: frozenset[str]) -> dict[str, Any]:
    saved, saved_error = _try_decode(record.state, accept, record.task_id)
    call, call_error = _try_decode(record.envelope, accept, record.task_id)
    return {"saved_state": saved, "saved_state_error": saved_error, "call": call, "call_error": call_error}


def _try_decode(
    encoded: EncodedState, accept: frozenset[str], task_id: str
) -> tuple[Any, dict[str, Any] | None]:
    try:
        return decode(encoded, accept, task_id=task_id), None
    except CorruptCheckpoint as exc:
        preview = repr(encoded.payload[:PREVIEW_BYTES]) + (
            "..." if len(encoded.payload) > PREVIEW_BYTES else ""
        )
        return None, {
            "error": str(exc),
            "content_type": encoded.content_type,
            "content_encoding": encoded.content_encoding,
            "bytes": len(encoded.payload),
            "preview": preview,
        }


def render_detail(detail: dict[str, Any]) -> str:
    store = detail.get("store")  # set when there are several stores
    if detail["state"] == "corrupt":
        name = detail["task_id"] or detail["key"]
        where = f"\n  store:  {store}" if store else ""
        return f"Checkpoint {name}{where}\n  state:  corrupt\n  reason: {detail['reason']}"
    fields = [
        *([("store", store)] if store else []),
        ("task", detail["task_name"]),
        ("state", f"{detail['state']} (status {detail['status']})"),
        ("owner", f"{detail['owner'] or '-'} ({detail['owner_id'] or 'no owner'})"),
        ("saves", detail["saves"]),
        ("resume count", detail["resume_count"]),
        ("progress", _percent(detail["progress"])),
        ("last saved", f"{detail['saved_at_iso']} ({_age(detail['saved_at'], time.time())})"),
        ("created", iso_utc(detail["created_at"])),
        ("size", f"{detail['size']} bytes"),
    ]
    if detail.get("resend_at") is not None:
        # a waiting checkpoint: when a worker gives up on its retry message
        fields.append(("sent again", f"{iso_utc(detail['resend_at'])} if its retry has not started"))
    if detail.get("resends"):
        # re-enqueued, and no run has started since: is any worker reading its queue?
        fields.append(("re-sent", f"{detail['resends']} times, no run started since"))
    lines = [f"Checkpoint {detail['task_id']}", *(f"  {name + ':':<14}{value}" for name, value in fields)]
    lines += ["Call (args, kwargs, options):", *_indented(detail["call"], detail["call_error"])]
    lines += ["Saved state:", *_indented(detail["saved_state"], detail["saved_state_error"])]
    return "\n".join(lines)


def _indented(value: Any, error: dict[str, Any] | None) -> list[str]:
    if error is not None:
        return [
            f"  cannot be decoded: {error['error']}",
            f"  {error['bytes']} bytes of {error['content_type']!r}: {error['preview']}",
        ]
    return ["  " + line for line in dumps(value).splitlines()]
