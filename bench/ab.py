"""Throughput variants side by side, to find where a difference in figures 4 and 5 comes from.

``python -m bench.ab [--tasks N] [--rounds R] VARIANT...`` runs real workers
exactly as figures 4 and 5 do (same ``Runner``), round after round in
rotating order, and prints each variant's median tasks/s, its ratio to the
first variant (of the medians, and the median of the per-round ratios) and
the CPU per task of the worker's main process, its pool and redis-server, and
the cross-CPU wake-up interrupts per task (``throughput.wakeup_interrupts``).

Variants: ``plain``, ``checkpoint-noop`` and ``checkpoint-save`` (figures 4
and 5), and three that take the checkpointed worker apart:
``plain-late`` (the plain task with ``acks_late`` and
``reject_on_worker_lost``, what ``CheckpointTask`` turns on),
``plain-in-ckpt`` (the plain task in the checkpointed worker: the package
imported, its signal handlers and steward running) and
``plain-in-ckpt-nostore`` (the same with no store configured: no steward).
``plain-again`` is the plain task once more, for an A/A run that shows how
far two identical variants land apart. And one reference for figure 5,
``plain-set-delete``: the plain task doing by hand what that figure's task
asks of its checkpointer, a redis-py ``SET`` of its state and then a
``DEL``; ``plain-set-delete-late`` adds ``acks_late``.

``VARIANT@CHECKOUT`` runs a variant's worker on another checkout's code (its
``celery_checkpoint`` and ``bench``; ``git worktree add /tmp/old <commit>``),
so two commits are compared in one run, round by round, instead of in two
runs that the VM's drift between spells can tell apart by itself:
``python -m bench.ab plain checkpoint-noop checkpoint-noop@/tmp/old``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

from .apps import PLAIN_NOOP, PLAIN_NOOP_LATE, PLAIN_SET_DELETE
from .common import Context
from .redis_server import PrivateRedis
from .report import median
from .throughput import FLOOR, NOOP, PLAIN, PLAIN_AGAIN, SAVE, Runner, Variant

VARIANTS = {
    v.name: v
    for v in (
        PLAIN,
        PLAIN_AGAIN,
        NOOP,
        SAVE,
        Variant("plain-late", PLAIN_NOOP_LATE, checkpoint=False),
        Variant("plain-in-ckpt", PLAIN_NOOP, checkpoint=True),
        Variant("plain-in-ckpt-nostore", PLAIN_NOOP, checkpoint=True),
        Variant("plain-set-delete", PLAIN_SET_DELETE, checkpoint=False),
        FLOOR,
    )
}


class VariantRunner(Runner):
    def env(self, variant: Variant, keyprefix: str, queue: str, store_prefix: str) -> dict[str, str]:
        env = super().env(variant, keyprefix, queue, store_prefix)
        if variant.name.partition("-at-")[0].endswith("-nostore"):
            env["BENCH_STORE_URL"] = ""
        return env


def parse_variant(spec: str) -> Variant:
    """A variant by name, or ``NAME@CHECKOUT`` for that variant on another checkout's code."""
    name, _, checkout = spec.partition("@")
    if name not in VARIANTS:
        known = ", ".join(sorted(VARIANTS))
        raise argparse.ArgumentTypeError(f"unknown variant {name!r}; choose from {known}")
    base = VARIANTS[name]
    if not checkout:
        return base
    root = Path(checkout).resolve()
    if not (root / "celery_checkpoint").is_dir() or not (root / "bench").is_dir():
        raise argparse.ArgumentTypeError(f"{checkout}: not a celery-checkpoint checkout")
    # The name goes into queue and node names: letters, digits and dashes only.
    return replace(base, name=f"{name}-at-{re.sub(r'[^A-Za-z0-9]+', '-', str(root)).strip('-')}", root=root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="VARIANT[@CHECKOUT]")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    chosen: list[Variant] = args.variants
    if len({v.name for v in chosen}) != len(chosen):
        parser.error("a variant is named twice")
    workdir = Path(tempfile.mkdtemp(prefix="celery-checkpoint-ab-"))
    try:
        with PrivateRedis() as server:
            ctx = Context(
                redis_url=f"{server.url}/0",
                quick=False,
                namespace=f"ab-{uuid.uuid4().hex[:8]}",
                workdir=workdir,
                redis_pid=server.proc.pid if server.proc is not None else None,
            )
            runner = VariantRunner(ctx, args.tasks)
            rates: dict[str, list[float]] = {v.name: [] for v in chosen}
            for i in range(args.rounds):
                for variant in chosen[i % len(chosen) :] + chosen[: i % len(chosen)]:
                    rates[variant.name].append(runner.once(variant))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = rates[chosen[0].name]
    for variant in chosen:
        ours = rates[variant.name]
        paired = median([a / b for a, b in zip(ours, base, strict=True)])
        cpu = runner.cpu[variant.name]
        print(
            f"{variant.name:22s} {median(ours):7.1f} tasks/s  {median(ours) / median(base):.3f}x "
            f"(per round {paired:.3f}x)  CPU us/task main {median([c.main for c in cpu]):.0f} "
            f"pool {median([c.pool for c in cpu]):.0f} redis {median([c.redis or 0 for c in cpu]):.0f} "
            f"main waiting {median([c.main_waiting or 0 for c in cpu]):.0f}  "
            f"wake-up IRQs {median([c.wakeups or 0 for c in cpu]):.2f}  "
            f"runs {[round(r) for r in ours]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
