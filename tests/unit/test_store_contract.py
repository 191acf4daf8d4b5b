"""One contract, three stores: every backend must behave the same."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import redis

from celery_checkpoint.errors import CorruptCheckpoint
from celery_checkpoint.record import CheckpointRecord, EncodedState, NewCheckpoint, Status, worker_id
from celery_checkpoint.stores import CheckpointStore, Claim, ClaimOutcome, CorruptEntry, create_store
from celery_checkpoint.stores.base import ClaimRequest
from celery_checkpoint.stores.redis import RedisStore


def _state(payload: bytes) -> EncodedState:
    return EncodedState(payload, "application/json", "utf-8")


def _new(owner: str, payload: bytes = b'{"i": 1}', name: str = "app.task") -> NewCheckpoint:
    return NewCheckpoint(name, owner, 4242, _state(payload), _state(b'{"args": []}'), 0.5, time.time())


W1 = worker_id("w1@host", "aaaa")
W2 = worker_id("w2@host", "bbbb")


def test_create_then_update_is_fenced(store: CheckpointStore) -> None:
    assert store.create("t1", _new(W1)) == 1
    assert store.create("t1", _new(W2)) is None, "a second create must not overwrite"
    assert store.update("t1", 1, _state(b'{"i": 2}'), 0.6, time.time()) == 2
    assert store.update("t1", 99, _state(b'{"i": 3}'), 0.7, time.time()) is None
    record = store.get("t1")
    assert record is not None
    assert record.state.payload == b'{"i": 2}'
    assert record.saves == 2 and record.progress == 0.6
    assert record.owner == W1 and record.status is Status.RUNNING


def test_a_record_starts_at_its_create_fence_and_a_deleted_ones_run_is_fenced_out(
    store: CheckpointStore,
) -> None:
    assert store.create("t1", replace(_new(W1, b'{"old": 1}'), fence=1_000_000_000_007)) == 1_000_000_000_007
    assert store.peek("t1").fence == 1_000_000_000_007
    assert store.update("t1", 1_000_000_000_007, _state(b'{"old": 2}'), 0.6, time.time()) == 2
    assert store.delete("t1")  # a purge while that run goes on
    assert store.create("t1", replace(_new(W2, b'{"new": 1}'), fence=42)) == 42
    assert store.update("t1", 1_000_000_000_007, _state(b'{"stale": true}'), 0.9, time.time()) is None
    record = store.get("t1")
    assert record is not None and record.state.payload == b'{"new": 1}'
    assert (record.fence, record.saves, record.owner) == (42, 1, W2)
    taken = store.takeover("t1", 42, W2, W1, 1)
    assert taken is not None and taken.fence == 43 and taken.state.payload == b'{"new": 1}'
    assert store.update("t1", 43, _state(b'{"new": 2}'), 0.7, time.time()) == 2


def test_create_refuses_a_task_id_already_finished(store: CheckpointStore) -> None:
    assert store.create("t1", _new(W1)) == 1
    assert store.finish("t1", 1, W1)
    assert store.create("t1", _new(W2)) is None, "a duplicate of a finished call must not start over"
    assert store.get("t1") is None


def test_the_state_follows_the_fence_and_a_stale_save_changes_nothing(store: CheckpointStore) -> None:
    store.create("t1", _new(W1, b'{"i": 1}'))
    assert store.update("t1", 1, _state(b'{"i": 2}'), 0.2, time.time()) == 2
    taken = store.takeover("t1", 1, W1, W2, 1)
    assert taken is not None and taken.state.payload == b'{"i": 2}' and taken.saves == 2
    assert store.update("t1", 1, _state(b'{"stale": true}'), 0.9, time.time()) is None
    assert store.update("t1", 2, _state(b'{"i": 3}'), 0.3, time.time()) == 3
    assert store.park("t1", 2, W2, Status.RELEASED)
    claimer = worker_id("c@host", "cccc")
    claim = store.claim("t1", "", claimer, 5)
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.record is not None
    assert claim.record.state.payload == b'{"i": 3}'
    record = store.get("t1")
    assert record is not None and record.state.payload == b'{"i": 3}'
    assert (record.saves, record.progress, record.owner) == (3, 0.3, claimer)
    assert store.finish("t1", record.fence, claimer)
    assert store.get("t1") is None
    if isinstance(store, RedisStore):  # nothing of the task is left behind, stale write included
        assert list(store.client.scan_iter(match=f"{store.prefix}save:*")) == []


class Float64(float):
    """What numpy 2's ``np.float64`` is: a float whose repr is not a bare number."""

    def __repr__(self) -> str:
        return f"np.float64({float(self)!r})"


