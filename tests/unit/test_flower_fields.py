"""celery_checkpoint.flower: the checkpoint fields on Celery's event-state Task, for Flower."""

from __future__ import annotations

import copy
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
import pytest
from celery.events import state as event_state

import celery_checkpoint.flower as cf
from celery_checkpoint.checkpointer import Checkpointer
from celery_checkpoint.stores import create_store

EVENT = {
    "type": "task-checkpoint",
    "uuid": "t1",
    "hostname": "w1@box",
    "timestamp": 1_700_000_001.0,
    "local_received": 1_700_000_001.0,
    "clock": 2,
    "checkpoint_progress": 0.4567,
    "checkpoint_saves": 3,
    "checkpoint_saved_at": 1_700_000_000.5,
    "checkpoint_resume_count": 0,
    "checkpoint_owner": "w1@box",
}


@pytest.fixture
def task_class(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Any]]:
    """Celery's event-state Task as it is without install(), restored afterwards."""
    cls = event_state.Task
    monkeypatch.setattr(cls, "_fields", tuple(f for f in cls._fields if f not in cf.CHECKPOINT_FIELDS))
    for name in cf.CHECKPOINT_FIELDS:
        if name in vars(cls):
            monkeypatch.delattr(cls, name)
    yield cls
    for name in cf.CHECKPOINT_FIELDS:  # what install() added; monkeypatch restores the rest
        if name in vars(cls):
            delattr(cls, name)


def received_then_checkpoint(**fields: Any) -> Any:
    state = event_state.State()
    state.event({**EVENT, "type": "task-received", "clock": 1, "name": "app.crawl", "args": "()"})
    state.event({**EVENT, **fields})
    return state.tasks["t1"]


def test_fields_match_what_the_event_sends() -> None:
    handle = Checkpointer(
        task_id="t-sync",
        task_name="app.crawl",
        store=create_store("memory://flower-fields"),
        owner="w1@box|abc",
        throttle=0.0,
        serializer="json",
        accept=frozenset({"application/json"}),
        max_state_bytes=1024,
    )
    try:
        assert set(cf.CHECKPOINT_FIELDS) == set(handle.metadata())
    finally:
        handle.close()


def test_install_adds_fields_with_none_defaults(task_class: type[Any]) -> None:
    before = task_class._fields

    assert cf.install() is True

    assert task_class._fields == before + cf.CHECKPOINT_FIELDS
    for name in cf.CHECKPOINT_FIELDS:
        assert getattr(task_class, name) is None


def test_install_is_idempotent(task_class: type[Any]) -> None:
    cf.install()
    fields = task_class._fields
    assert cf.install() is True
    assert cf.install() is True
    assert task_class._fields == fields
    assert all(fields.count(name) == 1 for name in cf.CHECKPOINT_FIELDS)


def test_as_dict_of_a_task_without_checkpoint_fields(task_class: type[Any]) -> None:
    cf.install()
    task = task_class(uuid="plain", name="app.add", state="SUCCESS")

    data = task.as_dict()

    assert {name: data[name] for name in cf.CHECKPOINT_FIELDS} == dict.fromkeys(cf.CHECKPOINT_FIELDS)
    assert pickle.loads(pickle.dumps(task)).as_dict() == data


def test_checkpoint_event_fields_reach_as_dict_and_copies(task_class: type[Any]) -> None:
    cf.install()
    task = received_then_checkpoint()

    data = task.as_dict()

    assert data["state"] == "CHECKPOINT"
    assert {name: data[name] for name in cf.CHECKPOINT_FIELDS} == {n: EVENT[n] for n in cf.CHECKPOINT_FIELDS}
    # Flower formats copy.copy(task), which rebuilds the task from as_dict().
    assert copy.copy(task).checkpoint_saves == 3


def test_without_install_the_fields_are_not_serialized(task_class: type[Any]) -> None:
    task = received_then_checkpoint()
    assert task.checkpoint_saves == 3  # kept by Celery's event state...
    assert "checkpoint_saves" not in task.as_dict()  # ...but not shown by Flower


class IncompatibleTask:
    _fields: ClassVar[list[str]] = ["uuid", "name"]  # a list, not the tuple install() expects


class TaskWithoutFields:
    pass


