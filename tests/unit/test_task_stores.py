"""The list of stores the worker leases and scans and the CLI reads (``task_stores``)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from celery_checkpoint import CheckpointTask
from celery_checkpoint.config import CheckpointConfig
from celery_checkpoint.task_stores import task_stores


def _app(url: str) -> Celery:
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", backend="cache+memory://")
    app.conf.checkpoint_store_url = url
    app.conf.checkpoint_key_prefix = "app:"
    return app


def _add(app: Celery, name: str, **options: Any) -> None:
    @app.task(base=CheckpointTask, bind=True, name=name, shared=False, **options)
    def body(self: CheckpointTask, checkpoint: Any) -> None:
        return None


def test_each_store_once_app_first_and_what_cannot_be_used_named(tmp_path: Path) -> None:
    app_url = f"sqlite:///{tmp_path / 'app.db'}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    app = _app(app_url)
    _add(app, "same-file-other-prefix", checkpoint_key_prefix="mine:")  # one SQLite file: one store
    _add(app, "own-file", checkpoint_store_url=other)
    _add(app, "own-file-again", checkpoint_store_url=other)
    _add(app, "redis-a", checkpoint_store_url="redis://127.0.0.1:1/0", checkpoint_key_prefix="a:")
    _add(app, "redis-b", checkpoint_store_url="redis://127.0.0.1:1/0", checkpoint_key_prefix="b:")
    _add(app, "no-store", checkpoint_store_url="")
    _add(app, "bad", checkpoint_throttle="soon")

    @app.task(name="plain", shared=False)
    def plain() -> None:
        return None

    app.finalize()
    found = task_stores(app, CheckpointConfig.from_sources(app.conf))
    # Other test modules' shared tasks join every app: look at ours only.
    ours = {app_url, other, "redis://127.0.0.1:1/0"}
    assert [(c.store_url, c.key_prefix) for c in found.configs if c.store_url in ours] == [
        (app_url, "app:"),
        (other, "app:"),
        ("redis://127.0.0.1:1/0", "a:"),
        ("redis://127.0.0.1:1/0", "b:"),
    ]
    assert "no-store" in found.storeless and "bad" not in found.storeless
    assert "throttle" in found.invalid["bad"]
    assert not {"same-file-other-prefix", "own-file", "redis-a", "no-store"} & set(found.invalid)
