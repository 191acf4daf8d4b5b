"""CheckpointTask in-process (eager, or as a worker runs it): injection, outcomes, settings, retries."""

from __future__ import annotations

import datetime
import gc
import json
import time
import uuid
import weakref
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context
from celery.app.trace import build_tracer
from celery.exceptions import Retry

from celery_checkpoint import CheckpointTask, NullCheckpointer
from celery_checkpoint.envelope import FENCE_HEADER, FRESH_HEADER, envelope_from_request
from celery_checkpoint.errors import CheckpointStoreError
from celery_checkpoint.stores import open_store


def make_app(**conf: Any) -> Celery:
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://")
    app.conf.update(task_always_eager=True, task_store_eager_result=True, **conf)
    return app


def test_the_checkpoint_argument_is_injected_and_never_sent() -> None:
    app = make_app(checkpoint_store_url=f"memory://{uuid.uuid4().hex}")
    seen: list[Any] = []

    @app.task(base=CheckpointTask, bind=True, name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask, n: int, checkpoint: Any) -> int:
        seen.append(checkpoint)
        assert self.checkpoint is checkpoint
        return n

    assert work.delay(3).get() == 3
    assert seen[0].enabled and seen[0].task_id
    with pytest.raises(TypeError, match="injected"):
        work.delay(3, checkpoint=object())


def test_success_deletes_the_checkpoint() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = make_app(checkpoint_store_url=url, checkpoint_throttle=0)

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> int:
        checkpoint.save({"i": 1})
        assert open_store(url).get(work.request.id) is not None
        return 1

    result = work.delay()
    assert result.get() == 1
    assert open_store(url).get(result.id) is None
    assert open_store(url).peek(result.id).done


def test_a_terminal_failure_deletes_the_checkpoint() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = make_app(checkpoint_store_url=url, checkpoint_throttle=0)

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None:
        checkpoint.save({"i": 1})
        raise RuntimeError("no")

    result = work.apply()
    assert result.failed()
    assert open_store(url).get(result.id) is None


def test_a_finished_run_is_freed_without_the_cyclic_gc() -> None:
    """The request, its arguments and the checkpointer go when the run ends, not at some later collection."""
    app = make_app(checkpoint_store_url=f"memory://{uuid.uuid4().hex}", checkpoint_throttle=0)
    left: list[weakref.ref[Any]] = []

    @app.task(base=CheckpointTask, bind=True, name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask, payload: str, checkpoint: Any) -> int:
        checkpoint.save({"n": len(payload)})  # the first save records the call from the request
        left.extend((weakref.ref(self.request), weakref.ref(checkpoint)))
        return len(payload)

    gc.collect()
    gc.disable()
    try:
        assert work.apply(("x" * 100_000,)).get() == 100_000
        assert len(left) == 2 and [ref() for ref in left] == [None, None]
    finally:
        gc.enable()


def test_no_store_means_a_no_op_checkpointer() -> None:
    app = make_app()

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> tuple[Any, bool]:
        return checkpoint.load(), checkpoint.save({"i": 1})

    assert tuple(work.delay().get()) == (None, False)
    assert isinstance(work.checkpoint, NullCheckpointer)


def test_calling_the_task_directly_gets_a_no_op_checkpointer() -> None:
    app = make_app(checkpoint_store_url=f"memory://{uuid.uuid4().hex}")

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(n: int, checkpoint: Any) -> bool:
        return bool(checkpoint.save({"n": n}))

    assert work(1) is False


def test_the_no_op_checkpointer_takes_the_same_calls_as_the_real_one() -> None:
    """A body written against the README's API runs unchanged with checkpoints off or called directly."""
    app = make_app()

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> tuple[Any, ...]:
        persisted = checkpoint.save({"i": 1}, 0.5, True)  # progress and force, positionally
        return persisted, checkpoint.saves, checkpoint.progress, checkpoint.saved_at, checkpoint.should_stop

    assert tuple(work.delay().get()) == (False, 0, None, None, False)
    assert work() == (False, 0, None, None, False)


def test_settings_can_be_overridden_per_task() -> None:
    app = make_app(checkpoint_store_url="memory://x", checkpoint_throttle=5.0)

    @app.task(base=CheckpointTask, checkpoint_throttle=0.5, checkpoint_max_resumes=2)
    def fast(checkpoint: Any) -> None: ...

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def slow(checkpoint: Any) -> None: ...

    assert fast.checkpoint_config.throttle == 0.5 and fast.checkpoint_config.max_resumes == 2
    assert slow.checkpoint_config.throttle == 5.0


def test_a_bad_setting_is_a_clear_error() -> None:
    app = make_app(checkpoint_store_url="memory://x", checkpoint_on_store_error="ignore")

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None: ...

    with pytest.raises(ValueError, match="checkpoint_on_store_error"):
        _ = work.checkpoint_config


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("checkpoint_lease_ttl", "30", "checkpoint_lease_ttl must be a number, not '30'"),
        ("checkpoint_throttle", True, "checkpoint_throttle must be a number"),
        ("checkpoint_done_ttl", 0, "checkpoint_done_ttl must be at least 0.001"),
        ("checkpoint_throttle", float("nan"), "checkpoint_throttle must be a number, not NaN"),
        ("checkpoint_max_state_bytes", 0, "checkpoint_max_state_bytes must be >= 1"),
    ],
)
def test_a_setting_of_the_wrong_kind_is_a_clear_error(setting: str, value: Any, message: str) -> None:
    app = make_app(checkpoint_store_url="memory://x", **{setting: value})

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None: ...

    with pytest.raises(ValueError, match=message):
        _ = work.checkpoint_config