@pytest.mark.parametrize("fake", [IncompatibleTask, TaskWithoutFields])
def test_incompatible_task_class_warns_and_changes_nothing(
    fake: type[Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(event_state, "Task", fake)
    before = dict(vars(fake))

    with caplog.at_level(logging.WARNING, logger="celery_checkpoint.flower"):
        assert cf.install() is False

    assert dict(vars(fake)) == before
    assert "checkpoint fields are not shown" in caplog.text
    assert "CHECKPOINT state" in caplog.text


@pytest.mark.parametrize("version", ["1.2.0", "3.0.0", "dev"])
def test_unsupported_flower_warns_and_changes_nothing(
    version: str, task_class: type[Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cf, "_flower_version", lambda: version)
    before = task_class._fields

    with caplog.at_level(logging.WARNING, logger="celery_checkpoint.flower"):
        assert cf.install() is False

    assert task_class._fields == before
    assert not hasattr(task_class, "checkpoint_saves")
    assert f"not {version}" in caplog.text


def test_without_flower_the_fields_are_still_added(
    task_class: type[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cf, "_flower_version", lambda: None)
    assert cf.install() is True
    assert "checkpoint_saves" in task_class._fields


# -- Flower's format_task option ------------------------------------------------


@pytest.fixture
def flower_options() -> Iterator[Any]:
    """Flower's (process-global) tornado options, with no formatter; restored afterwards."""
    import importlib.util

    from tests.harness import require

    require(importlib.util.find_spec("flower") is not None, "flower is not installed (pip install flower)")
    from flower.options import options

    saved = options.format_task
    options.format_task = None
    yield options
    options.format_task = saved


def test_install_outside_flower_leaves_its_options_alone(task_class: type[Any], flower_options: Any) -> None:
    assert cf.install() is True
    assert flower_options.format_task is None


def test_install_inside_flower_plugs_the_formatter(task_class: type[Any], flower_options: Any) -> None:
    with click.Context(click.Group("celery"), info_name="celery") as ctx:
        ctx.invoked_subcommand = "flower"  # `celery -A app flower` while it imports the app
        assert cf.install() is True
    assert flower_options.format_task is cf.format_task


def test_install_inside_flower_keeps_a_user_formatter(task_class: type[Any], flower_options: Any) -> None:
    def mine(task: Any) -> Any:
        return task

    flower_options.format_task = mine
    with click.Context(click.Command("flower"), info_name="flower"):  # running flowerconfig.py
        assert cf.install() is True
    assert flower_options.format_task is mine


def test_format_task_labels_a_running_task(task_class: type[Any]) -> None:
    cf.install()
    task = received_then_checkpoint()

    shown = cf.format_task(copy.copy(task))

    assert shown.state == "CHECKPOINT 45%"
    assert shown.checkpoint_progress == "45%"
    assert isinstance(shown.checkpoint_saved_at, str) and shown.checkpoint_saved_at.startswith("2023-11-14")
    assert task.state == "CHECKPOINT" and task.checkpoint_progress == EVENT["checkpoint_progress"]


def test_format_task_labels_a_resumed_task(task_class: type[Any]) -> None:
    cf.install()
    task = received_then_checkpoint(checkpoint_resume_count=2, checkpoint_progress=1.0)

    assert cf.format_task(copy.copy(task)).state == "CHECKPOINT 100% · resumed 2x"


def test_format_task_shows_a_revoked_task_as_revoked(task_class: type[Any]) -> None:
    """Celery ranks a custom state above REVOKED: after ``revoke(terminate=True)`` the event
    state keeps ``CHECKPOINT``, and the page and list would show a dead task as running."""
    cf.install()
    task = received_then_checkpoint()
    task.event("revoked", 1_700_000_002.0, 1_700_000_002.0, {"terminated": True, "signum": 15})
    assert task.state == "CHECKPOINT" and task.revoked == 1_700_000_002.0  # Celery's own ranking

    shown = cf.format_task(copy.copy(task))

    assert shown.state == "REVOKED"
    assert shown.checkpoint_progress == "45%"  # where it stopped


def test_format_task_leaves_other_tasks_alone(task_class: type[Any]) -> None:
    cf.install()
    task = task_class(uuid="plain", name="app.add", state="SUCCESS")

    shown = cf.format_task(copy.copy(task))

    assert shown.as_dict() == task.as_dict()


def test_the_example_apps_flower_loads_the_integration(tmp_path: Path) -> None:
    """docker-compose.yml runs Flower as ``celery -A example_app.tasks flower``, with no
    flowerconfig.py: the app module must install the integration, or that Flower shows a
    bare ``CHECKPOINT`` state and none of the checkpoint fields."""
    probe = (
        "import example_app.tasks\n"
        "from celery.events.state import Task\n"
        f"print(all(name in Task._fields for name in {cf.CHECKPOINT_FIELDS!r}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DEMO_DATA_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    env.pop("REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
