"""A run's edges, as a worker runs it: lost answers, handoffs under autoretry, copies, self-calls.

Each test runs the task through Celery's tracer as a pool process does, on
the memory store, and checks what a user would: the task's state, the
checkpoint left (or not) in the store, and where the body started from.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery
from celery.app.trace import build_tracer
from celery.exceptions import Ignore, Reject

from celery_checkpoint import CheckpointTask, NullCheckpointer
from celery_checkpoint.envelope import FRESH_HEADER
from celery_checkpoint.errors import CheckpointStoreError
from celery_checkpoint.record import EncodedState, NewCheckpoint, Status
from celery_checkpoint.stores import CheckpointStore, open_store
from tests.harness import wait_for


def worker_app(**conf: Any) -> tuple[Celery, CheckpointStore]:
    url = f"memory://{uuid.uuid4().hex}"
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://")
    app.conf.update(
        task_default_queue=f"q{uuid.uuid4().hex[:6]}",
        checkpoint_store_url=url,
        checkpoint_throttle=0,
        **conf,
    )
    return app, open_store(url)


def run_as_worker(app: Celery, task: Any, task_id: str, args: list[Any], **headers: Any) -> None:
    trace = build_tracer(task.name, task, app=app, eager=False)
    request = {
        "id": task_id,
        "hostname": "w1@h",
        "delivery_info": {"exchange": "", "routing_key": app.conf.task_default_queue},
        **headers,
    }
    trace(task_id, args, {}, request)


def lose_the_answer_of_create(
    monkeypatch: pytest.MonkeyPatch, store: CheckpointStore, exc: BaseException
) -> None:
    """The store applies the create, and the run never reads its answer."""
    real = store.create

    def create(task_id: str, new: NewCheckpoint) -> int | None:
        real(task_id, new)
        raise exc

    monkeypatch.setattr(store, "create", create)


@pytest.mark.parametrize(
    "lost_by",
    [CheckpointStoreError("store timed out after 5 s"), SoftTimeLimitExceeded()],
    ids=["store-timeout", "soft-time-limit"],
)
def test_a_terminal_failure_deletes_a_checkpoint_whose_create_answer_was_lost(
    monkeypatch: pytest.MonkeyPatch, lost_by: BaseException
) -> None:
    app, store = worker_app(checkpoint_on_store_error="raise")

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None:
        checkpoint.save({"i": 1})

    lose_the_answer_of_create(monkeypatch, store, lost_by)
    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    assert app.AsyncResult(task_id).state == "FAILURE"
    assert store.get(task_id) is None, "a failed task left its checkpoint running"
    assert store.peek(task_id).done


def test_a_success_deletes_a_checkpoint_whose_create_answer_was_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    app, store = worker_app(checkpoint_on_store_error="warn")

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> int:
        assert checkpoint.save({"i": 1}) is False  # warned: not counted as persisted
        return 7

    lose_the_answer_of_create(monkeypatch, store, CheckpointStoreError("store timed out after 5 s"))
    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    assert app.AsyncResult(task_id).get(timeout=1) == 7
    assert store.get(task_id) is None, "a finished task left its checkpoint running"
    assert store.peek(task_id).done


def test_the_shutdown_handoff_is_not_turned_into_a_retry_by_autoretry_for() -> None:
    app, store = worker_app()

    @app.task(base=CheckpointTask, bind=True, autoretry_for=(Exception,), name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask, checkpoint: Any) -> None:
        checkpoint.save({"i": 1})
        checkpoint.request_stop()  # what the worker's warm shutdown does
        checkpoint.save({"i": 2})

    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    with app.connection() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue)
        try:
            assert queue.qsize() == 0, "the handoff became a Celery retry (an ETA message)"
        finally:
            queue.close()
    assert app.AsyncResult(task_id).state != "RETRY"
    record = store.get(task_id)
    assert record is not None and record.status is Status.RELEASED and record.saves == 2


def test_a_failed_save_does_not_move_saved_at(monkeypatch: pytest.MonkeyPatch) -> None:
    app, store = worker_app(checkpoint_on_store_error="warn")
    seen: dict[str, Any] = {}

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None:
        checkpoint.save({"i": 1})
        seen["persisted"] = checkpoint.saved_at

        def down(*args: Any, **kwargs: Any) -> Any:
            raise CheckpointStoreError("store down")

        monkeypatch.setattr(store, "update", down)
        time.sleep(0.01)
        assert checkpoint.save({"i": 2}) is False
        seen["after a failed save"] = checkpoint.saved_at

    run_as_worker(app, work, uuid.uuid4().hex, [])
    assert seen["after a failed save"] == seen["persisted"]


def test_a_task_that_calls_itself_directly_gets_a_no_op_checkpointer_in_the_inner_call() -> None:
    app, store = worker_app()
    handles: list[Any] = []

    @app.task(base=CheckpointTask, bind=True, name=f"rec-{uuid.uuid4().hex}")
    def rec(self: CheckpointTask, n: int, checkpoint: Any) -> int:
        handles.append(checkpoint)
        checkpoint.save({"n": n})
        return rec(n - 1) + 1 if n > 0 else 0

    task_id = uuid.uuid4().hex
    run_as_worker(app, rec, task_id, [1])
    assert [type(h) for h in handles][1] is NullCheckpointer
    assert app.AsyncResult(task_id).get(timeout=1) == 1
    assert store.get(task_id) is None and store.peek(task_id).done


def test_a_copy_of_a_new_call_does_not_take_over_a_checkpoint_waiting_to_resume() -> None:
    app, store = worker_app()
    started_from: list[Any] = []

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> int:
        state = checkpoint.load() or {"i": 0}
        started_from.append(state)
        for i in range(state["i"], 100):
            checkpoint.save({"i": i + 1})
        return 100

    # The first copy reached i=50, its worker died, and a scan re-sent it (queued).
    task_id = uuid.uuid4().hex

    def json(text: str) -> EncodedState:
        return EncodedState(text.encode(), "application/json", "utf-8")

    call = json(f'{{"args": [], "kwargs": {{}}, "options": {{"task_id": "{task_id}"}}}}')
    new = NewCheckpoint(work.name, "dead@h|x", 999_999, json('{"i": 50}'), call, None, time.time())
    fence = store.create(task_id, new)
    assert fence is not None and store.park(task_id, fence, "dead@h|x", Status.QUEUED)

    # A copy of the new call's message that the broker did not flag as redelivered.
    run_as_worker(app, work, task_id, [], **{FRESH_HEADER: True})
    assert started_from == [{"i": 0}]  # it could not know, and stopped at its first save
    record = store.get(task_id)
    assert record is not None and record.state.payload == b'{"i": 50}', "the copy overwrote the progress"
    assert record.status is Status.QUEUED, "the copy took over the re-sent checkpoint"


def on_two_live_workers(monkeypatch: pytest.MonkeyPatch, store: CheckpointStore) -> dict[str, str]:
    """Runs owned by ``owner["id"]``: switch it to run the next delivery on the other worker."""
    store.register("w1@h|a", 60.0)
    store.register("w2@h|b", 60.0)
    owner = {"id": "w1@h|a"}
    monkeypatch.setattr("celery_checkpoint.task.current_worker_id", lambda hostname: owner["id"])
    return owner


def next_message(app: Celery) -> Any:
    with app.connection() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue)
        try:
            message = queue.get(timeout=1)
            message.ack()
            return message
        finally:
            queue.close()


def test_a_replacement_on_another_worker_starts_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    app, store = worker_app()
    owner = on_two_live_workers(monkeypatch, store)
    runs: list[Any] = []

    @app.task(base=CheckpointTask, bind=True, name=f"step-{uuid.uuid4().hex}")
    def step(self: CheckpointTask, n: int, checkpoint: Any) -> int:
        runs.append((n, checkpoint.load()))
        checkpoint.save({"n": n})
        if n == 0:
            raise self.replace(step.si(n + 1))
        return n

    task_id = uuid.uuid4().hex
    run_as_worker(app, step, task_id, [0])
    assert store.get(task_id) is None, "the replaced run's checkpoint outlived it"
    replacement = next_message(app)
    assert replacement.headers["id"] == task_id
    owner["id"] = "w2@h|b"
    run_as_worker(app, step, task_id, [1])
    assert runs == [(0, None), (1, None)], "the replacement was dropped, or loaded the replaced body's state"
    assert app.AsyncResult(task_id).get(timeout=1) == 1
    assert store.get(task_id) is None and store.peek(task_id).done


def test_an_eager_replacement_by_the_same_task_runs() -> None:
    app, store = worker_app(task_always_eager=True, task_store_eager_result=True)
    runs: list[Any] = []

    @app.task(base=CheckpointTask, bind=True, name=f"step-{uuid.uuid4().hex}")
    def step(self: CheckpointTask, n: int, checkpoint: Any) -> int:
        runs.append((n, checkpoint.load()))
        checkpoint.save({"n": n})
        if n == 0:
            return self.replace(step.si(n + 1))  # type: ignore[no-any-return]
        return n

    result = step.apply(args=(0,))
    assert result.get() == 1 and runs == [(0, None), (1, None)]
    assert store.get(result.id) is None


def test_a_requeued_reject_hands_the_checkpoint_to_the_next_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    app, store = worker_app()
    owner = on_two_live_workers(monkeypatch, store)
    loaded: list[Any] = []

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> str:
        loaded.append(checkpoint.load())
        checkpoint.save({"i": len(loaded)})
        if len(loaded) == 1:
            raise Reject("not now", requeue=True)
        return "done"

    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    record = store.get(task_id)
    assert record is not None and record.status is Status.RELEASED
    owner["id"] = "w2@h|b"  # the requeued message, on another live worker
    delivery = {"redelivered": True, "exchange": "", "routing_key": app.conf.task_default_queue}
    run_as_worker(app, work, task_id, [], delivery_info=delivery)
    assert loaded == [None, {"i": 1}], "the requeued delivery was dropped, or did not resume"
    assert app.AsyncResult(task_id).get(timeout=1) == "done"


@pytest.mark.parametrize("ended_by", [Ignore(), Reject("bad input", requeue=False)], ids=["ignore", "reject"])
def test_a_run_that_ends_in_ignore_or_a_dropping_reject_deletes_its_checkpoint(ended_by: Exception) -> None:
    app, store = worker_app()

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None:
        checkpoint.save({"i": 1})
        raise ended_by

    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    assert store.get(task_id) is None, "the checkpoint stayed running under a live process"
    assert store.peek(task_id).done


def soft_limit_in(monkeypatch: pytest.MonkeyPatch, store: CheckpointStore, method: str) -> None:
    """Celery's soft time limit fires during the next ``store.<method>`` call, before the store applied it.

    It is raised asynchronously in whatever the pool process runs, so it can
    strike during an outcome handler's store call as well as in the body.
    """
    real = getattr(store, method)
    fired: list[bool] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(True)
            raise SoftTimeLimitExceeded()
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, interrupted)
    monkeypatch.setattr("celery_checkpoint.settle.SETTLE_RETRY_DELAYS", (0.01,) * 500)


def test_a_soft_time_limit_while_deleting_a_succeeded_runs_checkpoint_does_not_leave_it_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app, store = worker_app()

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> int:
        checkpoint.save({"i": 1})
        soft_limit_in(monkeypatch, store, "finish")
        return 7

    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    assert app.AsyncResult(task_id).get(timeout=1) == 7
    assert "handler raised" not in caplog.text, "the soft time limit escaped on_success"
    wait_for(lambda: store.peek(task_id).done, 5, "the delete retried in the background")
    assert store.get(task_id) is None, "a later scan would run the finished task again"


def test_a_soft_time_limit_while_deleting_a_failed_runs_checkpoint_does_not_leave_it_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app, store = worker_app()

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None:
        checkpoint.save({"i": 1})
        soft_limit_in(monkeypatch, store, "finish")
        raise RuntimeError("bad row")

    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    result = app.AsyncResult(task_id)
    assert result.state == "FAILURE" and isinstance(result.result, RuntimeError)
    assert "internal error" not in caplog.text.lower(), "the soft time limit escaped on_failure"
    wait_for(lambda: store.peek(task_id).done, 5, "the delete retried in the background")
    assert store.get(task_id) is None, "a later scan would run the failed task again"


def test_a_soft_time_limit_while_keeping_a_retried_runs_checkpoint_still_hands_it_to_the_retry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app, store = worker_app(checkpoint_requeue_after=120)

    @app.task(base=CheckpointTask, bind=True, name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask, checkpoint: Any) -> None:
        checkpoint.save({"i": 1})
        soft_limit_in(monkeypatch, store, "park")
        raise self.retry(countdown=30)

    task_id = uuid.uuid4().hex
    run_as_worker(app, work, task_id, [])
    assert app.AsyncResult(task_id).state == "RETRY"
    assert "internal error" not in caplog.text.lower(), "the soft time limit escaped on_retry"
    wait_for(
        lambda: (record := store.get(task_id)) is not None and record.status is Status.WAITING,
        5,
        "the checkpoint parked for the retry in the background",
    )
    record = store.get(task_id)
    assert record is not None and record.resend_at is not None and record.resend_at > time.time() + 120
