"""Sending an interrupted task again as itself: claim, check, re-enqueue.

Used by the worker's resume scan and by ``celery checkpoint resume``. The
claim is atomic in the store, so when many workers scan at once each
interrupted task is re-enqueued by exactly one of them.

Nothing unverified is ever sent: the task name must be registered in this
app as a ``CheckpointTask``, and the call (args, kwargs, options) is the one
the checkpoint recorded when the task first ran. A bad entry is reported
once per process and left in place.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from .envelope import parse_envelope
from .errors import CheckpointError, CheckpointStoreError, CorruptCheckpoint
from .record import CheckpointRecord, ResumeEnvelope, Status, accepted_content_types, decode, iso_utc
from .results import finished
from .stores.base import (
    Candidate,
    CheckpointStore,
    Claim,
    ClaimOutcome,
    ClaimRequest,
    CorruptEntry,
    resend_grace,
)

logger = logging.getLogger(__name__)


class CheckpointPoisoned(CheckpointError):
    """Stored as the task's FAILURE when it was resumed too many times."""


class Outcome(str, enum.Enum):
    RESUMED = "resumed"
    POISONED = "poisoned"
    REVOKED = "revoked"
    BAD = "bad"
    GONE = "gone"
    FAILED = "failed"


#: Candidates whose records one scan reads together.
READ_BATCH = 500


class Unread:
    """Marks a candidate whose record the caller has not read."""


UNREAD = Unread()


@dataclass(frozen=True)
class _Ready:
    """A candidate that passed every check: what its claim would send."""

    candidate: Candidate
    record: CheckpointRecord
    task: Any
    envelope: ResumeEnvelope

    @property
    def task_id(self) -> str:
        return self.candidate.task_id

    @property
    def max_resumes(self) -> int:
        return int(self.task.checkpoint_config.max_resumes)


@dataclass
class ScanReport:
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for value in self.outcomes.values() if value is outcome)

    def summary(self) -> str:
        parts = [f"{self.count(o)} {o.value}" for o in Outcome if self.count(o)]
        return ", ".join(parts) or "nothing to resume"