def test_progress_of_any_float_type_reads_back_as_a_number(store: CheckpointStore) -> None:
    new = NewCheckpoint("app.task", W1, 4242, _state(b'{"i": 1}'), _state(b"{}"), Float64(0.25), time.time())
    assert store.create("t1", new) == 1
    record = store.get("t1")
    assert record is not None and record.progress == 0.25
    taken = store.takeover("t1", 1, W1, W2, 1)  # a resumed run reads the record too
    assert taken is not None and taken.progress == 0.25
    assert store.update("t1", 2, _state(b'{"i": 2}'), Float64(0.5), time.time()) == 2
    record = store.get("t1")
    assert record is not None and record.progress == 0.5
    assert store.update("t1", 2, _state(b'{"i": 3}'), True, time.time()) == 3  # a bool is an int
    record = store.get("t1")
    assert record is not None and record.progress == 1.0


def test_peek_reports_owner_liveness_and_done_marker(store: CheckpointStore) -> None:
    assert not store.peek("t1").exists
    store.register(W1, 30)
    store.create("t1", _new(W1))
    peek = store.peek("t1")
    assert peek.exists and peek.owner == W1 and peek.owner_alive and peek.fence == 1
    store.retire(W1)
    assert not store.peek("t1").owner_alive
    assert store.finish("t1", 1, W1)
    gone = store.peek("t1")
    assert not gone.exists and gone.done


def test_finish_with_stale_fence_keeps_the_newer_run(store: CheckpointStore) -> None:
    store.create("t1", _new(W1))
    taken = store.takeover("t1", 1, W1, W2, 1)
    assert taken is not None and taken.fence == 2 and taken.owner == W2
    assert not store.finish("t1", 1, W1)
    assert store.get("t1") is not None
    assert store.takeover("t1", 1, W1, W2, 1) is None, "takeover must compare the fence"


def test_interrupted_lists_only_dead_owners_and_released(store: CheckpointStore) -> None:
    store.register(W1, 30)
    store.register(W2, 30)
    store.create("live", _new(W1))
    store.create("dead", _new(W2))
    store.create("handoff", _new(W1))
    assert store.park("handoff", 1, W1, Status.RELEASED)
    store.retire(W2)
    found = {(c.task_id, c.owner) for c in store.interrupted()}
    assert ("dead", W2) in found
    assert "handoff" in {t for t, _ in found}
    assert "live" not in {t for t, _ in found}


def test_held_by_lists_what_a_worker_owns_until_it_parks_it(store: CheckpointStore) -> None:
    store.create("b", _new(W1))
    store.create("a", _new(W1))
    store.create("other", _new(W2))
    assert store.held_by(W1) == ["a", "b"]
    assert store.park("a", 1, W1, Status.RELEASED)
    assert store.held_by(W1) == ["b"]
    assert store.held_by(worker_id("w9@host", "none")) == []


def test_held_by_leaves_out_a_checkpoint_its_claim_poisoned(store: CheckpointStore) -> None:
    """A lost pool process's run claimed by its own worker once it was resumed too often."""
    store.register(W1, 30)
    store.create("lost", _new(W1))
    store.create("live", _new(W1))
    assert store.claim("lost", W1, W1, 0).outcome is ClaimOutcome.POISONED
    assert store.held_by(W1) == ["live"]
    store.create("dead", _new(W2))  # W2 never registered: dead; a scan poisons its run
    assert store.claim("dead", W2, W1, 0).outcome is ClaimOutcome.POISONED
    assert store.held_by(W2) == [] and store.held_by(W1) == ["live"]


