"""`celery -A app checkpoint ...` through Celery's real command line, on real stores.

Most tests run Celery's own ``celery`` click group in-process (so the
``celery.commands`` entry point is what finds our group); one runs
``python -m celery`` in a subprocess; the Redis tests use a private
redis-server on a free port.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from celery.bin.celery import celery as celery_command
from click.testing import CliRunner, Result

from celery_checkpoint import CheckpointTask
from celery_checkpoint.record import EncodedState, NewCheckpoint, Status, encode, worker_id
from celery_checkpoint.resume import Outcome, Resumer
from celery_checkpoint.stores import CheckpointStore, create_store
from celery_checkpoint.stores.redis import RedisStore
from tests.apps import cliapp
from tests.harness import ROOT, RedisServer, free_port

CRUNCH = "tests.apps.cliapp.crunch"
PLAIN = "tests.apps.cliapp.plain"
LIVE = worker_id("celery@live", "aaaa")
DEAD = worker_id("celery@dead", "bbbb")


# -- helpers -----------------------------------------------------------------


def cli(*args: str, input: str | None = None) -> Result:
    """``celery -A tests.apps.cliapp checkpoint <args>``, in this process."""
    runner = CliRunner()
    return runner.invoke(
        celery_command, ["-A", "tests.apps.cliapp", "checkpoint", *args], input=input, catch_exceptions=False
    )


def put(
    store: CheckpointStore,
    state: Any,
    *,
    owner: str = DEAD,
    name: str = CRUNCH,
    args: tuple[Any, ...] = (10,),
    task_id: str | None = None,
    encoded: EncodedState | None = None,
) -> tuple[str, int]:
    """A first save, as a run of ``name`` owned by ``owner`` writes it; returns (task id, fence)."""
    task_id = task_id or uuid.uuid4().hex
    state_bytes = encoded or encode(state, "json", what="state", task_id=task_id, limit=1 << 20)
    call = {"args": list(args), "kwargs": {}, "options": {"task_id": task_id}}
    envelope = encode(call, "json", what="call", task_id=task_id, limit=1 << 20)
    new = NewCheckpoint(name, owner, 4242, state_bytes, envelope, 0.4, time.time() - 90)
    fence = store.create(task_id, new)
    assert fence is not None
    return task_id, fence


def parked(store: CheckpointStore, status: Status, **kw: Any) -> str:
    task_id, fence = put(store, {"i": 1}, **kw)
    assert store.park(task_id, fence, kw.get("owner", DEAD), status)
    return task_id


def listed(*args: str) -> dict[str, dict[str, Any]]:
    result = cli("list", "--json", *args)
    assert result.exit_code in (0, 1), result.output
    return {entry["task_id"] or entry["key"]: entry for entry in json.loads(result.stdout)}


def published(app: Any = cliapp.app) -> dict[str, Any]:
    """Every message ``resume`` sent to the app's in-memory broker, by task id (drains it)."""
    messages: dict[str, Any] = {}
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("celery")
        try:
            while True:
                message = queue.get(timeout=0.2)
                message.ack()
                messages[message.headers["id"]] = message
        except queue.Empty:
            return messages
        finally:
            queue.close()


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_task_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each task reads its settings once per process; each test sets its own store."""
    for task in cliapp.app.tasks.values():
        if isinstance(task, CheckpointTask):
            monkeypatch.setattr(task, "_checkpoint_config_cache", None)


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite store file, configured as the app's ``checkpoint_store_url``."""
    url = f"sqlite:///{tmp_path / 'checkpoints.db'}"
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_store_url", url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[CheckpointStore]:
    store = create_store(store_url)
    store.register(LIVE, 60)
    yield store
    store.close()


@pytest.fixture
def every_state(store: CheckpointStore, tmp_path: Path) -> dict[str, str]:
    """One checkpoint in each state the CLI knows; returns state -> task id."""
    ids = {
        "running": put(store, {"i": 4, "total": 10}, owner=LIVE)[0],
        "interrupted": put(store, {"i": 3, "total": 6})[0],
        "released": parked(store, Status.RELEASED),
        "waiting": parked(store, Status.WAITING, owner=LIVE),
        "poisoned": parked(store, Status.POISONED),
    }
    queued, _ = put(store, {"i": 2})
    claim = store.claim(queued, DEAD, LIVE, 5)
    assert claim.record is not None and store.park(queued, claim.record.fence, LIVE, Status.QUEUED)
    ids["queued"] = queued
    ids["corrupt"] = corrupt_row(tmp_path / "checkpoints.db")
    return ids


