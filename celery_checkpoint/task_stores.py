"""Which stores an app's checkpointed tasks use: the worker leases and scans them, the CLI reads them.

``checkpoint_store_url`` and ``checkpoint_key_prefix`` are task options as
well as app settings, so one app may save into several stores. The worker
and ``celery checkpoint`` must agree on that list: a store only the worker
knew would hold checkpoints no operator can see, one only the CLI knew
would hold checkpoints no worker resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .config import CheckpointConfig
from .task import CheckpointTask


@dataclass(frozen=True)
class TaskStores:
    """The app's settings once per store, app-level store first, then in task registration order."""

    configs: list[CheckpointConfig] = field(default_factory=list)
    #: Checkpointed tasks with no store at all (they run with a no-op checkpointer).
    storeless: list[str] = field(default_factory=list)
    #: Checkpointed tasks whose own settings are not valid: name -> why.
    invalid: dict[str, str] = field(default_factory=dict)


def store_identity(config: CheckpointConfig) -> tuple[str, str]:
    """What tells two stores apart: the URL, and the key prefix where the store uses one.

    Only Redis puts the prefix in its keys: two SQLite settings that differ
    only by prefix are one file, with one lease per worker in it.
    """
    url = config.store_url or ""
    return url, config.key_prefix if urlsplit(url).scheme in ("redis", "rediss") else ""


def task_stores(app: Any, config: CheckpointConfig) -> TaskStores:
    """Every distinct store among ``app``'s settings and its checkpointed tasks' own."""
    found: dict[tuple[str, str], CheckpointConfig] = {}
    if config.store_url:
        found[store_identity(config)] = config
    inventory = TaskStores()
    for name, task in list(app.tasks.items()):
        if not isinstance(task, CheckpointTask):
            continue
        try:
            own = task.checkpoint_config
        except ValueError as exc:
            inventory.invalid[name] = str(exc)
            continue
        if not own.store_url:
            inventory.storeless.append(name)
        elif store_identity(own) not in found:
            found[store_identity(own)] = replace(
                config, store_url=own.store_url, key_prefix=own.key_prefix, done_ttl=own.done_ttl
            )
    inventory.configs.extend(found.values())
    return inventory
