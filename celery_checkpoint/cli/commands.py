"""``list``, ``show`` and ``purge``: look at checkpoints, and delete them."""

from __future__ import annotations

import time

import click

from ..errors import CheckpointStoreError
from ..stores import CheckpointStore
from .context import EXIT_REFUSED, Refused, Session, one_line, open_session, state_option, store_option
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
    """List checkpoints and their states.

    States: running, interrupted, queued, waiting, poisoned, corrupt.
    Exits 1 when nothing is listed (like grep), so a script can test for it.
    """
    with open_session(ctx, store_url) as session:
        entries = [
            entry
            for entry in session.entries()
            if (not states or entry.state in states)
            and (not task_names or (entry.record is not None and entry.record.task_name in task_names))
        ]
    if as_json:
        click.echo(dumps([as_dict(entry) for entry in entries]))
    elif entries:
        click.echo(render_list(entries, time.time()))
    else:
        click.echo("No checkpoint matches." if states or task_names else "No checkpoints.")
    if not entries:
        ctx.exit(EXIT_REFUSED)


@click.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@store_option
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool, store_url: str | None) -> None:
    """Show one checkpoint: metadata, recorded call, decoded state.

    A state that cannot be decoded is shown as a preview of its bytes and the
    error: this is the tool for looking at broken checkpoints.
    """
    with open_session(ctx, store_url) as session:
        session.app.loader.import_default_modules()  # the task's own serializer
        entry = session.entry(task_id)
        detail = as_dict(entry)
        if entry.record is not None:
            detail.update(decoded_parts(entry.record, session.accept(entry.record.task_name)))
    click.echo(dumps(detail) if as_json else render_detail(detail))


@click.command()
@click.argument("task_id", required=False)
@state_option("Purge every checkpoint in this state.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@store_option
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
    with open_session(ctx, store_url) as session:
        targets = _purge_targets(session, task_id, states)
        click.echo(f"{len(targets)} checkpoint(s) to delete:")
        for entry in targets:
            click.echo(f"  {_target_line(entry)}")
        if not yes:
            click.confirm("Delete them?", abort=True)
        kept = [
            problem
            for problem in (
                _changed_since_listed(session, entry) or _remove(session.store, entry) for entry in targets
            )
            if problem
        ]
    for problem in kept:
        click.echo(problem, err=True)
    click.echo(f"deleted {len(targets) - len(kept)}, kept {len(kept)}")
    ctx.exit(EXIT_REFUSED if kept else 0)


def _purge_targets(session: Session, task_id: str | None, states: tuple[str, ...]) -> list[Entry]:
    if task_id:
        return [session.entry(task_id)]
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
        return f"kept {entry.key}: {one_line(str(exc))}"
    if now.record is None or now.state != entry.state or now.record.fence != listed.fence:
        return f"kept {entry.key}: it is {now.state} now, not {entry.state} as listed; run purge again"
    return None


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
        return f"kept {entry.key}: {one_line(str(exc))}; delete it by hand"
    return f"kept {entry.key}: the store cannot delete this corrupt entry; delete it by hand"