def corrupt_row(path: Path) -> str:
    """A row no version of the store writes: a status it does not know."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO checkpoints VALUES ('broken', 'x', 'bogus', '', 0, 1, 1, 0, NULL, 0, 0, "
            "x'00', 'application/json', 'utf-8', x'00', 'application/json', 'utf-8', 0, NULL, 0)"
        )
    return "broken"


# -- list --------------------------------------------------------------------


def test_list_shows_one_row_per_checkpoint_with_its_state(every_state: dict[str, str]) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["TASK", "ID", "NAME", "STATE"]
    for state, task_id in every_state.items():
        row = next(line for line in lines if line.startswith(task_id))
        assert ("interrupted" if state == "released" else state) in row.split()
    running = next(line for line in lines if line.startswith(every_state["running"]))
    assert "celery@live" in running and "40%" in running and "1m ago" in running
    assert "broken: task broken: checkpoint row is malformed: unknown checkpoint status 'bogus'" in (
        result.stdout
    )


def test_list_json_is_one_object_per_checkpoint(every_state: dict[str, str], store: CheckpointStore) -> None:
    entries = listed()
    states = {task_id: entry["state"] for task_id, entry in entries.items()}
    assert states == {
        task_id: ("interrupted" if s == "released" else s) for s, task_id in every_state.items()
    }
    running = entries[every_state["running"]]
    record = store.get(every_state["running"])
    assert record is not None
    assert running == {
        "task_id": record.task_id,
        "task_name": CRUNCH,
        "state": "running",
        "status": "running",
        "owner": "celery@live",
        "owner_id": LIVE,
        "progress": 0.4,
        "saves": 1,
        "resume_count": 0,
        "saved_at": record.saved_at,
        "saved_at_iso": running["saved_at_iso"],
        "created_at": record.created_at,
        "resend_at": None,
        "resends": 0,
        "size": len(record.state.payload),
        "reason": None,
        "key": None,
    }
    assert running["saved_at_iso"].endswith("+00:00")
    assert entries["broken"]["reason"].endswith("unknown checkpoint status 'bogus'")
    assert entries[every_state["queued"]]["resume_count"] == 1


def test_list_filters_by_state_and_task_name(every_state: dict[str, str], store: CheckpointStore) -> None:
    plain = put(store, {"x": 1}, name=PLAIN)[0]
    interrupted = {every_state["interrupted"], every_state["released"], plain}
    assert set(listed("--state", "interrupted")) == interrupted
    assert set(listed("--state", "running", "--state", "waiting")) == {
        every_state["running"],
        every_state["waiting"],
    }
    assert set(listed("--task", PLAIN)) == {plain}
    assert set(listed("--task", PLAIN, "--state", "corrupt")) == set()


def test_list_exits_1_when_nothing_matches(store: CheckpointStore) -> None:
    result = cli("list")
    assert (result.exit_code, result.stdout.strip()) == (1, "No checkpoints.")
    result = cli("list", "--json", "--state", "poisoned")
    assert (result.exit_code, json.loads(result.stdout)) == (1, [])


# -- show --------------------------------------------------------------------


def test_show_prints_metadata_call_and_decoded_state(every_state: dict[str, str]) -> None:
    task_id = every_state["interrupted"]
    result = cli("show", task_id, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["state"] == "interrupted" and detail["owner"] == "celery@dead"
    assert detail["saved_state"] == {"i": 3, "total": 6} and detail["saved_state_error"] is None
    assert detail["call"] == {"args": [10], "kwargs": {}, "options": {"task_id": task_id}}

    text = cli("show", task_id).stdout
    assert f"Checkpoint {task_id}" in text
    assert "interrupted (status running)" in text
    assert '"total": 6' in text and '"task_id": "' + task_id + '"' in text


def test_show_and_resume_say_when_a_waiting_checkpoint_is_sent_again(store: CheckpointStore) -> None:
    task_id, fence = put(store, {"i": 5}, owner=LIVE)
    before = time.time()
    assert store.park(task_id, fence, LIVE, Status.WAITING, resend_after=600)
    detail = json.loads(cli("show", task_id, "--json").stdout)
    assert detail["state"] == "waiting"
    assert before + 600 <= detail["resend_at"] <= time.time() + 600
    assert "if its retry has not started" in cli("show", task_id).stdout
    refused = cli("resume", task_id)
    assert refused.exit_code != 0 and "A worker sends the retry again at 20" in refused.stderr
    assert published() == {}, "nothing was sent"


def test_a_scan_sends_an_unstarted_task_again_and_waits_longer_each_time(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's scan, as the worker runs it, against the app's in-memory broker."""
    grace = 1.0
    task_id, _ = put(store, {"i": 2})
    resumer = Resumer(cliapp.app, store, LIVE, queued_grace=grace)
    assert resumer.scan().outcomes == {task_id: Outcome.RESUMED}, "its owner is dead: a resume"
    assert list(published()) == [task_id]

    time.sleep(grace + 0.05)  # its message never started
    with caplog.at_level(logging.WARNING, logger="celery_checkpoint.resume"):
        assert resumer.scan().outcomes == {task_id: Outcome.RESUMED}
    assert f"task {task_id} ({CRUNCH}): no run has started it since it was last sent" in caplog.text
    assert "sent again (1 times now)" in caplog.text and "waits 2 s" in caplog.text

    time.sleep(grace + 0.05)  # one grace: the next re-send waits two
    assert resumer.scan().outcomes == {task_id: Outcome.GONE}
    assert list(published()) == [task_id], "only the first re-send was published"
    record = store.get(task_id)
    assert record is not None and (record.resume_count, record.resends) == (1, 1)


