"""``celery -A proj checkpoint ...``: list, show, resume and purge checkpoints.

It is a Celery command plugin (the ``celery.commands`` entry point), so it
loads the user's app from ``-A`` like ``celery inspect`` does, and it finds
the stores where the workers find them: ``checkpoint_store_url`` in the
app's settings and in the options of each checkpointed task that sets its
own, unless ``--store URL`` picks one. With several stores every command
covers all of them and names the store of each entry it prints.

Scripts can rely on the exit code: 0 done; 1 nothing found, nothing matched,
or refused (a live run, a declined prompt, an entry that cannot be removed);
2 bad usage (click's own); 3 a store (for ``resume`` also the broker) is
unreachable or not configured. Errors are one line on stderr, never a
traceback: an operator's first question is "which store", and the line
names it.

Modules: ``context`` opens the stores and maps failures to exit codes,
``states`` classifies entries, ``render`` formats them, ``commands`` holds
``list``, ``show`` and ``purge``, and ``resume`` holds ``resume``.
"""

from __future__ import annotations

import click

from .commands import list_, purge, show
from .context import STORE_URL_KEY, store_option
from .resume import resume


@click.group(name="checkpoint")
@store_option
@click.pass_context
def checkpoint(ctx: click.Context, store_url: str | None) -> None:
    """Inspect, resume and purge task checkpoints.

    Exit codes: 0 done; 1 nothing found, nothing matched or refused;
    2 bad usage; 3 a store (or the broker) is unreachable or not configured.
    """
    if store_url:
        ctx.meta[STORE_URL_KEY] = store_url


for _command in (list_, show, resume, purge):
    checkpoint.add_command(_command)

__all__ = ["checkpoint"]
