"""redis-server CPU per task, figure 5's task against its floor, without a worker.

``python -m bench.servercost [--tasks N] [--rounds R]`` runs figure 5's task
(load, one persisted save, complete) and its floor (the plain task doing a
redis-py ``SET`` and ``DEL`` by hand, see ``throughput.FLOOR``) through
Celery's own tracer in this process, as a pool process runs them, against a
private redis-server, and prints the server's CPU time per task (schedstat,
nanoseconds). Two PINGs per task are the reference for what two requests cost
whatever they ask.

Each runs twice: back to back, and spaced (a ~0.3 ms pause after each task,
about the gap between two tasks of one pool process in figure 5's worker).
Back to back, the delete that figure 5's task sends without waiting reaches
the server together with the next task's create and the two share a wake-up;
spaced, as in the worker, each request wakes the server on its own.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import redis
from celery.app.trace import build_tracer

from .apps import CHECKPOINT_SAVE, PLAIN_SET_DELETE, make_app
from .redis_server import PrivateRedis
from .report import median
from .soak import request_for
from .throughput import cpu_seconds

SPACING = 0.0003


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servercost", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with PrivateRedis() as server:
        assert server.proc is not None
        url = f"{server.url}/0"
        app = make_app(
            url, keyprefix="sc:broker:", queue="sc", checkpoint=True, store_url=url, store_prefix="sc:"
        )
        app.finalize()
        pinger = redis.Redis.from_url(url)

        def traced(name: str) -> Callable[[str], None]:
            trace = build_tracer(name, app.tasks[name], app=app, eager=False, propagate=False)

            def run(task_id: str) -> None:
                outcome = trace(task_id, [], {}, {**request_for(task_id, "sc"), "task": name})
                if outcome.info is not None:
                    raise RuntimeError(f"{name} failed: {outcome.info!r}")

            return run

        def two_pings(task_id: str) -> None:
            pinger.ping()
            pinger.ping()

        kinds = {"figure 5's task": traced(CHECKPOINT_SAVE), "floor (SET + DEL)": traced(PLAIN_SET_DELETE)}
        kinds["two PINGs"] = two_pings
        results: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for spaced in (False, True):
                for name, run in kinds.items():
                    for task_id in (str(uuid.uuid4()) for _ in range(200)):  # warm up
                        run(task_id)
                    ids = [str(uuid.uuid4()) for _ in range(args.tasks)]
                    pinger.ping()  # the last unanswered delete is read before the clock starts
                    before = cpu_seconds(server.proc.pid)
                    for task_id in ids:
                        run(task_id)
                        if spaced:
                            time.sleep(SPACING)
                    pinger.ping()
                    used = cpu_seconds(server.proc.pid) - before
                    label = f"{name}, {'spaced' if spaced else 'back to back'}"
                    results.setdefault(label, []).append(used / args.tasks * 1e6)
                    pinger.flushdb()
        app.close()
    for label, values in results.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{label:34s} redis-server {median(values):6.1f} us/task  (rounds: {rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
