"""The pytest plugin: crash a user's task after N saves, resume it, check what it did.

The first test is the example the README shows, word for word. Celery's own
``celery_app``/``celery_worker`` fixtures are enabled here the way the
README tells users to (pytest-celery is disabled by ``-p no:celery`` in
addopts), to show both sets of fixtures work in one test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_checkpoint import CheckpointTask
from celery_checkpoint.pytest_plugin import CheckpointRunner, InterruptedRun
from celery_checkpoint.stores import open_store
from celery_checkpoint.stores.memory import MemoryStore

pytest_plugins = ("celery.contrib.pytest", "pytester")

app = Celery("shop")


# -- the README example ------------------------------------------------------


@app.task(base=CheckpointTask, bind=True)
def total(self, n, checkpoint):
    state = checkpoint.load() or {"i": 0, "total": 0}
    for i in range(state["i"], n):
        state = {"i": i + 1, "total": state["total"] + i + 1}
        checkpoint.save(state)
    return state["total"]


def test_total_resumes_where_it_stopped(checkpoint_runner):
    run = checkpoint_runner.run_interrupted(total, args=(10,), interrupt_after=4)

    assert run.result == 55
    assert run.resume_count == 1
    assert run.resumed_from == {"i": 4, "total": 10}
    # every step saved exactly once across both runs: nothing was redone
    assert run.saved_states == [{"i": i, "total": i * (i + 1) // 2} for i in range(1, 11)]


# -- the helper itself -------------------------------------------------------


@app.task(base=CheckpointTask)
def shout(words: list[str], checkpoint: Any) -> list[str]:
    """Not bound: the checkpoint still arrives as a keyword argument."""
    done: list[str] = checkpoint.load() or []
    for word in words[len(done) :]:
        done = [*done, word.upper()]
        checkpoint.save(done, progress=len(done) / len(words))
    return done


def test_unbound_task_with_kwargs(checkpoint_runner: CheckpointRunner, checkpoint_store: MemoryStore) -> None:
    run = checkpoint_runner.run_interrupted(shout, kwargs={"words": ["a", "b", "c", "d"]}, interrupt_after=2)
    assert run.result == ["A", "B", "C", "D"]
    assert run.first_run_states == [["A"], ["A", "B"]]
    assert run.resumed_states == [["A", "B", "C"], ["A", "B", "C", "D"]]
    assert run.loaded_on_resume and run.resume_count == 1
    assert checkpoint_store.get(run.task_id) is None
    assert checkpoint_store.peek(run.task_id).done


def test_crash_leaves_the_checkpoint_like_a_dead_worker(checkpoint_runner: CheckpointRunner) -> None:
    """The resumed run found the first run's last save: the crash did not run on_failure."""
    run = checkpoint_runner.run_interrupted(total, args=(3,), interrupt_after=1)
    assert run.resumed_from == {"i": 1, "total": 1} == run.first_run_states[-1]
    assert run.saved_states == [{"i": 1, "total": 1}, {"i": 2, "total": 3}, {"i": 3, "total": 6}]


def test_throttle_can_be_given(checkpoint_runner: CheckpointRunner) -> None:
    """With a long throttle only each run's first save persists."""
    run = checkpoint_runner.run_interrupted(total, args=(5,), interrupt_after=1, throttle=60)
    assert run.result == 15
    assert run.first_run_states == [{"i": 1, "total": 1}]
    assert run.resumed_states == [{"i": 2, "total": 3}]


def test_task_is_left_as_it_was(checkpoint_runner: CheckpointRunner) -> None:
    checkpoint_runner.run_interrupted(total, args=(2,), interrupt_after=1)
    assert "_open_checkpointer" not in vars(app.tasks[total.name])
    assert total.request.id is None  # no request left pushed by the crashed run
    assert total.apply((3,)).get() == 6  # and it runs normally (no store configured)


def test_too_few_saves_to_interrupt_is_an_error(checkpoint_runner: CheckpointRunner) -> None:
    with pytest.raises(
        AssertionError, match=r"finished after 3 persisted save\(s\), before interrupt_after=5"
    ):
        checkpoint_runner.run_interrupted(total, args=(3,), interrupt_after=5)


@app.task(base=CheckpointTask, bind=True)
def swallow(self, checkpoint):
    try:  # noqa: SIM105 - the bug under test, spelled as users write it
        checkpoint.save({"i": 1})
    except BaseException:
        pass
    return "done"


@app.task(base=CheckpointTask, checkpoint_max_resumes=0)
def never_resumed(checkpoint):
    checkpoint.save({"i": 1})
    return 1


@app.task
def not_checkpointed():
    return 1


