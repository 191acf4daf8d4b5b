"""``python -m bench``: every benchmark, against a real Redis, as one table.

Without ``--redis-url`` a private ``redis-server --port <free> --save ''`` is
started for the run and stopped by its pid at the end. With ``--redis-url``
every key the run writes is under a unique prefix (``bench-<id>:``) and is
deleted at the end; nothing else in that database is read or changed.

    python -m bench                      # the full suite (~25 minutes on 2 cores)
    python -m bench --quick              # smoke run: tiny sizes, numbers mean nothing
    python -m bench --only micro,redis   # some groups only
    python -m bench --markdown           # also print the table as markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import redis

from . import longloop, micro, saves, scan, soak, throughput
from .common import ROOT, Context
from .redis_server import PrivateRedis
from .report import Figure, markdown_table, spreads_markdown, text_table

GROUPS: dict[str, tuple[str, Callable[[Context], list[Figure]]]] = {
    "micro": ("figure 1: skipped save()", micro.run),
    "redis": ("figure 2: persisted save() on Redis", saves.run_redis),
    "sqlite": ("figure 3: persisted save() on SQLite", saves.run_sqlite),
    "throughput": ("figures 4, 5: worker throughput", throughput.run),
    "long": ("figure 6: long task", longloop.run),
    "scan": ("figure 7: resume scan", scan.run),
    "soak": ("figure 8: steady state", soak.run),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this Redis (db in the URL) instead of a private server")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run in seconds; figures are not meaningful"
    )
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run (default: all): {', '.join(GROUPS)}",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    parser.add_argument(
        "--output", type=Path, help="write the markdown report (table, spreads, versions) here"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a figure misses its target"
    )
    args = parser.parse_args(argv)
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    return args


def versions(redis_url: str) -> dict[str, str]:
    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    client = redis.Redis.from_url(redis_url)
    try:
        server = str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
    return {
        "celery-checkpoint": commit(),
        "python": platform.python_version(),
        "celery": pkg("celery"),
        "kombu": pkg("kombu"),
        "billiard": pkg("billiard"),
        "redis-py": pkg("redis"),
        "hiredis": pkg("hiredis"),
        "redis-server": server,
        "sqlite": sqlite3.sqlite_version,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": str(len(os.sched_getaffinity(0))),
    }


def commit() -> str:
    """The commit measured, and whether the package differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = ["git", "status", "--porcelain", "--", "celery_checkpoint"]
        dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"{head}{' + local changes' if dirty else ''}"


def report_markdown(figures: list[Figure], info: dict[str, str], command: str, elapsed: float) -> str:
    lines = [
        f"Command: `{command}` ({elapsed:.0f} s)",
        "",
        markdown_table(figures),
        "",
        "Spread of the repeats behind each median:",
        "",
        spreads_markdown(figures),
        "",
        "Details:",
        "",
        *(f"- {f.key}: {f.info}" for f in figures if f.info),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    figures: list[Figure] = []
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="celery-checkpoint-bench-"))
        stack.callback(shutil.rmtree, workdir, True)
        redis_pid = None
        if args.redis_url:
            url = args.redis_url
        else:
            server = stack.enter_context(PrivateRedis())
            url = f"{server.url}/0"
            redis_pid = server.proc.pid if server.proc is not None else None
        ctx = Context(
            redis_url=url, quick=args.quick, namespace=namespace, workdir=workdir, redis_pid=redis_pid
        )
        stack.callback(ctx.forget_keys, f"{namespace}*")
        ctx.log(f"redis {url}, key namespace {namespace}{' (quick: smoke only)' if args.quick else ''}")
        info = versions(url)
        load_before = os.getloadavg()[0]
        for group in GROUPS:  # table order, whatever the order of --only
            if group in args.groups:
                figures.extend(GROUPS[group][1](ctx))
    elapsed = time.perf_counter() - started
    # Other processes on the machine add noise; say how busy it was.
    info["load average (1 min) before/after"] = f"{load_before:.2f}/{os.getloadavg()[0]:.2f}"
    figures.sort(key=lambda f: f.key)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    if args.quick:
        print("QUICK RUN: sizes and repeats are tiny; the figures below prove the suite runs, nothing more.")
    print(text_table(figures))
    print()
    for f in figures:
        if f.info:
            print(f"  {f.key}: {f.info}")
    print()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"elapsed: {elapsed:.0f} s")
    if args.markdown:
        print()
        print(markdown_table(figures))
    if args.output:
        args.output.write_text(report_markdown(figures, info, command.strip(), elapsed))
    failed = [f.key for f in figures if not f.passed]
    if failed:
        print(f"\ntargets missed: {', '.join(failed)}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