def test_a_scan_removes_the_checkpoints_of_tasks_that_already_finished(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their runs could not delete them (store down); the result backend, asked once, says they are done."""
    succeeded, failed, unfinished = (put(store, {"i": 3})[0] for _ in range(3))
    backend = cliapp.app.backend
    backend.store_result(succeeded, 55, "SUCCESS")
    backend.store_result(failed, RuntimeError("no"), "FAILURE")
    reads: list[int] = []
    mget = backend.mget
    monkeypatch.setattr(backend, "mget", lambda keys: reads.append(len(keys)) or mget(keys))

    report = Resumer(cliapp.app, store, LIVE).scan()

    assert report.outcomes == {succeeded: Outcome.GONE, failed: Outcome.GONE, unfinished: Outcome.RESUMED}
    assert store.get(succeeded) is None and store.get(failed) is None
    assert list(published()) == [unfinished], "a finished task is never run again"
    assert reads == [3], "one read of the result backend for the batch"


def test_a_scan_resumes_when_the_result_backend_cannot_answer(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task_ids = {put(store, {"i": 3})[0] for _ in range(2)}

    def down(keys: Any) -> Any:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    monkeypatch.setattr(cliapp.app.backend, "mget", down)
    with caplog.at_level(logging.WARNING, logger="celery_checkpoint.results"):
        report = Resumer(cliapp.app, store, LIVE).scan()
    assert report.outcomes == dict.fromkeys(task_ids, Outcome.RESUMED), "the checkpoints decide"
    assert set(published()) == task_ids
    assert "could not say whether 2 interrupted tasks already finished" in caplog.text
    assert "Connection refused" in caplog.text


def test_a_scan_sends_the_call_of_the_record_it_claims_not_one_replaced_since(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the scan's read and its claim, the run retries with new arguments.

    Its owner's lease had lapsed, but its pool process was alive: the record
    is now ``waiting`` with the retry's call, due at once. The claim is made
    at the fence read, so the scan sends nothing this time rather than the
    call it read; the next scan sends the retry's.
    """
    task_id, fence = put(store, {"i": 4}, args=(10,))
    retry = {"args": [11], "kwargs": {}, "options": {"task_id": task_id}}
    retry_call = encode(retry, "json", what="call", task_id=task_id, limit=1 << 20)
    read = store.get_many
    retried: list[str] = []

    def read_then_retry(task_ids: Any) -> Any:
        records = read(task_ids)
        if not retried:
            retried.append(task_id)
            assert store.park(task_id, fence, DEAD, Status.WAITING, resend_after=0.0, call=retry_call)
        return records

    monkeypatch.setattr(store, "get_many", read_then_retry)
    resumer = Resumer(cliapp.app, store, LIVE, queued_grace=60.0)
    assert resumer.scan().outcomes == {task_id: Outcome.GONE}
    assert published() == {}, "the call read before the retry is not sent"
    assert resumer.scan().outcomes == {task_id: Outcome.RESUMED}
    assert [message.payload[0] for message in published().values()] == [[11]]


def test_a_scan_forgets_index_entries_of_checkpoints_deleted_by_hand(
    redis_store: RedisStore, redis_admin: redis.Redis
) -> None:
    """Records deleted outside the store (``redis-cli DEL``, a ``maxmemory`` eviction).

    Their ids stayed in the index the scan lists, read again by every scan,
    and kept their dead owner listed for good.
    """
    redis_store.register(LIVE, 60)
    running, _ = put(redis_store, {"i": 1})  # its owner (DEAD) holds no lease: interrupted
    released = parked(redis_store, Status.RELEASED)
    alive, _ = put(redis_store, {"i": 2}, owner=LIVE)
    for task_id in (running, released):
        assert redis_admin.delete(redis_store.record_key(task_id), redis_store.call_key(task_id)) == 2
    assert sorted(c.task_id for c in redis_store.interrupted()) == sorted([running, released])

    resumer = Resumer(cliapp.app, redis_store, LIVE)
    assert resumer.scan().outcomes == {running: Outcome.GONE, released: Outcome.GONE}
    assert published() == {}
    assert redis_store.interrupted() == [], "listed no more"
    assert resumer.scan().outcomes == {}
    assert DEAD.encode() not in redis_admin.smembers(redis_store.owners_key), "the dead owner is forgotten"
    assert redis_store.get(alive) is not None, "a live run's checkpoint is left alone"


def test_show_counts_the_resends_no_run_has_answered(store: CheckpointStore) -> None:
    task_id, _ = put(store, {"i": 2})
    claim = store.claim(task_id, DEAD, LIVE, 5)
    assert claim.record is not None and store.park(task_id, claim.record.fence, LIVE, Status.QUEUED)
    assert "re-sent" not in cli("show", task_id).stdout
    again = store.claim(task_id, "", LIVE, 5, queued_grace=0)
    assert again.record is not None and store.park(task_id, again.record.fence, LIVE, Status.QUEUED)
    assert json.loads(cli("show", task_id, "--json").stdout)["resends"] == 1
    assert "re-sent:      1 times, no run started since" in cli("show", task_id).stdout


@pytest.mark.parametrize(
    ("encoded", "error"),
    [
        (EncodedState(b"\x80not json at all", "application/json", "utf-8"), "cannot be decoded"),
        (EncodedState(b"\x80\x04K\x01.", "application/x-python-serialize", "binary"), "not accepted"),
    ],
    ids=["garbage", "pickle-not-accepted"],
)
def test_show_never_crashes_on_a_state_it_cannot_decode(
    store: CheckpointStore, encoded: EncodedState, error: str
) -> None:
    task_id, _ = put(store, None, encoded=encoded)
    result = cli("show", task_id, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["saved_state"] is None and error in detail["saved_state_error"]["error"]
    assert detail["saved_state_error"]["preview"].startswith("b'\\x80")
    assert detail["call"]["args"] == [10]
    text = cli("show", task_id).stdout
    assert "cannot be decoded:" in text and "b'\\x80" in text


def test_show_a_corrupt_row_and_a_missing_one(every_state: dict[str, str]) -> None:
    result = cli("show", "broken")
    assert result.exit_code == 0 and "corrupt" in result.stdout and "bogus" in result.stdout
    missing = cli("show", "no-such-task")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "Error: no checkpoint for task no-such-task"


# -- resume ------------------------------------------------------------------


def test_resume_re_enqueues_an_interrupted_task_as_itself(
    every_state: dict[str, str], store: CheckpointStore
) -> None:
    task_id = every_state["interrupted"]
    result = cli("resume", task_id)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"resumed   {task_id}  {CRUNCH}: re-enqueued from save 1 (resume 1)")
    record = store.get(task_id)
    assert record is not None and (record.status, record.resume_count) == (Status.QUEUED, 1)
    message = published()[task_id]
    assert message.headers["task"] == CRUNCH and message.payload[0] == [10]


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ("running", "is running on a live worker (celery@live); not resumed"),
        ("waiting", "is waiting for its Celery retry"),
        ("queued", "is already queued to resume"),
        ("poisoned", "is poisoned"),
        ("corrupt", "is corrupt and cannot be resumed"),
    ],
)
def test_resume_refuses_what_is_not_interrupted(
    every_state: dict[str, str], store: CheckpointStore, state: str, says: str
) -> None:
    task_id = every_state[state]
    before = listed()[task_id]
    result = cli("resume", task_id)
    assert result.exit_code == 1
    assert says in result.stderr and result.stderr.count("\n") == 1
    assert listed()[task_id] == before
    assert task_id not in published()


