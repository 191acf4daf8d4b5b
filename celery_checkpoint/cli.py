"""``celery -A proj checkpoint ...``: list, show, resume and purge checkpoints.

It is a Celery command plugin (the ``celery.commands`` entry point), so it
loads the user's app from ``-A`` like ``celery inspect`` does, and it finds
the store where the workers find it: ``checkpoint_store_url`` in the app's
settings, unless ``--store URL`` says otherwise.

Scripts can rely on the exit code: 0 done; 1 nothing found, nothing matched,
or refused (a live run, a declined prompt, an entry that cannot be removed);
2 bad usage (click's own); 3 the store (for ``resume`` also the broker) is
unreachable or not configured. Errors are one line on stderr, never a
traceback: an operator's first question is "which store", and the line
names it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import click

from .config import CheckpointConfig
from .errors import CheckpointStoreError, CorruptCheckpoint
from .record import CheckpointRecord, EncodedState, Status, accepted_content_types, decode, worker_id
from .resume import Outcome, Resumer
from .resume import logger as resume_logger
from .stores import CheckpointStore, create_store
from .stores.base import Candidate, CorruptEntry

#: Every state ``list --state`` and ``purge --state`` understand.
STATES = ("running", "interrupted", "queued", "waiting", "poisoned", "corrupt")
EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3
PREVIEW_BYTES = 120

F = TypeVar("F", bound=Callable[..., Any])


class Refused(click.ClickException):
    """Nothing found, nothing matched, or the command declined: exit code 1."""

    exit_code = EXIT_REFUSED


class Unavailable(click.ClickException):
    """The store (or broker) cannot be reached or is not configured: exit code 3."""

    exit_code = EXIT_UNAVAILABLE


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- the store ---------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """The app, its checkpoint settings and an open store, for one command."""

    app: Any
    store: CheckpointStore
    config: CheckpointConfig

    def entries(self) -> list[Entry]:
        """Every entry with its state.

        Leases are read after the scan: an owner seen in the scan registered
        its lease before it wrote, so a live owner is never taken for dead.
        """
        items = list(self.store.scan())
        leases, now = self.store.leases(), time.time()
        return [_entry(item, leases, now, self.store) for item in items]

    def entry(self, task_id: str) -> Entry | None:
        try:
            record = self.store.get(task_id)
        # SQLite's get() lets a malformed row's ValueError/TypeError through
        except (CorruptCheckpoint, ValueError, TypeError) as exc:
            return Entry(key=task_id, task_id=task_id, state="corrupt", reason=str(exc))
        if record is None:
            return None
        return _entry(record, self.store.leases(), time.time(), self.store)

    def accept(self, task_name: str) -> frozenset[str]:
        """The content types the task itself would load (its serializer, plus JSON)."""
        from .task import CheckpointTask

        task = self.app.tasks.get(task_name)
        config = task.checkpoint_config if isinstance(task, CheckpointTask) else self.config
        return accepted_content_types(config.serializer)


@contextmanager
def _session(ctx: click.Context, store_url: str | None) -> Iterator[Session]:
    """Open the store; turn every store failure into a one-line exit 3."""
    app = _app(ctx)
    try:
        config = CheckpointConfig.from_sources(app.conf)
    except ValueError as exc:
        raise Unavailable(f"invalid checkpoint settings: {exc}") from exc
    url = store_url or ctx.meta.get("celery_checkpoint.store_url") or config.store_url
    if not url:
        raise Unavailable(
            "no checkpoint store: set checkpoint_store_url in the app's config or pass --store URL"
        )
    shown = _without_password(url)
    _refuse_missing_sqlite_file(url, shown)
    try:
        store = create_store(url, prefix=config.key_prefix, done_ttl=config.done_ttl)
    except (ValueError, ImportError, CheckpointStoreError) as exc:
        raise Unavailable(_one_line(f"checkpoint store {shown}: {exc}")) from exc
    try:
        yield Session(app, store, config)
    except CheckpointStoreError as exc:
        raise Unavailable(_one_line(str(exc))) from exc
    finally:
        store.close()


def _app(ctx: click.Context) -> Any:
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.UsageError("run it as `celery -A proj checkpoint ...`")
    return app


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _refuse_missing_sqlite_file(url: str, shown: str) -> None:
    """An inspection command must not create an empty database at a mistyped path."""
    if urlsplit(url).scheme != "sqlite":
        return
    path = unquote(url.split("://", 1)[1])[1:]
    if path and not os.path.exists(path):
        raise Unavailable(f"checkpoint store {shown}: no such file {path!r}")


def _store_option(function: F) -> F:
    return click.option(
        "--store",
        "store_url",
        metavar="URL",
        help="Checkpoint store URL (default: the app's checkpoint_store_url).",
    )(function)


# -- states ------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One checkpoint as the CLI shows it: a readable record, or a corrupt entry and why."""

    key: str  #: the task id, or the store's own key for an entry that names no task
    state: str
    task_id: str | None
    record: CheckpointRecord | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """One JSON object; every entry has the same keys (``None`` where unknown)."""
        values: dict[str, Any] = {"task_id": self.task_id, "state": self.state, "key": None, "reason": None}
        if self.record is None:
            values.update(key=self.key, reason=self.reason)
        else:
            values.update(
                self.record.metadata(),
                owner_id=self.record.owner,
                saved_at_iso=_iso(self.record.saved_at),
            )
        return {name: values.get(name) for name in JSON_FIELDS}