def test_restart_under_same_node_name_ends_old_lease(store: CheckpointStore) -> None:
    old = worker_id("w1@host", "old")
    new = worker_id("w1@host", "new")
    store.register(old, 30)
    store.create("t1", _new(old))
    store.register(new, 30)
    assert [c.task_id for c in store.interrupted()] == ["t1"]


def test_claim_is_exactly_once_under_contention(store: CheckpointStore) -> None:
    store.create("t1", _new(W2))  # W2 never registered a lease: dead
    outcomes: list[ClaimOutcome] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        outcomes.append(store.claim("t1", W2, worker_id(f"c{n}@h", "x"), 5).outcome)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(ClaimOutcome.CLAIMED) == 1
    assert outcomes.count(ClaimOutcome.GONE) == 7
    record = store.get("t1")
    assert record is not None and record.resume_count == 1 and record.status is Status.QUEUED


def test_claim_refuses_a_live_owner_but_not_its_own(store: CheckpointStore) -> None:
    store.register(W1, 30)
    store.create("t1", _new(W1))
    assert store.claim("t1", W1, W2, 5).outcome is ClaimOutcome.GONE
    assert store.claim("t1", W1, W1, 5).outcome is ClaimOutcome.CLAIMED


def _raw(store: CheckpointStore) -> object:
    """Everything the store holds, as stored: to tell that a call changed nothing at all."""
    if isinstance(store, RedisStore):
        keys = sorted(store.client.scan_iter(match=f"{store.prefix}*"))
        return {key: store.client.dump(key) for key in keys}
    conn = store._connection()  # type: ignore[attr-defined]
    return [
        conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in ("checkpoints", "workers")
    ]


def test_a_claim_fenced_on_a_peek_changes_nothing_once_the_record_moved_on(store: CheckpointStore) -> None:
    """A worker claims its lost run's checkpoint; another of its pool processes took it over meanwhile.

    Same owner, so only the fence tells the live run from the lost one.
    """
    store.register(W1, 30)
    store.create("t1", _new(W1))  # the lost run, pid 4242
    seen = store.peek("t1")
    assert store.takeover("t1", seen.fence, W1, W1, 5151) is not None  # a live run, in another process
    before = _raw(store)
    for max_resumes in (5, 0):  # neither claimed nor poisoned
        refused = store.claim("t1", W1, W1, max_resumes, expected_fence=seen.fence)
        assert refused.outcome is ClaimOutcome.GONE
        [batched] = store.claim_many([ClaimRequest("t1", W1, max_resumes, seen.fence)], W1)
        assert isinstance(batched, Claim) and batched.outcome is ClaimOutcome.GONE
    assert _raw(store) == before
    claimed = store.claim("t1", W1, W1, 5, expected_fence=seen.fence + 1)
    assert claimed.outcome is ClaimOutcome.CLAIMED and claimed.record is not None
    assert claimed.record.fence == seen.fence + 2


#: A record field each claim compares or counts with, and what makes the claim reach it.
CLAIM_FIELDS = {
    "fence": "dead owner",
    "resumes": "dead owner",
    "parked_at": "released",
    "resend_at": "waiting",
    "resends": "waiting",
}
#: The SQLite column of a record field, where its name differs.
SQLITE_COLUMNS = {"resumes": "resume_count"}


def _claimable(store: CheckpointStore, how: str) -> ClaimRequest:
    """A record ``t1`` that a claim by W1 would take; the request that would."""
    if how == "dead owner":
        store.create("t1", _new(W2))  # W2 never registered: dead
        return ClaimRequest("t1", W2, 5)
    store.create("t1", _new(W2))
    if how == "released":
        assert store.park("t1", 1, W2, Status.RELEASED)
    else:
        assert store.park("t1", 1, W2, Status.WAITING, resend_after=0)
    return ClaimRequest("t1", "", 5)


def _corrupt(store: CheckpointStore, field: str, value: str) -> str:
    """Write ``value`` into the field of record ``t1``, as no store would; the field's name there."""
    if isinstance(store, RedisStore):  # a raw write, as any client could make it
        store.client.hset(store.record_key("t1"), field, value)
        return field
    column = SQLITE_COLUMNS.get(field, field)
    with store._transaction("break") as conn:  # type: ignore[attr-defined]
        conn.execute(f"UPDATE checkpoints SET {column} = ? WHERE task_id = 't1'", (value,))
    return column


