"""A long Celery task that survives the death of its worker: a catalogue import.

Run a worker with::

    celery -A example_app.tasks worker --loglevel INFO

and start an import from Python::

    from example_app.tasks import import_catalogue
    result = import_catalogue.delay(200)
    print(result.get())

Kill the worker (even with ``kill -9``) while the import runs, start it again
under the same node name, and the import carries on from its last checkpoint
instead of item 0.

Configuration comes from the environment:

``REDIS_URL``
    Use Redis for everything: ``redis://host:6379/N`` puts the broker in
    db N, the results in db N+1 and the checkpoints in db N+2 (N defaults
    to 0).
unset
    Run without any server: SQLite for the checkpoints, kombu's
    ``filesystem://`` transport for the broker and ``file://`` for the
    results, all under ``DEMO_DATA_DIR`` (default ``./demo-data``). Good for
    trying things on one machine, not for production.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery
from celery.utils.log import get_task_logger

import celery_checkpoint.flower
from celery_checkpoint import Checkpointer, CheckpointTask, NullCheckpointer

logger = get_task_logger(__name__)

REDIS_URL = os.environ.get("REDIS_URL", "")
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", "demo-data")).resolve()


def redis_db(url: str, offset: int) -> str:
    """``url`` pointing at its own db number plus ``offset``."""
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + offset}"))


def embedded_settings(data_dir: Path) -> dict[str, Any]:
    """Broker, results and checkpoints in local files: no server to run."""
    queue, control, results = data_dir / "broker", data_dir / "broker-control", data_dir / "results"
    for folder in (queue, control, results):
        folder.mkdir(parents=True, exist_ok=True)  # kombu and Celery expect them to exist
    return {
        "broker_url": "filesystem://",
        # The worker reads the same folder the clients write to.
        "broker_transport_options": {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(control),
        },
        "result_backend": f"file://{results}",
        # Four slashes: sqlite:////absolute/path.db (SQLAlchemy's convention).
        "checkpoint_store_url": f"sqlite:///{data_dir / 'checkpoints.db'}",
    }


def redis_settings(url: str) -> dict[str, Any]:
    return {
        "broker_url": redis_db(url, 0),
        "result_backend": redis_db(url, 1),
        "checkpoint_store_url": redis_db(url, 2),
    }


app = Celery("example_app")
app.conf.update(redis_settings(REDIS_URL) if REDIS_URL else embedded_settings(DATA_DIR))
app.conf.update(
    # Write a checkpoint at most once a second (the default is every 5 s):
    # a save() called more often than that returns at once without writing.
    checkpoint_throttle=1.0,
    # One long task per pool process at a time; the others stay in the broker.
    worker_prefetch_multiplier=1,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
)
# Flower (docker-compose.yml runs `celery -A example_app.tasks flower`) shows
# each task's checkpoint progress, saves and resumes. In workers and clients
# this only adds five fields to a class they do not use (docs/flower.md).
celery_checkpoint.flower.install()


# -- the "catalogue": a fake supplier feed, the same every time it is read ----


def catalogue_item(index: int) -> dict[str, Any]:
    """Item ``index`` of the supplier's catalogue."""
    rng = random.Random(index)
    return {
        "sku": f"SKU-{index:05d}",
        "price": round(rng.uniform(1, 500), 2),
        "discontinued": rng.random() < 0.1,
    }


def import_item(item: dict[str, Any]) -> None:
    """Stand-in for the real work (fetch images, upsert a row): 50 to 100 ms.

    The items imported after the last checkpoint are imported again after a
    crash, so this must be idempotent: an upsert by SKU, not an insert.
    """
    time.sleep(0.05 + 0.05 * random.Random(item["sku"]).random())


def add_to_checksum(checksum: str, item: dict[str, Any]) -> str:
    """A running checksum of everything imported so far, in order."""
    return hashlib.sha256(f"{checksum}|{item['sku']}|{item['price']}".encode()).hexdigest()[:16]


def expected_checksum(items: int) -> str:
    """The checksum of an import of ``items`` items that was never interrupted."""
    checksum = ""
    for index in range(items):
        checksum = add_to_checksum(checksum, catalogue_item(index))
    return checksum


# -- the task --------------------------------------------------------------


@app.task(base=CheckpointTask, bind=True)
def import_catalogue(
    self: CheckpointTask, items: int = 200, *, checkpoint: Checkpointer | NullCheckpointer
) -> dict[str, Any]:
    """Import ``items`` catalogue items, resuming after the last saved one.

    ``checkpoint`` is passed in by CheckpointTask when the task runs; callers
    never pass it.
    """
    # The last saved state, or None when this task id has never run before.
    state = checkpoint.load() or {"next": 0, "imported": 0, "checksum": ""}
    if checkpoint.resume_count:
        logger.info(
            "resuming at item %d of %d (resume #%d): %d items were imported before the interruption",
            state["next"],
            items,
            checkpoint.resume_count,
            state["imported"],
        )
    else:
        logger.info("starting at item 0 of %d", items)

    for index in range(state["next"], items):
        item = catalogue_item(index)
        imported = state["imported"]
        if not item["discontinued"]:
            import_item(item)
            imported += 1
        state = {
            "next": index + 1,
            "imported": imported,
            "checksum": add_to_checksum(state["checksum"], item),
        }
        # Cheap to call after every item: it writes at most once per
        # checkpoint_throttle seconds. The state must be JSON-serializable.
        checkpoint.save(state, progress=(index + 1) / items)

    # Returning marks the task done and deletes its checkpoint.
    return {
        "items": items,
        "imported": state["imported"],
        "checksum": state["checksum"],
        "resumes": checkpoint.resume_count,
    }
