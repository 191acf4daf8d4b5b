"""What every command shares: the stores it opens, and how they fail.

The stores are found where the workers find them: the app's
``checkpoint_store_url`` and the ``checkpoint_store_url`` of each
checkpointed task that sets its own, unless ``--store URL`` picks one.
Every failure becomes one line on stderr and an exit code a script can
test, never a traceback.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from ..config import CheckpointConfig
from ..errors import CheckpointStoreError, CorruptCheckpoint
from ..record import accepted_content_types
from ..stores import CheckpointStore, create_store
from ..stores.urls import redact, sqlite_path
from ..task_stores import task_stores
from .states import STATES, Entry, entry_of

EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


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
    """The app, its checkpoint settings and one open store, for one command."""

    app: Any
    store: CheckpointStore
    config: CheckpointConfig
    #: The store as printed (its URL, password masked) when the command covers
    #: several stores; empty when it covers one, whose output names no store.
    label: str = ""

    @property
    def where(self) -> str:
        """`` in <store>`` after an entry's name, when there are several stores."""
        return f" in {self.label}" if self.label else ""

    def entries(self) -> list[Entry]:
        """Every entry with its state.

        Leases are read after the scan: an owner seen in the scan registered
        its lease before it wrote, so a live owner is never taken for dead.
        """
        items = list(self.store.scan())
        leases, now = self.store.leases(), time.time()
        return [entry_of(item, leases, now, self.store) for item in items]

    def lookup(self, task_id: str) -> Entry | None:
        """The entry of ``task_id`` in this store, or None when it has none."""
        try:
            record = self.store.get(task_id)
        except CorruptCheckpoint as exc:
            return Entry(key=task_id, task_id=task_id, state="corrupt", reason=str(exc))
        if record is None:
            return None
        return entry_of(record, self.store.leases(), time.time(), self.store)

    def entry(self, task_id: str) -> Entry:
        """The entry a TASK_ID argument names; exit 1 when there is none."""
        entry = self.lookup(task_id)
        if entry is None:
            raise Refused(f"no checkpoint for task {task_id}")
        return entry

    def accept(self, task_name: str) -> frozenset[str]:
        """The content types the task itself would load (its serializer, plus JSON)."""
        from ..task import CheckpointTask

        task = self.app.tasks.get(task_name)
        config = self.config
        if isinstance(task, CheckpointTask):
            # Invalid settings (the scan reports why, and points here) cannot say
            # what the task would load: the app's settings show its checkpoint.
            with suppress(ValueError):
                config = task.checkpoint_config
        return accepted_content_types(config.serializer)


class Stores:
    """Every store one command covers: the app's and each checkpointed task's own.

    With one store (the usual case) a store failure ends the command with
    its one line and exit 3, as it always did. With several, a store that
    fails is reported (one line on stderr, naming it) and left out, the
    others are still read, and the command exits 3 at the end; once every
    store has failed the command stops (when they fail as they are opened
    or first read, it has printed nothing else).
    """

    def __init__(self, sessions: list[Session], several: bool) -> None:
        self.live = sessions
        self.several = several
        self.failed = 0

    def fail(self, message: str, label: str) -> None:
        """Report one store's failure (several stores only)."""
        if label not in message:
            message = f"checkpoint store {label}: {message}"
        click.echo(f"Error: {one_line(message)}", err=True)
        self.failed += 1

    def gather(
        self, read: Callable[[Session], T], among: Sequence[Session] | None = None
    ) -> list[tuple[Session, T]]:
        """``read`` of every store still working (or of those ``among`` them)."""
        results: list[tuple[Session, T]] = []
        for session in list(self.live if among is None else among):
            if not any(session is live for live in self.live):
                continue
            try:
                results.append((session, read(session)))
            except CheckpointStoreError as exc:
                if not self.several:
                    raise
                self.fail(str(exc), session.label)
                self.live = [live for live in self.live if live is not session]
        if not self.live:
            raise click.exceptions.Exit(EXIT_UNAVAILABLE)
        return results

    def find(self, task_id: str, *, unique: bool) -> list[tuple[Session, Entry]]:
        """The stores that hold ``task_id``, with its entry in each.

        ``unique``: a command that changes the entry refuses when several
        stores hold one (``--store`` picks).
        """
        read = self.gather(lambda session: session.lookup(task_id))
        hits = [(session, entry) for session, entry in read if entry is not None]
        if not hits:
            searched = f" in {', '.join(session.label for session, _ in read)}" if self.several else ""
            raise self.refusal(f"no checkpoint for task {task_id}{searched}")
        if unique and len(hits) > 1:
            raise self.refusal(
                f"task {task_id} has a checkpoint in {len(hits)} stores "
                f"({', '.join(session.label for session, _ in hits)}); choose one with --store URL"
            )
        return hits

    def refusal(self, message: str) -> click.ClickException:
        """Exit 1 (nothing found), or 3 when a store that failed might have held it."""
        return Unavailable(message) if self.failed else Refused(message)

    def exit_code(self, code: int) -> int:
        """``code``, unless a store failed on the way: then 3."""
        return EXIT_UNAVAILABLE if self.failed else code