def test_pickle_opt_in_warns(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(checkpoint_store_url="memory://x", checkpoint_serializer="pickle")

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None: ...

    _ = work.checkpoint_config
    assert "can run arbitrary code" in caplog.text


def test_class_based_tasks_read_self_checkpoint() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = make_app(checkpoint_store_url=url, checkpoint_throttle=0)

    class Import(CheckpointTask):
        name = "import"

        def run(self, n: int) -> int:
            state = self.checkpoint.load() or {"i": 0}
            for i in range(state["i"], n):
                self.checkpoint.save({"i": i + 1})
            return int(self.checkpoint.saves)

    task = app.register_task(Import())
    assert task.delay(4).get() == 4


def test_only_a_call_whose_id_apply_async_minted_is_marked_never_seen() -> None:
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    app.conf.update(task_default_queue=f"q{uuid.uuid4().hex[:6]}", checkpoint_store_url="memory://x")

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None: ...

    minted = work.delay()
    work.apply_async(task_id="my-own-id")
    with app.connection() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue)
        first, second = queue.get(timeout=1), queue.get(timeout=1)
        queue.close()
    assert first.headers["id"] == minted.id and first.headers.get(FRESH_HEADER) is True
    assert second.headers["id"] == "my-own-id" and FRESH_HEADER not in second.headers


def test_the_recorded_call_never_carries_the_never_seen_mark_nor_a_handover() -> None:
    """A resumed call is sent from the recorded call: it must read its checkpoint, as itself."""
    app = make_app()

    @app.task(base=CheckpointTask, bind=True, name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask) -> None: ...

    request = Context(
        id="t1",
        args=[1],
        kwargs={},
        headers={FRESH_HEADER: True, FENCE_HEADER: [2, "w1@h|a", 123], "tenant": "a"},
        delivery_info={"exchange": "", "routing_key": "celery"},
    )
    recorded = envelope_from_request(work, request)
    assert recorded["options"]["headers"] == {"tenant": "a"}
    assert recorded["options"]["task_id"] == "t1" and recorded["args"] == [1]


def _worker_run_that_loses_its_store(max_retries: int) -> tuple[Celery, CheckpointTask]:
    """A task as a worker runs it (not eager), whose store fails under its body."""
    app = make_app(
        task_default_queue=f"q{uuid.uuid4().hex[:6]}",
        checkpoint_store_url=f"memory://{uuid.uuid4().hex}",
        checkpoint_store_retry_delay=0.25,
    )
    app.conf.task_always_eager = False

    @app.task(base=CheckpointTask, bind=True, max_retries=max_retries, name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask, checkpoint: Any) -> None:
        raise CheckpointStoreError("the store is down")

    return app, work


def _run_as_a_worker(task: CheckpointTask, retries: int) -> None:
    task.push_request(
        id="t1",
        args=[],
        kwargs={},
        retries=retries,
        called_directly=False,
        is_eager=False,
        hostname="w1@h",
        delivery_info={"exchange": "", "routing_key": task.app.conf.task_default_queue},
    )
    try:
        task()
    finally:
        task.pop_request()


def test_a_store_error_retry_waits_in_the_run_then_is_due_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A countdown would park the retry in some worker's prefetch as an ETA message (see task.py)."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    app, work = _worker_run_that_loses_its_store(max_retries=3)

    with pytest.raises(Retry):
        _run_as_a_worker(work, retries=1)

    assert slept == [0.5], "the run waited the delay (doubled for the second attempt)"
    with app.connection() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue)
        retried = queue.get(timeout=1)
        queue.close()
    assert retried.headers["id"] == "t1" and retried.headers["retries"] == 2
    assert retried.headers["eta"] is None


def test_a_store_error_with_no_retries_left_fails_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    _, work = _worker_run_that_loses_its_store(max_retries=1)

    with pytest.raises(CheckpointStoreError, match="the store is down"):
        _run_as_a_worker(work, retries=1)

    assert slept == []