@pytest.mark.parametrize("field", sorted(CLAIM_FIELDS))
def test_a_claim_reports_a_record_it_cannot_read_and_leaves_it_as_it_was(
    store: CheckpointStore, field: str
) -> None:
    """Not a store error halfway through the claim (a Lua script keeps the writes it made)."""
    request = _claimable(store, CLAIM_FIELDS[field])
    named = _corrupt(store, field, "many")
    before = _raw(store)
    with pytest.raises(CorruptCheckpoint, match=rf"t1: .*\b{named}\b"):
        store.claim(request.task_id, request.expected_owner, W1, 5, released_grace=0, queued_grace=0)
    [batched] = store.claim_many([request], W1, released_grace=0, queued_grace=0)
    assert isinstance(batched, CorruptCheckpoint)
    assert _raw(store) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fence", "1.5"),
        ("fence", "07"),
        ("resumes", "0.5"),
        ("resumes", "99999999999999999999"),
        ("resends", "1e3"),
    ],
)
def test_a_redis_claim_checks_integers_as_hincrby_reads_them_before_writing(
    redis_store: RedisStore, redis_admin: redis.Redis, field: str, value: str
) -> None:
    """Numbers to Lua, not integers to HINCRBY: the claim would fail at its first HINCRBY."""
    request = _claimable(redis_store, CLAIM_FIELDS[field])
    redis_admin.hset(redis_store.record_key("t1"), field, value)
    before = _raw(redis_store)
    with pytest.raises(CorruptCheckpoint, match=f"{field} is not an integer"):
        redis_store.claim(request.task_id, request.expected_owner, W1, 5, released_grace=0, queued_grace=0)
    assert _raw(redis_store) == before


@pytest.mark.parametrize("key", ["save", "call"])
def test_a_redis_claim_checks_the_keys_it_reads_back_before_writing(
    redis_store: RedisStore, redis_admin: redis.Redis, key: str
) -> None:
    request = _claimable(redis_store, "dead owner")
    if key == "save":
        redis_admin.delete(redis_store.save_key("t1", 1))
        redis_admin.set(redis_store.save_key("t1", 1), "a string, not a hash")
    else:
        redis_admin.delete(redis_store.call_key("t1"))
        redis_admin.hset(redis_store.call_key("t1"), "env", "a hash, not a string")
    before = _raw(redis_store)
    with pytest.raises(CorruptCheckpoint, match=r"t1: .* is a "):
        redis_store.claim(request.task_id, request.expected_owner, W1, 5)
    assert _raw(redis_store) == before


def test_a_claim_whose_message_could_not_be_sent_gives_its_resume_back(store: CheckpointStore) -> None:
    store.create("t1", _new(W2))  # W2 died: interrupted once
    for _ in range(3):  # three scans in a broker outage: each claims, fails to publish, gives back
        claim = store.claim("t1", W2, W1, 1)
        assert claim.outcome is ClaimOutcome.CLAIMED and claim.record is not None
        assert claim.record.resume_count == 1
        assert store.park("t1", claim.record.fence, W1, Status.RELEASED, resume_count=0)
        record = store.get("t1")
        assert record is not None and record.status is Status.RELEASED and record.resume_count == 0
    # With max_resumes=1, a count kept by those claims would have poisoned it by the second.


def test_claim_poisons_after_max_resumes(store: CheckpointStore) -> None:
    store.create("t1", _new(W2))
    first = store.claim("t1", W2, W1, 1)
    assert first.outcome is ClaimOutcome.CLAIMED
    assert first.record is not None
    taken = store.takeover("t1", first.record.fence, W1, W2, 7)
    assert taken is not None
    poisoned = store.claim("t1", W2, W1, 1)
    assert poisoned.outcome is ClaimOutcome.POISONED
    record = store.get("t1")
    assert record is not None and record.status is Status.POISONED
    assert "t1" not in {c.task_id for c in store.interrupted()}


def test_park_waiting_is_not_resumed_by_scans(store: CheckpointStore) -> None:
    store.create("t1", _new(W2))
    assert store.park("t1", 1, W2, Status.WAITING)
    assert store.interrupted() == []
    peek = store.peek("t1")
    assert peek.status is Status.WAITING and peek.owner == ""