#: The keys of every object ``list --json`` prints, in order.
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
    "size",
    "reason",
    "key",
)


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


def _entry(
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


# -- formatting --------------------------------------------------------------


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def _age(timestamp: float, now: float) -> str:
    seconds = max(0, int(now - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _percent(progress: float | None) -> str:
    return "-" if progress is None else f"{progress * 100:.0f}%"


def _json_default(value: Any) -> Any:
    """States may hold what kombu's JSON round-trips (datetime, UUID, Decimal) or bytes."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return repr(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=_json_default, sort_keys=False)


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


HEADER = ("TASK ID", "NAME", "STATE", "OWNER", "PROGRESS", "SAVES", "RESUMES", "LAST SAVED", "SIZE")


def _render_list(entries: list[Entry], now: float) -> str:
    text = _table([HEADER, *(_row(entry, now) for entry in entries)])
    corrupt = [entry for entry in entries if entry.record is None]
    if corrupt:
        text += "\n\nCorrupt entries (kept for inspection; `purge --state corrupt` removes them):"
        text += "".join(f"\n  {entry.key}: {entry.reason}" for entry in corrupt)
    return text


# -- commands ----------------------------------------------------------------


@click.group(name="checkpoint")
@_store_option
@click.pass_context
def checkpoint(ctx: click.Context, store_url: str | None) -> None:
    """Inspect, resume and purge task checkpoints.

    Exit codes: 0 done; 1 nothing found, nothing matched or refused;
    2 bad usage; 3 the store (or broker) is unreachable or not configured.
    """
    if store_url:
        ctx.meta["celery_checkpoint.store_url"] = store_url


@checkpoint.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.option("--task", "task_names", multiple=True, metavar="NAME", help="Only this task name (repeatable).")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only this state (repeatable)."
)
@_store_option
@click.pass_context
def list_(
    ctx: click.Context,
    as_json: bool,
    task_names: tuple[str, ...],
    states: tuple[str, ...],
    store_url: str | None,
) -> None:
    """List checkpoints and their states.

    States: running, interrupted, queued, waiting, poisoned, corrupt.
    Exits 1 when nothing is listed (like grep), so a script can test for it.
    """
    with _session(ctx, store_url) as session:
        entries = [
            entry
            for entry in session.entries()
            if (not states or entry.state in states)
            and (not task_names or (entry.record is not None and entry.record.task_name in task_names))
        ]
    if as_json:
        click.echo(_dumps([entry.as_dict() for entry in entries]))
    elif entries:
        click.echo(_render_list(entries, time.time()))
    else:
        click.echo("No checkpoint matches." if states or task_names else "No checkpoints.")
    if not entries:
        ctx.exit(EXIT_REFUSED)


@checkpoint.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_store_option
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool, store_url: str | None) -> None:
    """Show one checkpoint: metadata, recorded call, decoded state.

    A state that cannot be decoded is shown as a preview of its bytes and the
    error: this is the tool for looking at broken checkpoints.
    """
    with _session(ctx, store_url) as session:
        session.app.loader.import_default_modules()  # the task's own serializer
        entry = session.entry(task_id)
        if entry is None:
            raise Refused(f"no checkpoint for task {task_id}")
        detail = entry.as_dict()
        if entry.record is not None:
            detail.update(_decoded_parts(entry.record, session.accept(entry.record.task_name)))
    click.echo(_dumps(detail) if as_json else _render_detail(detail))


def _decoded_parts(record: CheckpointRecord, accept: frozenset[str]) -> dict[str, Any]:
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


def _render_detail(detail: dict[str, Any]) -> str:
    if detail["state"] == "corrupt":
        name = detail["task_id"] or detail["key"]
        return f"Checkpoint {name}\n  state:  corrupt\n  reason: {detail['reason']}"
    fields = [
        ("task", detail["task_name"]),
        ("state", f"{detail['state']} (status {detail['status']})"),
        ("owner", f"{detail['owner'] or '-'} ({detail['owner_id'] or 'no owner'})"),
        ("saves", detail["saves"]),
        ("resume count", detail["resume_count"]),
        ("progress", _percent(detail["progress"])),
        ("last saved", f"{detail['saved_at_iso']} ({_age(detail['saved_at'], time.time())})"),
        ("created", _iso(detail["created_at"])),
        ("size", f"{detail['size']} bytes"),
    ]
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
    return ["  " + line for line in _dumps(value).splitlines()]


@checkpoint.command()
@click.argument("task_id", required=False)
@click.option("--all-interrupted", is_flag=True, help="Resume every interrupted checkpoint.")
@_store_option
@click.pass_context
def resume(ctx: click.Context, task_id: str | None, all_interrupted: bool, store_url: str | None) -> None:
    """Re-enqueue interrupted tasks so they resume from their checkpoints.

    The task is sent again as itself: same task id, same recorded call.
    Only an interrupted checkpoint is claimed: a run whose worker is alive is
    left alone. Exits 0 when everything found was resumed, 1 when nothing was
    or something was refused, 3 when the store or the broker failed.
    """
    if bool(task_id) == all_interrupted:
        raise click.UsageError("give either a TASK_ID or --all-interrupted")
    with _session(ctx, store_url) as session:
        session.app.loader.import_default_modules()  # the tasks must be registered to be sent
        if task_id:
            candidates = [_resumable(session, task_id)]
        else:
            candidates = session.store.interrupted()
            if not candidates:
                raise Refused("no interrupted checkpoint to resume")
        outcomes = _resume_all(session, candidates)
    ctx.exit(_resume_exit_code(set(outcomes.values()), single=task_id is not None))


def _resumable(session: Session, task_id: str) -> Candidate:
    """The candidate for ``resume ID``, or a clear refusal naming why not."""
    entry = session.entry(task_id)
    if entry is None:
        raise Refused(f"no checkpoint for task {task_id}")
    record = entry.record
    if record is None:
        raise Refused(f"checkpoint {task_id} is corrupt and cannot be resumed: {entry.reason}")
    refusal = {
        "running": f"task {task_id} is running on a live worker ({record.owner_host}); not resumed",
        "queued": f"task {task_id} is already queued to resume; not resumed again",
        "waiting": f"task {task_id} is waiting for its Celery retry (its message is in the broker); "
        "not resumed",
        "poisoned": f"task {task_id} is poisoned (interrupted too many times); not resumed. "
        f"Inspect it with `celery checkpoint show {task_id}`, then purge it",
    }.get(entry.state)
    if refusal:
        raise Refused(refusal)
    return Candidate(task_id, record.owner)


def _resume_all(session: Session, candidates: list[Candidate]) -> dict[str, Outcome]:
    """Claim and re-enqueue each candidate, printing one line per task.

    The claimer holds a lease while it works, so a worker's scan running at
    the same moment does not take the CLI's claim for an abandoned one.
    """
    claimer = worker_id(f"{socket.gethostname()}-cli", uuid.uuid4().hex[:12])
    resumer = Resumer(session.app, session.store, claimer)
    session.store.register(claimer, session.config.lease_ttl)
    outcomes: dict[str, Outcome] = {}
    try:
        for candidate in candidates:
            with _problems_logged_by_resumer() as problems:
                outcome = resumer.resume(candidate)
            outcomes[candidate.task_id] = outcome
            click.echo(_describe(session, candidate.task_id, outcome, problems))
    finally:
        with suppress(CheckpointStoreError):  # the lease expires on its own
            session.store.retire(claimer)
    return outcomes


@contextmanager
def _problems_logged_by_resumer() -> Iterator[list[str]]:
    """What the resumer logs about a task it did not resume, to print it instead."""
    problems: list[str] = []
    handler = _ListHandler(problems)
    propagate = resume_logger.propagate
    resume_logger.addHandler(handler)
    resume_logger.propagate = False  # printed by us, not twice by logging's last resort
    try:
        yield problems
    finally:
        resume_logger.removeHandler(handler)
        resume_logger.propagate = propagate


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {record.exc_info[1]}"
        self.sink.append(_one_line(message))


def _describe(session: Session, task_id: str, outcome: Outcome, problems: list[str]) -> str:
    if outcome is Outcome.RESUMED:
        record = session.store.get(task_id)
        detail = (
            f"{record.task_name}: re-enqueued from save {record.saves} (resume {record.resume_count})"
            if record is not None
            else "re-enqueued"
        )
    elif outcome is Outcome.GONE:
        detail = "already claimed by someone else, or finished"
    else:
        detail = "; ".join(problems) or outcome.value
    return f"{outcome.value:<9} {task_id}  {detail}"


def _resume_exit_code(outcomes: set[Outcome], *, single: bool) -> int:
    """0 when everything found was resumed.

    For ``--all-interrupted`` a task a worker's scan claimed first counts as
    done (it was resumed, just not by us); for ``resume ID`` it does not.
    """
    if Outcome.FAILED in outcomes:
        return EXIT_UNAVAILABLE  # the broker refused the message: try again later
    done = {Outcome.RESUMED} if single else {Outcome.RESUMED, Outcome.GONE}
    return 0 if outcomes <= done else EXIT_REFUSED


@checkpoint.command()
@click.argument("task_id", required=False)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES),
    help="Purge every checkpoint in this state.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_store_option
@click.pass_context
def purge(
    ctx: click.Context, task_id: str | None, states: tuple[str, ...], yes: bool, store_url: str | None
) -> None:
    """Delete checkpoints, by TASK_ID or by --state.

    Asks first unless --yes. A deleted checkpoint cannot be resumed: its task
    starts from zero if it ever runs again.
    """
    if bool(task_id) == bool(states):
        raise click.UsageError("give either a TASK_ID or --state STATE")
    with _session(ctx, store_url) as session:
        targets = _purge_targets(session, task_id, states)
        click.echo(f"{len(targets)} checkpoint(s) to delete:")
        for entry in targets:
            click.echo(f"  {_target_line(entry)}")
        if not yes:
            click.confirm("Delete them?", abort=True)
        kept = [problem for problem in (_remove(session.store, entry) for entry in targets) if problem]
    for problem in kept:
        click.echo(problem, err=True)
    click.echo(f"deleted {len(targets) - len(kept)}, kept {len(kept)}")
    ctx.exit(EXIT_REFUSED if kept else 0)


def _purge_targets(session: Session, task_id: str | None, states: tuple[str, ...]) -> list[Entry]:
    if task_id:
        entry = session.entry(task_id)
        if entry is None:
            raise Refused(f"no checkpoint for task {task_id}")
        return [entry]
    targets = [entry for entry in session.entries() if entry.state in states]
    if not targets:
        raise Refused(f"no checkpoint is {' or '.join(states)}")
    return targets


def _target_line(entry: Entry) -> str:
    if entry.record is None:
        return f"{entry.key}  corrupt: {entry.reason}"
    line = f"{entry.key}  {entry.record.task_name}  {entry.state}"
    if entry.state == "running":
        line += " (its worker is alive: that run stops at its next save)"
    return line


def _remove(store: CheckpointStore, entry: Entry) -> str | None:
    """Delete one entry; return why it was kept, or None once it is gone."""
    if entry.task_id is None:
        return (
            f"kept {entry.key}: not a checkpoint of this store ({entry.reason}); "
            "if nothing else uses it, delete the key by hand"
        )
    try:
        if store.delete(entry.task_id) or entry.record is not None:
            return None  # a readable record that is already gone needs nothing more
    except CheckpointStoreError as exc:
        return f"kept {entry.key}: {_one_line(str(exc))}; delete it by hand"
    return f"kept {entry.key}: the store cannot delete this corrupt entry; delete it by hand"