@pytest.mark.parametrize(("when", "due_in"), [("countdown", 30.0), ("eta", 3600.0)])
def test_a_retry_is_sent_again_only_if_it_has_not_started_well_after_it_was_due(
    when: str, due_in: float
) -> None:
    """Past its due time plus ``checkpoint_requeue_after``, the retry message is taken for lost."""
    url = f"memory://{uuid.uuid4().hex}"
    app = make_app(
        task_default_queue=f"q{uuid.uuid4().hex[:6]}",
        checkpoint_store_url=url,
        checkpoint_throttle=0,
        checkpoint_requeue_after=120,
    )
    app.conf.task_always_eager = False

    @app.task(base=CheckpointTask, bind=True, name=f"work-{uuid.uuid4().hex}")
    def work(self: CheckpointTask, n: int, checkpoint: Any) -> None:
        checkpoint.save({"i": 1})
        if when == "countdown":
            raise self.retry(args=[n + 1], countdown=due_in, queue="later")
        raise self.retry(
            eta=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=due_in)
        )

    trace = build_tracer(work.name, work, app=app, eager=False)
    before = time.time()
    request = {
        "id": "t1",
        "hostname": "w1@h",
        "delivery_info": {"exchange": "", "routing_key": app.conf.task_default_queue},
    }
    trace("t1", [1], {}, request)
    record = open_store(url).get("t1")
    assert record is not None and record.status.value == "waiting" and record.owner == ""
    assert record.resend_at is not None
    assert before + due_in + 120 - 1 <= record.resend_at <= time.time() + due_in + 120
    call = json.loads(record.envelope.payload)
    assert call["options"]["retries"] == 1 and call["options"]["task_id"] == "t1"
    assert "eta" not in call["options"] and "countdown" not in call["options"], "sent again due at once"
    assert FENCE_HEADER not in (call["options"].get("headers") or {})
    if when == "countdown":
        assert call["args"] == [2] and call["options"]["queue"] == "later", "the retry's args and routing"
    else:
        assert call["args"] == [1]


def test_a_serializer_kombu_does_not_know_fails_the_run_naming_the_setting() -> None:
    app = make_app(checkpoint_store_url=f"memory://{uuid.uuid4().hex}", checkpoint_serializer="jsno")

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None:
        checkpoint.save({"i": 1})

    result = work.apply()
    assert result.failed()
    assert isinstance(result.result, ValueError)
    assert "checkpoint_serializer 'jsno' is not installed" in str(result.result)


def test_a_serializer_registered_with_kombu_round_trips() -> None:
    from kombu.serialization import register, unregister

    name = f"rev-{uuid.uuid4().hex[:6]}"
    register(
        name, lambda v: json.dumps(v)[::-1], lambda s: json.loads(s[::-1]), f"application/x-{name}", "utf-8"
    )
    try:
        url = f"memory://{uuid.uuid4().hex}"
        app = make_app(checkpoint_store_url=url, checkpoint_serializer=name, checkpoint_throttle=0)
        loaded: list[Any] = []

        @app.task(base=CheckpointTask, bind=True, name=f"work-{uuid.uuid4().hex}")
        def work(self: CheckpointTask, checkpoint: Any) -> None:
            checkpoint.save({"i": 1})
            record = open_store(url).get(self.request.id)
            assert record is not None and record.state.content_type == f"application/x-{name}"
            loaded.append(checkpoint.load())

        assert work.apply().successful()
        assert loaded == [{"i": 1}]
    finally:
        unregister(name)


class _Point:
    """An argument only a pickle message can carry."""

    def __init__(self, x: int) -> None:
        self.x = x


def test_a_call_that_will_not_serialize_says_what_to_do_about_the_call() -> None:
    """The state is fine: the error must be about the arguments, not "save only ... values"."""
    app = make_app(
        checkpoint_store_url=f"memory://{uuid.uuid4().hex}",
        task_serializer="pickle",
        accept_content=["pickle", "json"],
    )

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(point: _Point, checkpoint: Any) -> None:
        checkpoint.save({"i": 1})

    result = work.apply((_Point(1),))
    assert result.failed()
    message = str(result.result)
    assert f"task {result.id}: the checkpoint call (args, kwargs, options)" in message
    assert "_Point" in message and "checkpoint_serializer" in message
    assert "Save only" not in message


@pytest.mark.parametrize("content_type", ["", "application/data"], ids=["none", "raw"])
def test_a_state_of_no_content_type_is_kept_as_poisoned_not_handed_over_raw(content_type: str) -> None:
    """kombu returned such a payload undecoded: the body got a str or bytes; then the entry was deleted."""
    from celery_checkpoint.record import EncodedState, NewCheckpoint, Status, encode, worker_id

    url = f"memory://{uuid.uuid4().hex}"
    app = make_app(checkpoint_store_url=url, checkpoint_throttle=0)
    seen: list[Any] = []

    @app.task(base=CheckpointTask, name=f"work-{uuid.uuid4().hex}")
    def work(checkpoint: Any) -> None:
        seen.append(checkpoint.load())

    task_id = uuid.uuid4().hex
    call = encode(
        {"args": [], "kwargs": {}, "options": {"task_id": task_id}}, "json", what="c", task_id="", limit=999
    )
    written_by_hand = EncodedState(b'{"i": 1}', content_type, "")
    store = open_store(url)
    new = NewCheckpoint(work.name, worker_id("gone@host", "x"), 1, written_by_hand, call, None, time.time())
    assert store.create(task_id, new) == 1

    result = work.apply(task_id=task_id)
    assert result.failed() and seen == []
    assert f"task {task_id}: checkpoint is stored as {content_type!r}" in str(result.result)
    record = store.get(task_id)
    assert record is not None and record.status is Status.POISONED