def test_discard_removes_only_at_its_fence_and_marks_nothing_done(store: CheckpointStore) -> None:
    """What ``self.replace()`` does: the replacement runs under the same task id."""
    store.register(W1, 30)
    store.create("t1", _new(W1))
    taken = store.takeover("t1", 1, W1, W2, 7)  # a newer run
    assert taken is not None
    before = _raw(store)
    assert not store.discard("t1", 1, W1), "a stale fence discards nothing"
    assert _raw(store) == before
    assert store.discard("t1", taken.fence, W2)
    assert store.get("t1") is None and store.held_by(W2) == []
    gone = store.peek("t1")
    assert not gone.exists and not gone.done, "a done marker would drop the replacement"
    if isinstance(store, RedisStore):  # nothing of the task is left: record, save, call, set entries
        keys = {key.decode() for key in store.client.scan_iter(match=f"{store.prefix}*")}
        assert keys <= {store.workers_key, store.owners_key}, keys
    assert not store.discard("t1", taken.fence, W2)
    assert store.create("t1", _new(W1)) == 1, "the replacement starts afresh"


def test_delete_and_scan(store: CheckpointStore) -> None:
    store.create("a", _new(W1))
    store.create("b", _new(W1))
    assert {r.task_id for r in store.scan() if not isinstance(r, CorruptEntry)} == {"a", "b"}
    assert store.delete("a")
    assert not store.delete("a")
    assert store.get("a") is None


def _break(store: CheckpointStore, task_id: str) -> None:
    """Leave an unreadable entry for ``task_id``, the way each store can hold one."""
    if isinstance(store, RedisStore):
        store.client.set(store.record_key(task_id), "a string, not a hash")
    else:
        store.create(task_id, _new(W1))
        with store._transaction("break") as conn:  # type: ignore[attr-defined]
            conn.execute("UPDATE checkpoints SET status = 'bogus' WHERE task_id = ?", (task_id,))


def test_peek_reports_an_unknown_status_as_corrupt(store: CheckpointStore) -> None:
    store.create("t1", _new(W1))
    if isinstance(store, RedisStore):
        store.client.hset(store.record_key("t1"), "status", "paused")
    else:
        with store._transaction("break") as conn:  # type: ignore[attr-defined]
            conn.execute("UPDATE checkpoints SET status = 'paused' WHERE task_id = 't1'")
    with pytest.raises(CorruptCheckpoint, match="t1"):
        store.peek("t1")


def test_get_many_reads_in_order_and_reports_missing_and_unreadable(store: CheckpointStore) -> None:
    store.create("a", _new(W1, b'{"i": 1}'))
    store.create("b", _new(W2, b'{"i": 2}'))
    _break(store, "broken")
    got = store.get_many(["b", "nope", "broken", "a"])
    assert isinstance(got[0], CheckpointRecord) and got[0].state.payload == b'{"i": 2}'
    assert got[1] is None
    assert isinstance(got[2], CorruptEntry) and "broken" in got[2].key
    assert isinstance(got[3], CheckpointRecord) and got[3].owner == W1
    assert store.get_many([]) == []
    with pytest.raises(CorruptCheckpoint):
        store.get("broken")  # the same entry, read alone


def test_leases(store: CheckpointStore) -> None:
    store.register(W1, 30)
    leases = store.leases()
    assert leases[W1] > time.time() + 20


def test_a_released_checkpoint_is_left_to_its_requeued_message_for_a_grace_period(
    store: CheckpointStore,
) -> None:
    store.create("t1", _new(W1))
    store.park("t1", 1, W1, Status.RELEASED)
    assert store.claim("t1", "", W2, 5, released_grace=60).outcome is ClaimOutcome.GONE
    assert store.claim("t1", "", W2, 5, released_grace=0).outcome is ClaimOutcome.CLAIMED