def test_resume_reports_a_checkpoint_that_is_not_resumable(store: CheckpointStore) -> None:
    task_id, _ = put(store, {"x": 1}, name=PLAIN)
    result = cli("resume", task_id)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"bad       {task_id}  ")
    assert f"task '{PLAIN}' is not a CheckpointTask" in result.stdout
    assert result.stderr == ""  # printed once, not again by logging's last resort
    assert store.get(task_id) is not None


def test_resume_marks_poisoned_after_max_resumes(store: CheckpointStore) -> None:
    """cliapp allows 2 resumes: a checkpoint resumed twice and interrupted again is poisoned."""
    task_id, _ = put(store, {"i": 5})
    first, second = worker_id("celery@a", "1"), worker_id("celery@b", "2")
    assert store.claim(task_id, DEAD, first, 2).record is not None
    assert store.claim(task_id, first, second, 2).record is not None
    result = cli("resume", task_id)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"poisoned  {task_id}  ") and "marked FAILURE" in result.stdout
    record = store.get(task_id)
    assert record is not None and record.status is Status.POISONED
    assert cliapp.app.AsyncResult(task_id).state == "FAILURE"


def test_resume_all_interrupted(every_state: dict[str, str], store: CheckpointStore) -> None:
    result = cli("resume", "--all-interrupted")
    assert result.exit_code == 0, result.output
    resumed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("resumed")}
    assert resumed == {every_state["interrupted"], every_state["released"]}
    assert resumed <= set(published())
    assert listed("--state", "interrupted") == {}
    again = cli("resume", "--all-interrupted")
    assert again.exit_code == 1 and "no interrupted checkpoint" in again.stderr


@pytest.mark.parametrize("args", [[], ["some-id", "--all-interrupted"]])
def test_resume_usage_errors_exit_2(store: CheckpointStore, args: list[str]) -> None:
    result = cli("resume", *args)
    assert result.exit_code == 2 and "give either a TASK_ID or --all-interrupted" in result.stderr


# -- purge -------------------------------------------------------------------


def test_purge_asks_first(every_state: dict[str, str], store: CheckpointStore) -> None:
    task_id = every_state["poisoned"]
    declined = cli("purge", task_id, input="n\n")
    assert declined.exit_code == 1 and "Delete them?" in declined.stdout
    assert store.get(task_id) is not None
    accepted = cli("purge", task_id, input="y\n")
    assert accepted.exit_code == 0 and "deleted 1, kept 0" in accepted.stdout
    assert store.get(task_id) is None


def test_purge_by_state_removes_corrupt_rows_too(every_state: dict[str, str], store: CheckpointStore) -> None:
    result = cli("purge", "--state", "poisoned", "--state", "corrupt", "--yes")
    assert result.exit_code == 0, result.output
    assert "deleted 2, kept 0" in result.stdout
    remaining = listed()
    assert every_state["poisoned"] not in remaining and "broken" not in remaining
    assert len(remaining) == len(every_state) - 2


def test_purge_warns_about_a_live_run(every_state: dict[str, str]) -> None:
    result = cli("purge", every_state["running"], "--yes")
    assert result.exit_code == 0
    assert "its worker is alive: that run stops at its next save" in result.stdout


