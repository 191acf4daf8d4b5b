"""Submit a catalogue import and follow its checkpoints until it finishes.

Needs a running worker (``celery -A example_app.tasks worker``)::

    python -m example_app.submit --items 300
    docker compose run --rm demo-submit

Kill the worker while the import runs and start it again: the progress
picks up from the last checkpoint, and ``resumes`` goes up by one.
"""

from __future__ import annotations

import argparse
import sys
import time

from example_app.tasks import import_catalogue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Submit import_catalogue and follow its progress.")
    parser.add_argument("--items", type=int, default=300, help="catalogue items to import (default 300)")
    args = parser.parse_args(argv)

    result = import_catalogue.delay(args.items)
    print(f"submitted import_catalogue({args.items}): task id {result.id}", flush=True)
    store = import_catalogue.checkpoint_store()
    seen: tuple[int, int] | None = None
    try:
        while not result.ready():
            # The checkpoint store answers "how far is it?" for any task id,
            # from any process, and it is still there after its worker died.
            record = store.get(result.id) if store is not None else None
            if record is not None and (record.saves, record.resume_count) != seen:
                seen = (record.saves, record.resume_count)
                print(
                    f"  {record.progress or 0:4.0%} done, save #{record.saves}, "
                    f"resumes {record.resume_count}, worker {record.owner_host} ({record.status.value})",
                    flush=True,
                )
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nstopped following; the task goes on (task id {result.id})")
        return 130
    print(f"result: {result.get(propagate=False)} ({result.state})")
    return 0 if result.successful() else 1


if __name__ == "__main__":
    sys.exit(main())