def test_a_reenqueued_checkpoint_is_sent_again_only_after_its_grace_and_not_as_a_resume(
    store: CheckpointStore,
) -> None:
    store.create("t1", _new(W2))  # W2 never registered: dead
    claimed = store.claim("t1", W2, W1, 5)
    assert claimed.record is not None and claimed.record.resume_count == 1
    assert store.park("t1", claimed.record.fence, W1, Status.QUEUED)  # its message is in the broker
    assert [c.task_id for c in store.interrupted()] == ["t1"]
    assert store.claim("t1", "", W1, 5).outcome is ClaimOutcome.GONE, "no re-send without a grace"
    assert store.claim("t1", "", W1, 5, queued_grace=60).outcome is ClaimOutcome.GONE
    again = store.claim("t1", "", W1, 5, queued_grace=0)
    assert again.outcome is ClaimOutcome.CLAIMED and again.record is not None
    assert again.record.resume_count == 1, "a re-send is not a resume"
    assert again.record.fence > claimed.record.fence


def test_each_resend_doubles_the_wait_before_the_next_until_a_run_starts(store: CheckpointStore) -> None:
    """A task whose queue no worker reads is re-sent after 1, 2, 4... graces, not every grace."""
    grace = 0.2
    store.create("t1", _new(W2))  # W2 never registered: dead
    claimed = store.claim("t1", W2, W1, 5)
    assert claimed.record is not None and claimed.record.resends == 0
    fence = claimed.record.fence

    def resend_after_parking() -> tuple[float, CheckpointRecord]:
        started = time.monotonic()  # before the park: a lower bound of the wait
        assert store.park("t1", fence, W1, Status.QUEUED)
        while True:
            again = store.claim("t1", "", W1, 5, queued_grace=grace)
            if again.outcome is ClaimOutcome.CLAIMED and again.record is not None:
                return time.monotonic() - started, again.record
            assert time.monotonic() - started < 30, "never sent again"
            time.sleep(0.02)

    for resends in (1, 2, 3):
        waited, record = resend_after_parking()
        assert record.resends == resends
        assert waited >= grace * 2 ** (resends - 1) - 0.01, f"re-send {resends} came after {waited:.3f} s"
        assert record.resume_count == 1, "a re-send is not a resume"
        fence = record.fence

    taken = store.takeover("t1", fence, "", W1, 1)  # a run started: the queue is read
    assert taken is not None and taken.resends == 0
    assert store.park("t1", taken.fence, W1, Status.QUEUED)
    time.sleep(grace + 0.05)  # one grace, where three re-sends without a run would need eight
    again = store.claim("t1", "", W1, 5, queued_grace=grace)
    assert again.outcome is ClaimOutcome.CLAIMED, "the doubling starts over once a run started"
    assert again.record is not None and again.record.resends == 1


def test_a_waiting_checkpoint_is_sent_again_only_once_its_retry_is_overdue_and_not_as_a_resume(
    store: CheckpointStore,
) -> None:
    store.register(W1, 30)
    store.register(W2, 30)
    store.create("pending", _new(W1))
    assert store.park("pending", 1, W1, Status.WAITING, resend_after=60)
    store.create("lost", _new(W1, b'{"i": 7}'))
    assert store.update("lost", 1, _state(b'{"i": 8}'), 0.8, time.time()) == 2
    assert store.park("lost", 1, W1, Status.WAITING, resend_after=0)
    assert [(c.task_id, c.owner) for c in store.interrupted()] == [("lost", "")]
    assert store.claim("pending", "", W2, 5, queued_grace=0).outcome is ClaimOutcome.GONE
    assert store.claim("lost", "", W2, 5).outcome is ClaimOutcome.GONE, "no re-send when re-sends are off"
    claimed = store.claim("lost", "", W2, 5, queued_grace=300)
    assert claimed.outcome is ClaimOutcome.CLAIMED and claimed.record is not None
    record = claimed.record
    assert (record.status, record.owner, record.resume_count) == (Status.QUEUED, W2, 0)
    assert record.state.payload == b'{"i": 8}' and record.saves == 2
    assert store.claim("lost", "", W1, 5, queued_grace=300).outcome is ClaimOutcome.GONE, "claimed once"
    assert store.interrupted() == [], "a claimed one is its claimer's; the pending one is not due"


