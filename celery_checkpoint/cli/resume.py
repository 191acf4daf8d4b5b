"""``resume``: claim interrupted checkpoints and send their tasks again.

The claiming and sending is :class:`celery_checkpoint.resume.Resumer`, the
same code a worker's scan runs; this module picks the candidates, refuses
the ones that must not be resumed, and reports one line per task.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial

import click

from ..errors import CheckpointStoreError
from ..record import iso_utc, worker_id
from ..resume import Outcome, Resumer
from ..resume import logger as resume_logger
from ..stores.base import Candidate
from .context import EXIT_REFUSED, EXIT_UNAVAILABLE, Refused, Session, one_line, open_stores, store_option
from .states import Entry


@click.command()
@click.argument("task_id", required=False)
@click.option("--all-interrupted", is_flag=True, help="Resume every interrupted checkpoint.")
@store_option
@click.pass_context
def resume(ctx: click.Context, task_id: str | None, all_interrupted: bool, store_url: str | None) -> None:
    """Re-enqueue interrupted tasks so they resume from their checkpoints.

    The task is sent again as itself: same task id, same recorded call.
    Only an interrupted checkpoint is claimed: a run whose worker is alive is
    left alone. Each is claimed in the store that holds it. Exits 0 when
    everything found was resumed, 1 when nothing was or something was
    refused, 3 when a store or the broker failed.
    """
    if bool(task_id) == all_interrupted:
        raise click.UsageError("give either a TASK_ID or --all-interrupted")
    with open_stores(ctx, store_url) as stores:
        if task_id:
            [(session, entry)] = stores.find(task_id, unique=True)
            try:
                plan = [(session, [_resumable(task_id, entry)])]
            except Refused as refused:
                raise stores.refusal(refused.message) from None  # exit 3 if another store failed
        else:
            plan = [(session, found) for session, found in stores.gather(_interrupted) if found]
            if not plan:
                raise stores.refusal("no interrupted checkpoint to resume")
        claimer = worker_id(f"{socket.gethostname()}-cli", uuid.uuid4().hex[:12])
        outcomes: list[Outcome] = []
        for session, candidates in plan:
            resume_here = partial(_resume_all, candidates=candidates, claimer=claimer)
            for _, done in stores.gather(resume_here, among=[session]):
                outcomes += done
    ctx.exit(stores.exit_code(_resume_exit_code(set(outcomes), single=task_id is not None)))


def _interrupted(session: Session) -> list[Candidate]:
    """The candidates of one store that ``list`` would show as interrupted."""
    interrupted = {e.task_id for e in session.entries() if e.state == "interrupted"}
    return [c for c in session.store.interrupted() if c.task_id in interrupted]


def _resumable(task_id: str, entry: Entry) -> Candidate:
    """The candidate for ``resume ID``, or a clear refusal naming why not."""
    record = entry.record
    if record is None:
        raise Refused(f"checkpoint {task_id} is corrupt and cannot be resumed: {entry.reason}")
    refusal = {
        "running": f"task {task_id} is running on a live worker ({record.owner_host}); not resumed",
        "queued": f"task {task_id} is already queued to resume; not resumed again",
        "waiting": f"task {task_id} is waiting for its Celery retry (its message is in the broker); "
        f"not resumed{_resend_note(record.resend_at)}",
        "poisoned": f"task {task_id} is poisoned (interrupted too many times); not resumed. "
        f"Inspect it with `celery checkpoint show {task_id}`, then purge it",
    }.get(entry.state)
    if refusal:
        raise Refused(refusal)
    return Candidate(task_id, record.owner)


def _resend_note(resend_at: float | None) -> str:
    if resend_at is None:
        return ""
    return f". A worker sends the retry again at {iso_utc(resend_at)} if it has not started by then"


def _resume_all(session: Session, candidates: list[Candidate], claimer: str) -> list[Outcome]:
    """Claim and re-enqueue each candidate of one store, printing one line per task.

    The claimer holds a lease in the store while it works, so a worker's scan
    running at the same moment does not take the CLI's claim for an abandoned
    one.
    """
    resumer = Resumer(session.app, session.store, claimer)
    session.store.register(claimer, session.config.lease_ttl)
    outcomes: list[Outcome] = []
    try:
        for candidate in candidates:
            with _problems_logged_by_resumer() as problems:
                outcome = resumer.resume(candidate)
            outcomes.append(outcome)
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
        self.sink.append(one_line(message))


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
    where = f"  (in {session.label})" if session.label else ""
    return f"{outcome.value:<9} {task_id}  {detail}{where}"


def _resume_exit_code(outcomes: set[Outcome], *, single: bool) -> int:
    """0 when everything found was resumed.

    For ``--all-interrupted`` a task a worker's scan claimed first counts as
    done (it was resumed, just not by us); for ``resume ID`` it does not.
    """
    if Outcome.FAILED in outcomes:
        return EXIT_UNAVAILABLE  # the broker refused the message: try again later
    done = {Outcome.RESUMED} if single else {Outcome.RESUMED, Outcome.GONE}
    return 0 if outcomes <= done else EXIT_REFUSED
