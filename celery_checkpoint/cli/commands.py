"""``list``, ``show`` and ``purge``: look at checkpoints, and delete them."""

from __future__ import annotations

import time

import click

from ..errors import CheckpointStoreError
from .context import EXIT_REFUSED, Refused, Session, Stores, one_line, open_stores, state_option, store_option
from .render import as_dict, decoded_parts, dumps, render_detail, render_list
from .states import Entry


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.option("--task", "task_names", multiple=True, metavar="NAME", help="Only this task name (repeatable).")
@state_option("Only this state (repeatable).")
@store_option
@click.pass_context
def list_(
    ctx: click.Context,
    as_json: bool,
    task_names: tuple[str, ...],
    states: tuple[str, ...],
    store_url: str | None,
) -> None:
    """List checkpoints and their states, from every store the app's tasks use.

    States: running, interrupted, queued, waiting, poisoned, corrupt.
    Exits 1 when nothing is listed (like grep), so a script can test for it,
    and 3 when a store could not be read (the others are still listed).
    """
    with open_stores(ctx, store_url) as stores:
        rows = [
            (session, entry)
            for session, entries in stores.gather(Session.entries)
            for entry in entries
            if (not states or entry.state in states)
            and (not task_names or (entry.record is not None and entry.record.task_name in task_names))
        ]
    entries = [entry for _, entry in rows]
    labels = [session.label for session, _ in rows] if stores.several else None
    if as_json:
        objects = [as_dict(entry) for entry in entries]
        for each, label in zip(objects, labels or (), strict=False):
            each["store"] = label
        click.echo(dumps(objects))
    elif entries:
        click.echo(render_list(entries, time.time(), labels))
    else:
        click.echo("No checkpoint matches." if states or task_names else "No checkpoints.")
    ctx.exit(stores.exit_code(0 if entries else EXIT_REFUSED))


@click.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@store_option
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool, store_url: str | None) -> None:
    """Show one checkpoint: metadata, recorded call, decoded state.

    A state that cannot be decoded is shown as a preview of its bytes and the
    error: this is the tool for looking at broken checkpoints. With several
    stores it says which one holds the checkpoint.
    """
    with open_stores(ctx, store_url) as stores:
        hits = stores.find(task_id, unique=False)
        session, entry = hits[0]
        detail = as_dict(entry)
        if stores.several:
            detail["store"] = session.label
        if entry.record is not None:
            detail.update(decoded_parts(entry.record, session.accept(entry.record.task_name)))
    click.echo(dumps(detail) if as_json else render_detail(detail))
    if len(hits) > 1:
        others = ", ".join(other.label for other, _ in hits[1:])
        click.echo(
            f"Note: task {task_id} also has a checkpoint in {others} (see it with --store URL)", err=True
        )
    ctx.exit(stores.exit_code(0))


@click.command()
@click.argument("task_id", required=False)
@state_option("Purge every checkpoint in this state.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@store_option
@click.pass_context
def purge(
    ctx: click.Context, task_id: str | None, states: tuple[str, ...], yes: bool, store_url: str | None
) -> None:
    """Delete checkpoints, by TASK_ID or by --state, in the store that holds each.

    Asks first unless --yes. A deleted checkpoint cannot be resumed: its task
    starts from zero if it ever runs again.
    """
    if bool(task_id) == bool(states):
        raise click.UsageError("give either a TASK_ID or --state STATE")
    with open_stores(ctx, store_url) as stores:
        targets = _purge_targets(stores, task_id, states)
        click.echo(f"{len(targets)} checkpoint(s) to delete:")
        for session, entry in targets:
            click.echo(f"  {_target_line(entry)}{_in(session)}")
        if not yes:
            click.confirm("Delete them?", abort=True)
        kept = [
            problem
            for problem in (
                _changed_since_listed(session, entry) or _remove(session, entry) for session, entry in targets
            )
            if problem
        ]
    for problem in kept:
        click.echo(problem, err=True)
    click.echo(f"deleted {len(targets) - len(kept)}, kept {len(kept)}")
    ctx.exit(stores.exit_code(EXIT_REFUSED if kept else 0))


def _purge_targets(
    stores: Stores, task_id: str | None, states: tuple[str, ...]
) -> list[tuple[Session, Entry]]:
    if task_id:
        return stores.find(task_id, unique=True)
    targets = [
        (session, entry)
        for session, entries in stores.gather(Session.entries)
        for entry in entries
        if entry.state in states
    ]
    if not targets:
        raise stores.refusal(f"no checkpoint is {' or '.join(states)}")
    return targets


def _in(session: Session) -> str:
    """``  (in <store>)`` at the end of a line, when there are several stores."""
    return f"  (in {session.label})" if session.label else ""


def _target_line(entry: Entry) -> str:
    if entry.record is None:
        return f"{entry.key}  corrupt: {entry.reason}"
    line = f"{entry.key}  {entry.record.task_name}  {entry.state}"
    if entry.state == "running":
        line += " (its worker is alive: that run stops at its next save)"
    return line


def _changed_since_listed(session: Session, entry: Entry) -> str | None:
    """Why ``entry`` is kept because it changed after it was listed, or None.

    Scans run every few seconds: an entry listed as interrupted may have
    been resumed, and be a live run's checkpoint, by the time someone
    answers the prompt. Only what was shown is deleted.
    """
    listed = entry.record
    if listed is None or entry.task_id is None:
        return None
    try:
        now = session.entry(entry.task_id)
    except Refused:
        return None  # gone already: _remove has nothing to do
    except CheckpointStoreError as exc:
        return f"kept {entry.key}{session.where}: {one_line(str(exc))}"
    if now.record is None or now.state != entry.state or now.record.fence != listed.fence:
        return (
            f"kept {entry.key}{session.where}: it is {now.state} now, not {entry.state} as listed; "
            "run purge again"
        )
    return None


def _remove(session: Session, entry: Entry) -> str | None:
    """Delete one entry; return why it was kept, or None once it is gone."""
    kept = f"kept {entry.key}{session.where}"
    if entry.task_id is None:
        return (
            f"{kept}: not a checkpoint of this store ({entry.reason}); "
            "if nothing else uses it, delete the key by hand"
        )
    try:
        if session.store.delete(entry.task_id) or entry.record is not None:
            return None  # a readable record that is already gone needs nothing more
    except CheckpointStoreError as exc:
        return f"{kept}: {one_line(str(exc))}; delete it by hand"
    return f"{kept}: the store cannot delete this corrupt entry; delete it by hand"