@contextmanager
def open_stores(ctx: click.Context, store_url: str | None) -> Iterator[Stores]:
    """Open every store the command covers; turn store failures into exit 3.

    ``--store URL`` restricts the command to that store.
    """
    app = _app(ctx)
    # The tasks, the stores they name, and the serializers they register: first,
    # so that the settings are checked against what the app's modules register.
    app.loader.import_default_modules()
    try:
        config = CheckpointConfig.from_sources(app.conf)
    except ValueError as exc:
        raise Unavailable(f"invalid checkpoint settings: {exc}") from exc
    configs = _configs(app, config, store_url or ctx.meta.get(STORE_URL_KEY))
    if not configs:
        raise Unavailable(
            "no checkpoint store: set checkpoint_store_url in the app's config or pass --store URL"
        )
    several = len(configs) > 1
    stores = Stores([], several)
    opened: list[CheckpointStore] = []
    try:
        for each, label in zip(configs, _labels(configs), strict=True):
            try:
                store = _open(each)
            except Unavailable as exc:
                if not several:
                    raise
                stores.fail(exc.message, label)
                continue
            opened.append(store)
            stores.live.append(Session(app, store, each, label if several else ""))
        if not stores.live:
            raise click.exceptions.Exit(EXIT_UNAVAILABLE)
        yield stores
    except CheckpointStoreError as exc:
        raise Unavailable(one_line(str(exc))) from exc
    finally:
        for store in opened:
            store.close()


def _open(config: CheckpointConfig) -> CheckpointStore:
    url = config.store_url or ""
    shown = redact(url)
    _refuse_missing_sqlite_file(url, shown)
    try:
        return create_store(url, prefix=config.key_prefix, done_ttl=config.done_ttl)
    except (ValueError, TypeError, ImportError, CheckpointStoreError) as exc:
        # TypeError: a third-party store class written for another protocol.
        raise Unavailable(one_line(f"checkpoint store {shown}: {exc}")) from exc


def _configs(app: Any, config: CheckpointConfig, chosen: str | None) -> list[CheckpointConfig]:
    """The settings once per store: the app's, then each checkpointed task's own.

    The same list the worker leases and scans (:mod:`..task_stores`), so the
    CLI sees what the workers see. A task whose settings are not valid is
    left out there (the worker logs it at start; ``resume`` names the
    problem for that task's checkpoints). ``chosen`` (``--store``) keeps the
    stores at that URL, or is a store of its own.
    """
    configs = task_stores(app, config).configs
    if chosen:
        return [each for each in configs if each.store_url == chosen] or [replace(config, store_url=chosen)]
    return configs


def _labels(configs: list[CheckpointConfig]) -> list[str]:
    """Each store's URL with its password masked, plus its key prefix where two share a URL."""
    urls = Counter(each.store_url for each in configs)
    return [
        redact(each.store_url or "")
        + (f" (key prefix {each.key_prefix})" if urls[each.store_url] > 1 else "")
        for each in configs
    ]


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
        help="Only this checkpoint store (default: the app's checkpoint_store_url "
        "and every checkpointed task's own).",
    )(function)


def state_option(help: str) -> Callable[[F], F]:
    """``--state``, the same choices for ``list`` and ``purge``."""

    def decorate(function: F) -> F:
        return click.option("--state", "states", multiple=True, type=click.Choice(STATES), help=help)(
            function
        )

    return decorate