def test_a_retry_that_starts_or_is_purged_leaves_nothing_to_send_again(store: CheckpointStore) -> None:
    store.register(W1, 30)
    for task_id in ("started", "purged"):
        store.create(task_id, _new(W1))
        assert store.park(task_id, 1, W1, Status.WAITING, resend_after=0)
    assert store.takeover("started", 2, "", W1, 1) is not None
    assert store.delete("purged")
    assert store.interrupted() == []
    assert store.claim("started", "", W2, 5, queued_grace=0).outcome is ClaimOutcome.GONE
    record = store.get("started")
    assert record is not None and record.status is Status.RUNNING and record.owner == W1
    assert store.park("started", record.fence, W1, Status.WAITING)  # no resend_after: never
    assert store.interrupted() == []


def test_a_retry_can_record_its_own_call_in_place_of_the_first(store: CheckpointStore) -> None:
    store.create("t1", _new(W1))
    retry_call = _state(b'{"args": [2], "kwargs": {}, "options": {"retries": 1}}')
    assert store.park("t1", 1, W1, Status.WAITING, resend_after=0, call=retry_call)
    record = store.get("t1")
    assert record is not None and record.envelope == retry_call
    assert store.get_many(["t1"])[0] == record
    taken = store.takeover("t1", 2, "", W2, 1)
    assert taken is not None and taken.envelope == retry_call
    assert store.park("t1", taken.fence, W2, Status.WAITING, resend_after=0)
    kept = store.get("t1")
    assert kept is not None and kept.envelope == retry_call, "no new call: the recorded one stays"


def test_claims_and_parks_sent_together_decide_each_checkpoint_as_one_at_a_time_would(
    store: CheckpointStore,
) -> None:
    scanner = worker_id("scanner@h", "x")
    store.register(W1, 30)
    store.register(scanner, 30)
    store.create("dead", _new(W2))  # W2 never registered: dead
    store.create("live", _new(W1))
    store.create("released", _new(W1))
    assert store.park("released", 1, W1, Status.RELEASED)
    requests = [
        ClaimRequest("dead", W2, 5),
        ClaimRequest("live", W1, 5),  # its owner lives: not claimable
        ClaimRequest("missing", W2, 5),
        ClaimRequest("released", "", 0),  # resumed 0 times, at most 0: poisoned
    ]
    claims = store.claim_many(requests, scanner, released_grace=0)
    outcomes = [c.outcome if isinstance(c, Claim) else c for c in claims]
    assert outcomes == [ClaimOutcome.CLAIMED, ClaimOutcome.GONE, ClaimOutcome.GONE, ClaimOutcome.POISONED]
    claimed = claims[0]
    assert isinstance(claimed, Claim) and claimed.record is not None and claimed.record.owner == scanner
    assert store.claim_many([], scanner) == [] and store.park_many([], scanner, Status.QUEUED) == []

    parks = [("dead", claimed.record.fence), ("live", 99)]
    assert store.park_many(parks, scanner, Status.QUEUED) == [True, False]
    dead, live = store.get("dead"), store.get("live")
    assert dead is not None and (dead.status, dead.owner) == (Status.QUEUED, "")
    assert live is not None and (live.status, live.owner) == (Status.RUNNING, W1), (
        "a stale fence parks nothing"
    )


def test_an_overdue_retry_is_claimed_exactly_once_under_contention(store: CheckpointStore) -> None:
    store.create("t1", _new(W1))
    assert store.park("t1", 1, W1, Status.WAITING, resend_after=0)
    outcomes: list[ClaimOutcome] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        outcomes.append(store.claim("t1", "", worker_id(f"c{n}@h", "x"), 5, queued_grace=300).outcome)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.value for o in outcomes) == ["claimed"] + ["gone"] * 7


def test_a_plugin_store_missing_protocol_methods_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import celery_checkpoint.stores as stores

    class OldStore:
        """A plugin store written before held_by and get_many existed."""

        def __init__(self, url: str) -> None:
            self.url = url

    for name in stores.PROTOCOL_METHODS:
        if name not in ("held_by", "get_many"):
            setattr(OldStore, name, lambda self, *args, **kwargs: None)
    monkeypatch.setattr(stores, "store_class", lambda scheme: OldStore)
    with pytest.raises(TypeError, match=r"'old' store .*OldStore.* lacks held_by, get_many"):
        create_store("old://somewhere")