def test_misuse_is_reported(checkpoint_runner: CheckpointRunner) -> None:
    with pytest.raises(AssertionError, match="swallowed the simulated crash"):
        checkpoint_runner.run_interrupted(swallow, interrupt_after=1)
    with pytest.raises(AssertionError, match=r"would not resume it \(poisoned; checkpoint_max_resumes=0\)"):
        checkpoint_runner.run_interrupted(never_resumed, interrupt_after=1)
    with pytest.raises(TypeError, match="not a CheckpointTask"):
        checkpoint_runner.run_interrupted(not_checkpointed, interrupt_after=1)
    with pytest.raises(ValueError, match="interrupt_after must be >= 1"):
        checkpoint_runner.run_interrupted(total, args=(1,), interrupt_after=0)


def test_a_body_error_propagates_and_deletes_the_checkpoint(checkpoint_runner: CheckpointRunner) -> None:
    @app.task(base=CheckpointTask, bind=True, name="tests.fails_on_resume")
    def fails_on_resume(self: Any, checkpoint: Any) -> None:
        if checkpoint.load():
            raise ValueError("broken on resume")
        checkpoint.save({"i": 1})

    with pytest.raises(ValueError, match="broken on resume"):
        checkpoint_runner.run_interrupted(fails_on_resume, interrupt_after=1)
    assert list(checkpoint_runner.store.scan()) == []


# -- a broken task is caught, as a user's test suite would see it ------------

INNER_TESTS = """
from celery import Celery
from celery_checkpoint import CheckpointTask

app = Celery("inner")


@app.task(base=CheckpointTask, bind=True)
def good(self, n, checkpoint):
    state = checkpoint.load() or {"i": 0, "total": 0}
    for i in range(state["i"], n):
        state = {"i": i + 1, "total": state["total"] + i + 1}
        checkpoint.save(state)
    return state["total"]


@app.task(base=CheckpointTask, bind=True)
def restarts(self, n, checkpoint):
    state = {"i": 0, "total": 0}  # the bug: never looks at checkpoint.load()
    for i in range(state["i"], n):
        state = {"i": i + 1, "total": state["total"] + i + 1}
        checkpoint.save(state)
    return state["total"]


def check(task, checkpoint_runner):
    run = checkpoint_runner.run_interrupted(task, args=(6,), interrupt_after=3)
    assert run.result == 21  # a restart from zero still gets the sum right...
    assert run.saved_states == [{"i": i, "total": i * (i + 1) // 2} for i in range(1, 7)]


def test_good(checkpoint_runner):
    check(good, checkpoint_runner)


def test_restarts(checkpoint_runner):
    check(restarts, checkpoint_runner)


def test_restarts_never_loads(checkpoint_runner):
    assert checkpoint_runner.run_interrupted(restarts, args=(6,), interrupt_after=3).loaded_on_resume
"""


def test_a_task_that_restarts_from_zero_fails_its_test(pytester: pytest.Pytester) -> None:
    """No conftest: the fixtures come from the installed plugin's entry point."""
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("-p", "no:celery", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    # the second run saved {'i': 1} again where {'i': 4} was due: it started over
    result.stdout.fnmatch_lines(["*At index 3 diff: {'i': 1, 'total': 1} != {'i': 4, 'total': 10}"])
    result.stdout.fnmatch_lines(["*loaded_on_resume=False*"])


# -- next to Celery's own fixtures -------------------------------------------


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """Undo the logging setup of Celery's test worker (root level ERROR, handlers
    replaced), which would otherwise hide warnings from every later test's caplog."""
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        for lg, level, handlers, propagate, disabled in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled


@pytest.fixture
def celery_config() -> dict[str, Any]:
    """Celery's fixture hook for the test app's settings (a conftest would hold it)."""
    return {"checkpoint_store_url": "memory://next-to-celery-worker"}


def test_next_to_celery_worker(
    logging_restored: None,
    celery_app: Celery,
    celery_worker: Any,
    checkpoint_runner: CheckpointRunner,
    checkpoint_store: MemoryStore,
) -> None:
    @celery_app.task(base=CheckpointTask, bind=True, name="tests.tally")
    def tally(self: Any, n: int, checkpoint: Any) -> int:
        return int(total.run(n, checkpoint=checkpoint))

    celery_worker.reload()
    # a real (in-process) worker runs it with a real checkpointer on the app's store
    result = tally.delay(5)
    assert result.get(timeout=10) == 15
    app_store = open_store("memory://next-to-celery-worker")
    assert app_store.peek(result.id).done

    run: InterruptedRun = checkpoint_runner.run_interrupted(tally, args=(5,), interrupt_after=2)
    assert run.result == 15 and run.resume_count == 1
    assert run.first_run_states[-1] == {"i": 2, "total": 3}
    assert list(checkpoint_store.scan()) == [] and app_store.get(run.task_id) is None
