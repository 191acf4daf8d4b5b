"""What every command shares: the store it opens, and how it fails.

The store is found where the workers find it (``checkpoint_store_url``),
unless ``--store URL`` says otherwise. Every failure becomes one line on
stderr and an exit code a script can test, never a traceback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from ..config import CheckpointConfig
from ..errors import CheckpointStoreError, CorruptCheckpoint
from ..record import accepted_content_types
from ..stores import CheckpointStore, create_store
from ..stores.urls import redact, sqlite_path
from .states import STATES, Entry, entry_of

EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3

F = TypeVar("F", bound=Callable[..., Any])


class Refused(click.ClickException):
    """Nothing found, nothing matched, or the command declined: exit code 1."""

    exit_code = EXIT_REFUSED


class Unavailable(click.ClickException):
    """The store (or broker) cannot be reached or is not configured: exit code 3."""

    exit_code = EXIT_UNAVAILABLE


def one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Session:
    """The app, its checkpoint settings and an open store, for one command."""

    app: Any
    store: CheckpointStore
    config: CheckpointConfig

    def entries(self) -> list[Entry]:
        """Every entry with its state.

        Leases are read after the scan: an owner seen in the scan registered
        its lease before it wrote, so a live owner is never taken for dead.
        """
        items = list(self.store.scan())
        leases, now = self.store.leases(), time.time()
        return [entry_of(item, leases, now, self.store) for item in items]

    def entry(self, task_id: str) -> Entry:
        """The entry a TASK_ID argument names; exit 1 when there is none."""
        try:
            record = self.store.get(task_id)
        except CorruptCheckpoint as exc:
            return Entry(key=task_id, task_id=task_id, state="corrupt", reason=str(exc))
        if record is None:
            raise Refused(f"no checkpoint for task {task_id}")
        return entry_of(record, self.store.leases(), time.time(), self.store)

    def accept(self, task_name: str) -> frozenset[str]:
        """The content types the task itself would load (its serializer, plus JSON)."""
        from ..task import CheckpointTask

        task = self.app.tasks.get(task_name)
        config = task.checkpoint_config if isinstance(task, CheckpointTask) else self.config
        return accepted_content_types(config.serializer)


@contextmanager
def open_session(ctx: click.Context, store_url: str | None) -> Iterator[Session]:
    """Open the store; turn every store failure into a one-line exit 3."""
    app = _app(ctx)
    try:
        config = CheckpointConfig.from_sources(app.conf)
    except ValueError as exc:
        raise Unavailable(f"invalid checkpoint settings: {exc}") from exc
    url = store_url or ctx.meta.get(STORE_URL_KEY) or config.store_url
    if not url:
        raise Unavailable(
            "no checkpoint store: set checkpoint_store_url in the app's config or pass --store URL"
        )
    shown = redact(url)
    _refuse_missing_sqlite_file(url, shown)
    try:
        store = create_store(url, prefix=config.key_prefix, done_ttl=config.done_ttl)
    except (ValueError, TypeError, ImportError, CheckpointStoreError) as exc:
        # TypeError: a third-party store class written for another protocol.
        raise Unavailable(one_line(f"checkpoint store {shown}: {exc}")) from exc
    try:
        yield Session(app, store, config)
    except CheckpointStoreError as exc:
        raise Unavailable(one_line(str(exc))) from exc
    finally:
        store.close()


def _app(ctx: click.Context) -> Any:
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.UsageError("run it as `celery -A proj checkpoint ...`")
    return app


def _refuse_missing_sqlite_file(url: str, shown: str) -> None:
    """An inspection command must not create an empty database at a mistyped path."""
    if urlsplit(url).scheme != "sqlite":
        return
    path = sqlite_path(url)
    if path and not os.path.exists(path):
        raise Unavailable(f"checkpoint store {shown}: no such file {path!r}")


# -- options every command shares ---------------------------------------------

#: Where the group's ``--store`` leaves its URL for the command that runs.
STORE_URL_KEY = "celery_checkpoint.store_url"


def store_option(function: F) -> F:
    return click.option(
        "--store",
        "store_url",
        metavar="URL",
        help="Checkpoint store URL (default: the app's checkpoint_store_url).",
    )(function)


def state_option(help: str) -> Callable[[F], F]:
    """``--state``, the same choices for ``list`` and ``purge``."""

    def decorate(function: F) -> F:
        return click.option("--state", "states", multiple=True, type=click.Choice(STATES), help=help)(
            function
        )

    return decorate