def test_purge_keeps_an_entry_resumed_while_the_prompt_was_open(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id, _ = put(store, {"i": 3})  # interrupted: its owner has no lease
    real_confirm = click.confirm

    def operator_thinks(*args: Any, **kwargs: Any) -> Any:
        # Meanwhile a worker's scan re-sends it and the resumed run starts on a live worker.
        Resumer(cliapp.app, store, LIVE).scan()
        peek = store.peek(task_id)
        assert store.takeover(task_id, peek.fence, peek.owner, LIVE, 4242) is not None
        return real_confirm(*args, **kwargs)

    monkeypatch.setattr(click, "confirm", operator_thinks)
    result = cli("purge", "--state", "interrupted", input="y\n")
    assert task_id in published()  # the scan's re-send, drained
    assert result.exit_code == 1
    assert f"kept {task_id}: it is running now, not interrupted as listed" in result.stderr
    assert "deleted 0, kept 1" in result.stdout
    record = store.get(task_id)
    assert record is not None and record.owner == LIVE


def test_scans_in_a_broker_outage_do_not_poison_a_task_interrupted_once(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id, _ = put(store, {"i": 1})
    crunch = cliapp.app.tasks[CRUNCH]
    failures: list[Any] = []

    def broker_down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("broker down")

    monkeypatch.setattr(type(crunch), "apply_async", broker_down)
    monkeypatch.setattr(crunch.backend, "mark_as_failure", lambda *a, **k: failures.append(a))
    resumer = Resumer(cliapp.app, store, LIVE)
    scans = crunch.checkpoint_config.max_resumes + 2
    outcomes = [resumer.scan().outcomes[task_id] for _ in range(scans)]
    assert outcomes == [Outcome.FAILED] * scans
    record = store.get(task_id)
    assert record is not None and record.status is Status.RELEASED and record.resume_count == 0
    assert not failures, "a task that was never re-sent was marked FAILURE"


def test_one_tasks_invalid_settings_stop_only_its_own_resume(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    bad, _ = put(store, {"i": 1}, name="tests.apps.cliapp.misconfigured")
    good, _ = put(store, {"i": 1})
    outcomes = Resumer(cliapp.app, store, LIVE).scan().outcomes
    assert outcomes == {bad: Outcome.BAD, good: Outcome.RESUMED}
    assert set(published()) == {good}
    assert "checkpoint_throttle must be a number, not '5'" in caplog.text
    assert store.get(bad) is not None


def test_purge_nothing_matched_and_usage(store: CheckpointStore) -> None:
    assert cli("purge", "--state", "poisoned", "--yes").exit_code == 1
    assert cli("purge", "nope", "--yes").exit_code == 1
    assert cli("purge", "--yes").exit_code == 2


# -- store selection and errors ----------------------------------------------


def test_store_option_overrides_the_app_setting(
    store: CheckpointStore, store_url: str, monkeypatch: Any
) -> None:
    task_id, _ = put(store, {"i": 1})
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_store_url", None)
    assert set(listed("--store", store_url)) == {task_id}
    group_level = CliRunner().invoke(
        celery_command, ["-A", "tests.apps.cliapp", "checkpoint", "--store", store_url, "list", "--json"]
    )
    assert [entry["task_id"] for entry in json.loads(group_level.stdout)] == [task_id]


def test_no_store_configured_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_store_url", None)
    result = cli("list")
    assert result.exit_code == 3
    assert result.stderr == (
        "Error: no checkpoint store: set checkpoint_store_url in the app's config or pass --store URL\n"
    )


def test_a_setting_of_the_wrong_kind_exits_3_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_lease_ttl", "30")  # from an env var, say
    result = cli("list")
    assert result.exit_code == 3
    assert result.stderr == (
        "Error: invalid checkpoint settings: checkpoint_lease_ttl must be a number, not '30'\n"
    )


def test_a_store_class_of_another_protocol_exits_3_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class OldStore:  # a third-party store written for an older protocol
        def __init__(self, url: str) -> None:
            self.url = url

    monkeypatch.setattr("celery_checkpoint.stores.store_class", lambda scheme: OldStore)
    result = cli("list", "--store", "oldstore://x")
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: checkpoint store oldstore://x: ")
    assert "Traceback" not in result.output


def test_missing_sqlite_file_exits_3_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = cli("list", "--store", f"sqlite:///{path}")
    assert result.exit_code == 3 and f"sqlite:///{path}" in result.stderr
    assert not path.exists()


def test_unknown_scheme_exits_3_and_hides_the_password() -> None:
    result = cli("show", "x", "--store", "nosuch://user:s3cret@host/0")
    assert result.exit_code == 3
    assert "nosuch://user:***@host/0" in result.stderr and "s3cret" not in result.stderr


def test_entry_point_works_from_a_real_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    store = create_store(url)
    task_id, _ = put(store, {"i": 2})
    env = {**os.environ, "CLIAPP_STORE_URL": url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.apps.cliapp", "checkpoint", "list", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    [entry] = json.loads(proc.stdout)
    assert (entry["task_id"], entry["state"], entry["task_name"]) == (task_id, "interrupted", CRUNCH)


# -- several stores: the app's, and a task's own -------------------------------

ELSEWHERE = "tests.apps.cliapp.elsewhere"


def give_elsewhere_its_own_store(
    monkeypatch: pytest.MonkeyPatch, url: str, prefix: str | None = None
) -> None:
    """``@app.task(base=CheckpointTask, checkpoint_store_url=url)``, as a test can set it."""
    task = cliapp.app.tasks[ELSEWHERE]
    monkeypatch.setattr(task, "checkpoint_store_url", url)
    if prefix is not None:
        monkeypatch.setattr(task, "checkpoint_key_prefix", prefix, raising=False)


@pytest.fixture
def own_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The SQLite store the ``elsewhere`` task names as its own."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    give_elsewhere_its_own_store(monkeypatch, url)
    return url


@pytest.fixture
def own(own_url: str) -> Iterator[CheckpointStore]:
    store = create_store(own_url)
    store.register(LIVE, 60)
    yield store
    store.close()


def test_list_covers_the_app_store_and_a_tasks_own_and_names_each(
    store: CheckpointStore, own: CheckpointStore, store_url: str, own_url: str, tmp_path: Path
) -> None:
    app_interrupted, _ = put(store, {"i": 1})
    app_running, _ = put(store, {"i": 2}, owner=LIVE)
    own_interrupted, _ = put(own, {"i": 3}, name=ELSEWHERE)
    own_poisoned = parked(own, Status.POISONED, name=ELSEWHERE)
    corrupt_row(tmp_path / "own.db")

    result = cli("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[-1] == "STORE"
    for task_id, url in [
        (app_interrupted, store_url),
        (app_running, store_url),
        (own_interrupted, own_url),
        (own_poisoned, own_url),
        ("broken", own_url),
    ]:
        row = next(line for line in lines if line.startswith(task_id))
        assert row.endswith(f"  {url}"), row
    assert f"broken in {own_url}: task broken: checkpoint row is malformed" in result.stdout

    entries = listed()
    assert {task_id: entry["store"] for task_id, entry in entries.items()} == {
        app_interrupted: store_url,
        app_running: store_url,
        own_interrupted: own_url,
        own_poisoned: own_url,
        "broken": own_url,
    }
    assert entries[own_interrupted]["task_name"] == ELSEWHERE
    assert set(listed("--state", "interrupted")) == {app_interrupted, own_interrupted}
    assert set(listed("--task", ELSEWHERE)) == {own_interrupted, own_poisoned}


def test_store_option_picks_one_of_several_and_prints_as_for_one(
    store: CheckpointStore, own: CheckpointStore, own_url: str
) -> None:
    put(store, {"i": 1})
    own_id, _ = put(own, {"i": 3}, name=ELSEWHERE)
    result = cli("list", "--store", own_url)
    assert result.exit_code == 0, result.output
    assert "STORE" not in result.stdout and own_url not in result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [own_id]
    [entry] = json.loads(cli("list", "--json", "--store", own_url).stdout)
    assert entry["task_id"] == own_id and "store" not in entry


def test_a_tasks_own_store_is_used_when_the_app_sets_none(
    own: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_store_url", None)
    own_id, _ = put(own, {"i": 3}, name=ELSEWHERE)
    result = cli("list")
    assert result.exit_code == 0, result.output
    assert "STORE" not in result.stdout, "one store: the table is the usual one"
    assert result.stdout.splitlines()[1].startswith(own_id)


def test_stores_that_differ_only_by_a_key_prefix_sqlite_ignores_are_one(
    store: CheckpointStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    give_elsewhere_its_own_store(monkeypatch, store_url, prefix="other:")
    task_id, _ = put(store, {"i": 1})
    assert [entry["task_id"] for entry in json.loads(cli("list", "--json").stdout)] == [task_id]


def test_show_finds_the_id_in_the_store_that_holds_it_and_says_which(
    store: CheckpointStore, own: CheckpointStore, store_url: str, own_url: str
) -> None:
    put(store, {"i": 1})
    task_id, _ = put(own, {"i": 3, "total": 6}, name=ELSEWHERE)
    result = cli("show", task_id)
    assert result.exit_code == 0, result.output
    assert f"  store:        {own_url}\n  task:         {ELSEWHERE}\n" in result.stdout
    assert '"total": 6' in result.stdout and result.stderr == ""
    detail = json.loads(cli("show", task_id, "--json").stdout)
    assert detail["store"] == own_url and detail["saved_state"] == {"i": 3, "total": 6}

    missing = cli("show", "no-such-task")
    assert missing.exit_code == 1
    assert missing.stderr == f"Error: no checkpoint for task no-such-task in {store_url}, {own_url}\n"


def test_an_id_in_two_stores_is_shown_from_the_first_and_never_resumed_or_purged_blindly(
    store: CheckpointStore, own: CheckpointStore, store_url: str, own_url: str
) -> None:
    """A task whose store setting changed while it had a checkpoint, say."""
    task_id, _ = put(store, {"i": 1})
    put(own, {"i": 2}, name=ELSEWHERE, task_id=task_id)

    shown = cli("show", task_id, "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["store"] == store_url
    assert f"also has a checkpoint in {own_url} (see it with --store URL)" in shown.stderr

    ambiguous = f"Error: task {task_id} has a checkpoint in 2 stores ({store_url}, {own_url}); "
    for args in (["resume", task_id], ["purge", task_id, "--yes"]):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr == ambiguous + "choose one with --store URL\n"
    assert store.get(task_id) is not None and own.get(task_id) is not None
    assert published() == {}

    picked = cli("resume", task_id, "--store", own_url)
    assert picked.exit_code == 0, picked.output
    record = own.get(task_id)
    assert record is not None and record.status is Status.QUEUED
    app_record = store.get(task_id)
    assert app_record is not None and app_record.status is Status.RUNNING, "the other one is untouched"
    assert list(published()) == [task_id]


def test_resume_claims_each_checkpoint_in_the_store_that_holds_it(
    store: CheckpointStore, own: CheckpointStore, own_url: str
) -> None:
    app_id, _ = put(store, {"i": 1})
    own_id, _ = put(own, {"i": 3}, name=ELSEWHERE, args=(7,))
    own_running, _ = put(own, {"i": 1}, name=ELSEWHERE, owner=LIVE)

    result = cli("resume", "--all-interrupted")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(maxsplit=2)[1:] for line in result.stdout.splitlines())
    assert set(lines) == {app_id, own_id}
    assert lines[own_id] == f"{ELSEWHERE}: re-enqueued from save 1 (resume 1)  (in {own_url})"
    for each, task_id in ((store, app_id), (own, own_id)):
        record = each.get(task_id)
        assert record is not None and (record.status, record.resume_count) == (Status.QUEUED, 1)
    messages = published()
    assert set(messages) == {app_id, own_id}
    assert messages[own_id].headers["task"] == ELSEWHERE and messages[own_id].payload[0] == [7]
    claimers = {owner for owner in own.leases() if "-cli|" in owner}
    assert len(claimers) == 1, "the CLI held a lease in the task's store while it claimed there"
    assert own.leases()[claimers.pop()] < time.time(), "and ended it"

    single_id, _ = put(own, {"i": 4}, name=ELSEWHERE)
    single = cli("resume", single_id)
    assert single.exit_code == 0, single.output
    assert single.stdout.startswith(f"resumed   {single_id}  {ELSEWHERE}: re-enqueued from save 1")
    record = own.get(single_id)
    assert record is not None and record.status is Status.QUEUED
    refused = cli("resume", own_running)
    assert refused.exit_code == 1 and "is running on a live worker (celery@live)" in refused.stderr
    assert list(published()) == [single_id]


def test_purge_deletes_each_checkpoint_in_the_store_that_holds_it(
    store: CheckpointStore, own: CheckpointStore, store_url: str, own_url: str
) -> None:
    app_poisoned = parked(store, Status.POISONED)
    own_poisoned = parked(own, Status.POISONED, name=ELSEWHERE)
    own_kept, _ = put(own, {"i": 1}, name=ELSEWHERE)

    result = cli("purge", "--state", "poisoned", input="y\n")
    assert result.exit_code == 0, result.output
    assert "2 checkpoint(s) to delete:" in result.stdout
    assert f"  {app_poisoned}  {CRUNCH}  poisoned  (in {store_url})" in result.stdout
    assert f"  {own_poisoned}  {ELSEWHERE}  poisoned  (in {own_url})" in result.stdout
    assert "deleted 2, kept 0" in result.stdout
    assert store.get(app_poisoned) is None and own.get(own_poisoned) is None

    by_id = cli("purge", own_kept, "--yes")
    assert by_id.exit_code == 0 and "deleted 1, kept 0" in by_id.stdout
    assert own.get(own_kept) is None


def test_purge_names_the_store_of_an_entry_it_keeps(
    store: CheckpointStore, own: CheckpointStore, own_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id, _ = put(own, {"i": 3}, name=ELSEWHERE)
    real_confirm = click.confirm

    def meanwhile_a_run_takes_it_over(*args: Any, **kwargs: Any) -> Any:
        peek = own.peek(task_id)
        assert own.takeover(task_id, peek.fence, peek.owner, LIVE, 4242) is not None
        return real_confirm(*args, **kwargs)

    monkeypatch.setattr(click, "confirm", meanwhile_a_run_takes_it_over)
    result = cli("purge", "--state", "interrupted", input="y\n")
    assert result.exit_code == 1
    assert f"kept {task_id} in {own_url}: it is running now, not interrupted as listed" in result.stderr
    assert own.get(task_id) is not None


def test_a_store_that_cannot_be_reached_is_reported_and_the_others_still_used(
    store: CheckpointStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    shown = down.replace("s3cret", "***")
    give_elsewhere_its_own_store(monkeypatch, down)
    interrupted, _ = put(store, {"i": 1})
    poisoned = parked(store, Status.POISONED)

    def one_error_line(result: Result) -> None:
        assert result.exit_code == 3, result.output
        assert result.stderr.startswith("Error: ") and f"checkpoint store {shown} failed to " in result.stderr
        assert result.stderr.count("\n") == 1 and "s3cret" not in result.output
        assert "Traceback" not in result.output

    listing = cli("list")
    one_error_line(listing)
    assert {line.split()[0] for line in listing.stdout.splitlines()[1:]} == {interrupted, poisoned}
    assert listing.stdout.splitlines()[0].endswith("STORE"), "still several stores: each row names its own"
    as_json = cli("list", "--json")
    one_error_line(as_json)
    assert {entry["task_id"] for entry in json.loads(as_json.stdout)} == {interrupted, poisoned}

    shown_entry = cli("show", interrupted)
    one_error_line(shown_entry)
    assert f"Checkpoint {interrupted}" in shown_entry.stdout
    not_found = cli("show", "no-such-task")
    assert not_found.exit_code == 3, "the unreachable store may hold it"
    assert not_found.stderr.splitlines()[1] == f"Error: no checkpoint for task no-such-task in {store_url}"

    running, _ = put(store, {"i": 2}, owner=LIVE)
    refused = cli("resume", running)
    assert refused.exit_code == 3, "what the failed store holds is unknown"
    assert refused.stderr.splitlines()[1].endswith("is running on a live worker (celery@live); not resumed")

    resumed = cli("resume", "--all-interrupted")
    one_error_line(resumed)
    assert resumed.stdout.startswith(f"resumed   {interrupted}  ")
    assert list(published()) == [interrupted]

    purged = cli("purge", "--state", "poisoned", "--yes")
    one_error_line(purged)
    assert "deleted 1, kept 0" in purged.stdout and store.get(poisoned) is None


def test_when_every_store_fails_each_is_one_line_and_nothing_else_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    down = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_store_url", missing)
    give_elsewhere_its_own_store(monkeypatch, down)
    for args in (
        ["list"],
        ["show", "x"],
        ["resume", "--all-interrupted"],
        ["purge", "--state", "corrupt", "-y"],
    ):
        result = cli(*args)
        assert result.exit_code == 3, (args, result.output)
        assert result.stdout == ""
        first, second = result.stderr.splitlines()
        assert first == f"Error: checkpoint store {missing}: no such file {str(tmp_path / 'missing.db')!r}"
        assert second.startswith("Error: ") and f"checkpoint store {down} failed to " in second
    assert not (tmp_path / "missing.db").exists()


def test_two_prefixes_on_one_redis_are_two_stores_named_by_prefix(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{private_redis.url}/5"
    app_prefix, own_prefix = f"a{uuid.uuid4().hex[:6]}:", f"b{uuid.uuid4().hex[:6]}:"
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_store_url", url)
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_key_prefix", app_prefix)
    give_elsewhere_its_own_store(monkeypatch, url, prefix=own_prefix)
    app_store, own_store = create_store(url, prefix=app_prefix), create_store(url, prefix=own_prefix)
    try:
        app_id, _ = put(app_store, {"i": 1})
        own_id, _ = put(own_store, {"i": 2}, name=ELSEWHERE)
        assert {task_id: entry["store"] for task_id, entry in listed().items()} == {
            app_id: f"{url} (key prefix {app_prefix})",
            own_id: f"{url} (key prefix {own_prefix})",
        }
        assert cli("purge", own_id, "--yes").exit_code == 0
        assert own_store.get(own_id) is None and app_store.get(app_id) is not None
    finally:
        for each in (app_store, own_store):
            for task_id in (app_id, own_id):
                each.delete(task_id)
            each.close()


# -- Redis -------------------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        url = f"{server.url}/0"
        monkeypatch.setitem(cliapp.app.conf, "checkpoint_store_url", url)
        yield url
    finally:
        server.stop()


# Celery 5.7's Redis backend stores a result with redis-py's deprecated setex.
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_a_scan_asks_a_real_redis_result_backend_and_resumes_when_it_is_gone(
    store: CheckpointStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery's own Redis result backend on a private redis-server, stopped half way."""
    from celery import Celery
    from celery.result import denied_join_result

    from celery_checkpoint import CheckpointTask

    backend_server = RedisServer(tmp_path / "results").start()
    app = Celery(f"scanres-{uuid.uuid4().hex[:6]}", broker="memory://", backend=f"{backend_server.url}/0")

    name = f"scanres.crunch-{uuid.uuid4().hex[:6]}"

    @app.task(base=CheckpointTask, bind=True, name=name, shared=False)
    def crunch(self: Any, n: int, checkpoint: Any) -> None: ...

    # As in a worker's main process, which never waits on results: the scan's
    # re-sends subscribe to none.
    with denied_join_result():
        try:
            done, unfinished = put(store, {"i": 3}, name=name)[0], put(store, {"i": 4}, name=name)[0]
            app.backend.store_result(done, 6, "SUCCESS")
            report = Resumer(app, store, LIVE).scan()
            assert report.outcomes == {done: Outcome.GONE, unfinished: Outcome.RESUMED}
            assert store.get(done) is None and list(published(app)) == [unfinished]

            lost = put(store, {"i": 5}, name=name)[0]
            backend_server.stop()
            with caplog.at_level(logging.WARNING, logger="celery_checkpoint.results"):
                assert Resumer(app, store, LIVE).scan().outcomes[lost] is Outcome.RESUMED
            assert list(published(app)) == [lost], "with the backend gone, the checkpoint decides"
            assert "the result backend could not say whether" in caplog.text
            assert "Connection refused" in caplog.text
        finally:
            backend_server.stop()
            app.close()


def test_redis_store_end_to_end(redis_url: str) -> None:
    import redis

    store = create_store(redis_url)
    store.register(LIVE, 60)
    running, _ = put(store, {"i": 1}, owner=LIVE)
    interrupted, _ = put(store, {"i": 7})
    client = redis.Redis.from_url(redis_url)
    client.set("checkpoint:not-ours", "x")
    client.hset("checkpoint:task:half", "name", CRUNCH)

    entries = listed()
    assert {k: e["state"] for k, e in entries.items()} == {
        running: "running",
        interrupted: "interrupted",
        "checkpoint:not-ours": "corrupt",
        "half": "corrupt",
    }
    assert entries["checkpoint:not-ours"]["reason"] == "foreign key under the checkpoint prefix"
    assert "lacks fields" in entries["half"]["reason"]

    assert cli("resume", running).exit_code == 1
    assert cli("resume", interrupted).exit_code == 0
    assert listed()[interrupted]["state"] == "queued"
    assert interrupted in published()

    result = cli("purge", "--state", "corrupt", "--yes")
    assert result.exit_code == 1  # neither entry can be removed through the store
    assert "kept checkpoint:not-ours: not a checkpoint of this store" in result.stderr
    assert "kept checkpoint:task:half:" in result.stderr
    assert client.exists("checkpoint:not-ours") == 1
    store.close()
    client.close()


def test_unreachable_redis_exits_3_with_one_line_naming_it() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (
        ["list"],
        ["show", "x"],
        ["resume", "--all-interrupted"],
        ["purge", "--state", "corrupt", "-y"],
    ):
        result = cli(*args, "--store", url)
        assert result.exit_code == 3, (args, result.output)
        assert result.stderr.startswith("Error: ") and f"checkpoint store {url} failed to " in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_a_serializer_this_worker_lacks_stops_only_its_own_resume(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A serializer kombu does not know here (a typo, a library missing on this host)."""
    from celery import Celery

    app = Celery(f"noser-{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://")

    @app.task(base=CheckpointTask, bind=True, shared=False, checkpoint_serializer="jsno")
    def typo(self: Any, checkpoint: Any) -> None: ...

    @app.task(base=CheckpointTask, bind=True, shared=False)
    def fine(self: Any, checkpoint: Any) -> None: ...

    bad, _ = put(store, {"i": 1}, name=typo.name, args=())
    good, _ = put(store, {"i": 1}, name=fine.name, args=())
    outcomes = Resumer(app, store, LIVE).scan().outcomes
    assert outcomes == {bad: Outcome.BAD, good: Outcome.RESUMED}
    assert set(published(app)) == {good}
    assert "checkpoint_serializer 'jsno' is not installed" in caplog.text
    assert store.get(bad) is not None


def test_show_a_checkpoint_whose_task_has_invalid_settings(store: CheckpointStore) -> None:
    """The scan reports such a checkpoint and points at `show`, which must not crash on it."""
    task_id, _ = put(store, {"i": 7}, name="tests.apps.cliapp.misconfigured")
    result = cli("show", task_id, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["saved_state"] == {"i": 7}


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: no NaN or Infinity (which jq and JavaScript refuse)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_show_json_is_valid_json_for_a_state_with_nan_and_infinity(store: CheckpointStore) -> None:
    task_id, _ = put(store, {"loss": float("nan"), "best": float("-inf"), "ok": 1.5})
    result = cli("show", task_id, "--json")
    assert result.exit_code == 0, result.output
    assert _strict_json(result.stdout)["saved_state"] == {"loss": "nan", "best": "-inf", "ok": 1.5}


def test_show_a_pickled_state_json_cannot_hold(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tuple keys (and NaN keys) are fine for pickle; JSON has no such keys."""
    import pickle

    state = {(1, 2): "pair", float("nan"): "nan key", "s": {3}}
    encoded = EncodedState(pickle.dumps(state), "application/x-python-serialize", "binary")
    task_id, _ = put(store, None, encoded=encoded)
    monkeypatch.setitem(cliapp.app.conf, "checkpoint_serializer", "pickle")
    result = cli("show", task_id, "--json")
    assert result.exit_code == 0, result.output
    assert _strict_json(result.stdout)["saved_state"] == {"(1, 2)": "pair", "nan": "nan key", "s": "{3}"}
    text = cli("show", task_id)
    assert text.exit_code == 0 and '"(1, 2)": "pair"' in text.stdout