class Resumer:
    """Claims interrupted checkpoints and re-enqueues their tasks."""

    def __init__(
        self,
        app: Any,
        store: CheckpointStore,
        claimer: str,
        released_grace: float = 0.0,
        queued_grace: float | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.claimer = claimer
        #: How long a checkpoint handed off at shutdown is left to its requeued message.
        self.released_grace = released_grace
        #: How long a re-enqueued checkpoint may wait for its message before it is
        #: sent again (a broker can lose an in-flight message when a consumer dies).
        self.queued_grace = queued_grace
        self._reported: set[tuple[str, str]] = set()

    def scan(self, revoked: Container[str] = ()) -> ScanReport:
        """Resume every interrupted checkpoint; one bad entry never stops the rest.

        Per batch of candidates: one read, one question to the result
        backend, one round of claims and one of parks (one round trip each
        on Redis, and on a key-value result backend), and one publish per
        task: the publish is the only per-task round trip left.
        """
        report = ScanReport()
        candidates = self.store.interrupted()
        for start in range(0, len(candidates), READ_BATCH):
            batch = candidates[start : start + READ_BATCH]
            try:
                records = self.store.get_many([candidate.task_id for candidate in batch])
            except CheckpointStoreError as exc:
                logger.warning("%d checkpoints not resumed this time: %s", len(batch), exc)
                report.outcomes.update((candidate.task_id, Outcome.FAILED) for candidate in batch)
                continue
            ready: list[_Ready] = []
            missing: list[Candidate] = []
            for candidate, record in zip(batch, records, strict=True):
                try:
                    checked = self._check(candidate, revoked, record)
                except CheckpointStoreError as exc:
                    logger.warning("task %s: not resumed this time: %s", candidate.task_id, exc)
                    checked = Outcome.FAILED
                if isinstance(checked, _Ready):
                    ready.append(checked)
                else:
                    report.outcomes[candidate.task_id] = checked
                    if record is None and checked is Outcome.GONE:
                        missing.append(candidate)
            self._drop_index_entries(missing)
            try:
                self._claim_and_send(ready, report)
            except CheckpointStoreError as exc:
                logger.warning("%d checkpoints not resumed this time: %s", len(ready), exc)
                for item in ready:
                    report.outcomes.setdefault(item.task_id, Outcome.FAILED)
        return report

    def resume(
        self,
        candidate: Candidate,
        revoked: Container[str] = (),
        record: CheckpointRecord | CorruptEntry | Unread | None = UNREAD,
    ) -> Outcome:
        """Resume one candidate; ``record`` is its record when the caller read it already.

        Raises ``CheckpointStoreError`` when the store cannot be reached.
        """
        checked = self._check(candidate, revoked, record)
        if not isinstance(checked, _Ready):
            return checked
        report = ScanReport()
        self._claim_and_send([checked], report)
        return report.outcomes[candidate.task_id]

    def _check(
        self,
        candidate: Candidate,
        revoked: Container[str],
        record: CheckpointRecord | CorruptEntry | Unread | None,
    ) -> Outcome | _Ready:
        """Everything the candidate's own record decides before its claim; what it would send.

        Whether the task already finished is the result backend's to say,
        asked for a whole batch at once (:meth:`_drop_finished`).
        """
        task_id = candidate.task_id
        if task_id in revoked:
            self.store.delete(task_id)
            logger.info("task %s was revoked: its checkpoint is removed, not resumed", task_id)
            return Outcome.REVOKED
        if isinstance(record, Unread):
            record = self.store.get_many([task_id])[0]
        if isinstance(record, CorruptEntry):
            return self._bad(task_id, record.reason)
        if record is None:
            return Outcome.GONE
        task, problem = self._task_for(record)
        if task is None:
            return self._bad(task_id, problem)
        limit = task.checkpoint_config.max_state_bytes
        if len(record.state.payload) > limit:
            return self._bad(
                task_id,
                f"its state is {len(record.state.payload)} bytes, over checkpoint_max_state_bytes={limit}",
            )
        try:
            envelope = parse_envelope(
                decode(
                    record.envelope,
                    accepted_content_types(task.checkpoint_config.serializer),
                    task_id=task_id,
                ),
                task_id=task_id,
            )
        except (CorruptCheckpoint, ValueError) as exc:
            return self._bad(task_id, str(exc))

        return _Ready(candidate, record, task, envelope)

    def _claim_and_send(self, ready: list[_Ready], report: ScanReport) -> None:
        """Claim ``ready`` together, send each one claimed, then park them together.

        A store that cannot be reached raises ``CheckpointStoreError``; the
        candidates without an outcome in ``report`` then have none.
        """
        ready = self._drop_finished(ready, report)
        if not ready:
            return
        # Claimed at the fence read: what is sent is the recorded call of the
        # record claimed, not of one a run has replaced since (a retry's call).
        claims = self.store.claim_many(
            [ClaimRequest(i.task_id, i.candidate.owner, i.max_resumes, i.record.fence) for i in ready],
            self.claimer,
            self.released_grace,
            self.queued_grace,
        )
        sent: list[tuple[_Ready, CheckpointRecord]] = []
        for item, claim in zip(ready, claims, strict=True):
            outcome = self._send(item, claim)
            if isinstance(outcome, Outcome):
                report.outcomes[item.task_id] = outcome
            else:
                sent.append((item, outcome))
        # The messages are in the broker now: the records need no owner's lease.
        self.store.park_many(
            [(item.task_id, claimed.fence) for item, claimed in sent], self.claimer, Status.QUEUED
        )
        for item, claimed in sent:
            self._log_resumed(item, claimed)
            report.outcomes[item.task_id] = Outcome.RESUMED

    def _drop_index_entries(self, missing: list[Candidate]) -> None:
        """Forget candidates whose record is gone but still listed by the store's index.

        A record deleted outside the store (by hand, or evicted by a Redis
        ``maxmemory`` policy) leaves its id in the index the scan lists
        (Redis: its owner's set, the released set, the waiting index), and
        every scan would read it again; a dead owner with such an entry is
        never forgotten. The claim of a missing record drops those entries.
        It is made at fence 0, which no record has: a record created under
        that id since the read is left exactly as it is.
        """
        if not missing:
            return
        requests = [ClaimRequest(c.task_id, c.owner, 0, expected_fence=0) for c in missing]
        try:
            self.store.claim_many(requests, self.claimer)
        except CheckpointStoreError as exc:  # listed again by the next scan, which tries again
            logger.debug("index entries of %d deleted checkpoints not dropped: %s", len(missing), exc)

    def _drop_finished(self, ready: list[_Ready], report: ScanReport) -> list[_Ready]:
        """``ready`` minus the tasks whose result backend already holds their final result.

        Such a task finished, but its run could not delete the checkpoint
        (the store was down at that moment): the checkpoint is removed
        rather than the task run again.
        """
        done = finished((item.task, item.task_id) for item in ready)
        if not done:
            return ready
        for task_id in done:
            self.store.delete(task_id)
            logger.info("task %s already has its final result: its checkpoint is removed", task_id)
            report.outcomes[task_id] = Outcome.GONE
        return [item for item in ready if item.task_id not in done]

    def _send(self, item: _Ready, claim: Claim | CheckpointError) -> Outcome | CheckpointRecord:
        """Publish a claimed candidate's recorded call; the claimed record once sent."""
        task_id = item.task_id
        if isinstance(claim, CheckpointError):
            logger.warning("task %s: not resumed this time: %s", task_id, claim)
            return Outcome.FAILED
        if claim.outcome is ClaimOutcome.GONE or claim.record is None:
            return Outcome.GONE
        if claim.outcome is ClaimOutcome.POISONED:
            mark_poisoned(item.task, claim.record)
            return Outcome.POISONED
        envelope = item.envelope
        try:
            item.task.apply_async(envelope.args, envelope.kwargs, **envelope.options)
        except Exception:
            logger.exception(
                "task %s: could not re-enqueue it; it stays interrupted for the next scan", task_id
            )
            try:
                # Nothing was sent: the resume the claim counted is given back,
                # or a broker outage would poison a task interrupted once.
                self.store.park(
                    task_id,
                    claim.record.fence,
                    self.claimer,
                    Status.RELEASED,
                    resume_count=item.record.resume_count,
                )
            except CheckpointStoreError as exc:  # the claimer's lease lapses; then it is interrupted again
                logger.warning("task %s: its claim is not given back: %s", task_id, exc)
            return Outcome.FAILED
        return claim.record

    def _log_resumed(self, item: _Ready, claimed: CheckpointRecord) -> None:
        record = item.record
        if record.status is Status.WAITING:
            logger.warning(
                "task %s (%s): its retry had not started by %s, so its message is taken for lost; "
                "sent the retry again from its checkpoint (save %d)",
                item.task_id,
                record.task_name,
                "its resend time" if record.resend_at is None else iso_utc(record.resend_at),
                claimed.saves,
            )
        elif record.status is Status.QUEUED and record.owner == "" and self.queued_grace is not None:
            logger.warning(
                "task %s (%s): no run has started it since it was last sent; sent again (%d times "
                "now); the next re-send, if it is still needed, waits %.0f s. Does a worker read its queue?",
                item.task_id,
                record.task_name,
                claimed.resends,
                resend_grace(self.queued_grace, claimed.resends),
            )
        else:
            logger.info(
                "task %s (%s) re-enqueued from its checkpoint (save %d, resume %d)",
                item.task_id,
                record.task_name,
                claimed.saves,
                claimed.resume_count,
            )

    def _task_for(self, record: CheckpointRecord) -> tuple[Any, str]:
        from .task import CheckpointTask

        task = self.app.tasks.get(record.task_name)
        if task is None:
            return None, f"task name {record.task_name!r} is not registered in this app"
        if not isinstance(task, CheckpointTask):
            return None, f"task {record.task_name!r} is not a CheckpointTask"
        try:
            task.checkpoint_config  # noqa: B018 - read once here, so one task's bad settings stop only its own resume
        except ValueError as exc:
            return None, f"task {record.task_name!r} has invalid checkpoint settings: {exc}"
        return task, ""

    def _bad(self, task_id: str, problem: str) -> Outcome:
        if (task_id, problem) not in self._reported:
            self._reported.add((task_id, problem))
            logger.error(
                "checkpoint %s is not resumable and is left in place (inspect with "
                "`celery checkpoint show %s`): %s",
                task_id,
                task_id,
                problem,
            )
        return Outcome.BAD


def mark_poisoned(task: Any, record: CheckpointRecord) -> None:
    """Store FAILURE for a task that keeps getting interrupted; keep its checkpoint."""
    error = CheckpointPoisoned(
        f"task {record.task_id} ({record.task_name}) was interrupted again after "
        f"{record.resume_count} resumes (checkpoint_max_resumes="
        f"{task.checkpoint_config.max_resumes}); marked FAILURE. Its checkpoint is kept for "
        f"inspection: celery checkpoint show {record.task_id}"
    )
    logger.error("%s", error)
    try:
        task.backend.mark_as_failure(record.task_id, error)
    except Exception:
        logger.exception("task %s: could not store its FAILURE", record.task_id)


__all__ = ["CheckpointPoisoned", "Outcome", "Resumer", "ScanReport", "mark_poisoned"]
