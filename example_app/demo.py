"""The celery-checkpoint demo: SIGKILL a worker in the middle of a long task,
start it again, and watch the task carry on from its last checkpoint.

Run it through ``scripts/demo``, which sets up the virtualenv first, or
directly from the project root::

    python -m example_app.demo                 # no server: SQLite + files in ./demo-data
    python -m example_app.demo --redis         # a private redis-server on a free port
    REDIS_URL=redis://127.0.0.1:6379/10 python -m example_app.demo   # dbs 10, 11, 12

It exits with status 0 only when the task resumed from its checkpoint (not
from item 0), its result matches an import that was never interrupted, and
no checkpoint is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from kombu.serialization import loads

from celery_checkpoint import CheckpointRecord

ROOT = Path(__file__).resolve().parent.parent
NODE = "demo-worker@%h"
STARTED = time.monotonic()


class DemoFailed(Exception):
    """The demo did not show what it promised (printed, exit status 1)."""


def say(text: str = "", indent: int = 0) -> None:
    print(f"[{time.monotonic() - STARTED:5.1f}s] {' ' * indent}{text}", flush=True)


# -- processes ---------------------------------------------------------------


class LogTail:
    """New complete lines of a log file, each time it is asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


class Worker:
    """A real ``celery worker`` process (prefork pool), logging to a file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = [
            *("celery", "-A", "example_app.tasks", "worker"),
            *("--pool", "prefork", "--concurrency", "2", "--hostname", NODE, "--loglevel", "INFO"),
        ]

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.command],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches the demo only
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pool_pids(self) -> list[int]:
        try:
            return [
                int(pid) for pid in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            ]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL the main process, as the OOM killer or a node failure would."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole group if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.destroy()
        return self.proc.returncode

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)


class PrivateRedis:
    """A throwaway redis-server of the demo's own, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DemoFailed("redis-server is not installed (scripts/demo --redis installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return f"redis://127.0.0.1:{self.port}/0"
            except OSError:
                time.sleep(0.1)
        raise DemoFailed(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- the demo ------------------------------------------------------------------

#: Worker log lines shown besides every line that names the demo's task.
INTERESTING = ("checkpoint resume scan",)
LOG_PREFIX = re.compile(r"^\[[^\]]*\] ")
RESUMED_AT = re.compile(r"resuming at item (\d+)")

STATUS_NOTES = {
    "queued": "the restarted worker found the dead worker's checkpoint and sent the task again, same id",
    "running": "a pool process of the new worker took the checkpoint over",
}

LOST_WITHOUT_CHECKPOINT = {
    "filesystem": (
        "The filesystem broker deleted the message when the worker took it: without the",
        "checkpoint, nothing would ever run this task again.",
    ),
    "redis": (
        "Redis keeps the message unacknowledged for its visibility timeout (1 hour by default):",
        "without the checkpoint, the task would start over from item 0 an hour from now.",
    ),
}


def state_of(record: CheckpointRecord) -> dict[str, Any]:
    """The task's saved state, decoded the way it was encoded (JSON by default)."""
    state = record.state
    value: dict[str, Any] = loads(
        state.payload, state.content_type, state.content_encoding, accept=[state.content_type]
    )
    return value


def process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


class Demo:
    """Runs one import, kills its worker, restarts it and checks the outcome."""

    def __init__(self, tasks: ModuleType, data_dir: Path, items: int, kill_at: float) -> None:
        self.tasks = tasks
        self.store = tasks.import_catalogue.checkpoint_store()
        self.items = items
        self.kill_at = kill_at
        self.worker = Worker(data_dir / "worker.log")
        self.tail = LogTail(self.worker.log)
        self.node = NODE.replace("%h", socket.gethostname())
        self.task_id = ""
        self.record: CheckpointRecord | None = None
        self.log: list[str] = []  # the worker's log lines since it last started

    # -- watching ----------------------------------------------------------

    def pump(self) -> None:
        """Show what is new in the worker's log and in the task's checkpoint."""
        for line in self.tail.lines():
            self.log.append(line)
            if (self.task_id and self.task_id in line) or any(word in line for word in INTERESTING):
                text = LOG_PREFIX.sub("", line)
                if self.task_id:
                    text = text.replace(self.task_id, f"{self.task_id[:8]}...")
                say(f"worker | {text}", indent=4)
        if not self.task_id:
            return
        last, record = self.record, self.store.get(self.task_id)
        self.record = record
        if record is None:
            return
        if last is not None and record.status != last.status and record.status.value in STATUS_NOTES:
            say(f"checkpoint status {record.status.value}: {STATUS_NOTES[record.status.value]}", indent=4)
        if last is None or record.saves != last.saves:
            state = state_of(record)
            say(
                f"checkpoint saved: {state['next']}/{self.items} items done ({record.progress or 0:.0%}), "
                f"{state['imported']} imported (save #{record.saves}, resume_count {record.resume_count})",
                indent=4,
            )

    def wait(self, done: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if done():
                return
            if not self.worker.alive():
                raise DemoFailed(f"the worker exited while waiting for {what}; see {self.worker.log}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}; see {self.worker.log}")
            time.sleep(0.1)

    def next_item(self) -> int:
        return state_of(self.record)["next"] if self.record is not None else 0

    def resumed_at(self) -> int | None:
        for line in self.log:
            match = RESUMED_AT.search(line)
            if match and self.task_id in line:
                return int(match.group(1))
        return None

    def start_worker(self) -> None:
        self.log = []
        self.worker.start()
        self.wait(lambda: any(" ready." in line for line in self.log), 60, "the worker to be ready")
        pool = ", ".join(map(str, self.worker.pool_pids()))
        say(f"worker {self.node} is up: main process {self.worker.pid}, pool processes {pool}", indent=4)

    # -- the story -----------------------------------------------------------

    def run(self) -> None:
        tasks, items = self.tasks, self.items
        say(f"1/6 Start a worker: {' '.join(self.worker.command)}")
        self.start_worker()

        say(f"2/6 Submit the task: import_catalogue.delay({items})")
        result = tasks.import_catalogue.delay(items)
        self.task_id = result.id
        say(f"task id {result.id}", indent=4)
        target = max(1, int(items * self.kill_at))
        self.wait(
            lambda: self.next_item() >= target or result.ready(), 60, f"a checkpoint past item {target}"
        )
        if result.ready():
            raise DemoFailed(
                f"the task finished ({result.state}) before the kill; try more --items or a smaller --kill-at"
            )
        # Let the task get a little past its last checkpoint, as a real crash would.
        crash_at = time.monotonic() + 0.4
        self.wait(lambda: time.monotonic() >= crash_at, 5, "a moment")

        pool = self.worker.pool_pids()
        say(
            f"3/6 Kill the worker: SIGKILL to its main process (pid {self.worker.pid}); "
            f"its pool processes ({', '.join(map(str, pool))}) die with it"
        )
        self.worker.kill()
        deadline = time.monotonic() + 5
        while not all(process_gone(pid) for pid in pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        record = self.store.get(self.task_id)
        if record is None:
            raise DemoFailed("the killed run left no checkpoint")
        saved = state_of(record)
        say("the worker is gone; the checkpoint it left behind:", indent=4)
        say(f"status        {record.status.value} (its owner {record.owner_host} is dead)", indent=6)
        say(f"saves         {record.saves}", indent=6)
        say(f"resume_count  {record.resume_count}", indent=6)
        say(f"progress      {record.progress or 0:.0%}", indent=6)
        say(f"state         {json.dumps(saved)}", indent=6)
        mode = "redis" if tasks.REDIS_URL else "filesystem"
        say(f"Celery's result backend still says {result.state}.", indent=4)
        for line in LOST_WITHOUT_CHECKPOINT[mode]:
            say(line, indent=4)

        say(f"4/6 Start the worker again, under the same node name ({self.node})")
        self.start_worker()
        self.wait(lambda: self.resumed_at() is not None, 60, "the task to resume")
        self.wait(result.ready, 120, "the task to finish")

        say("5/6 The result, from AsyncResult(task_id).get():")
        value = result.get(timeout=10)
        say(json.dumps(value), indent=4)
        self.check(value, saved["next"])

        say("6/6 Stop the worker (SIGTERM: warm shutdown)")
        say(f"worker stopped, exit status {self.worker.stop()}", indent=4)

    def check(self, value: dict[str, Any], saved_next: int) -> None:
        resumed_at = self.resumed_at()
        if not resumed_at or resumed_at != saved_next:
            raise DemoFailed(f"the task resumed at item {resumed_at}, expected {saved_next}")
        say(
            f"it resumed at item {resumed_at}, its last checkpoint: "
            f"items 0-{resumed_at - 1} were not imported again",
            indent=4,
        )
        say(
            "(those imported between that checkpoint and the kill were: make each item's import idempotent)",
            indent=4,
        )
        if value["resumes"] != 1:
            raise DemoFailed(f"expected one resume, the task reports {value['resumes']}")
        if value["checksum"] != self.tasks.expected_checksum(self.items):
            raise DemoFailed("the checksum differs from an import that was never interrupted")
        say("the checksum matches an import that was never interrupted", indent=4)
        deadline = time.monotonic() + 10
        while self.store.get(self.task_id) is not None:
            if time.monotonic() > deadline:
                raise DemoFailed("the checkpoint is still there after the task succeeded")
            time.sleep(0.1)
        say(
            "no checkpoint is left: store.get(task_id) -> None (it is deleted when the task succeeds)",
            indent=4,
        )


# -- entry point ---------------------------------------------------------------

#: Files the demo owns in its data directory, removed before each run.
DEMO_FILES = (
    "broker",
    "broker-control",
    "results",
    "checkpoints.db",
    "checkpoints.db-wal",
    "checkpoints.db-shm",
    "worker.log",
    "redis",
)


def clean(data_dir: Path) -> None:
    for name in DEMO_FILES:
        path = data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)


def introduce(tasks: ModuleType, items: int) -> None:
    conf = tasks.app.conf
    broker = conf.broker_url
    if broker.startswith("filesystem"):
        broker += f" (message files in {conf.broker_transport_options['data_folder_in']})"
    print(
        "celery-checkpoint demo: a worker is killed with SIGKILL in the middle of a long task;\n"
        "after a restart the task carries on from its last checkpoint instead of starting over.\n\n"
        f"  task         example_app.tasks.import_catalogue: {items} items, 50-100 ms each,\n"
        f"               a checkpoint at most every {conf.checkpoint_throttle:g} s\n"
        f"  broker       {broker}\n"
        f"  results      {conf.result_backend}\n"
        f"  checkpoints  {conf.checkpoint_store_url}\n",
        flush=True,
    )


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # runs the clean-up in main()'s finally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200, help="catalogue items to import (default 200)")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.4,
        help="kill the worker at this fraction of the work (default 0.4)",
    )
    parser.add_argument("--redis", action="store_true", help="run a private redis-server for the demo")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DEMO_DATA_DIR", "demo-data")),
        help="where the demo keeps its files (default $DEMO_DATA_DIR or ./demo-data)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < 1 or args.items < 1:
        parser.error("--kill-at must be between 0 and 1, --items at least 1")
    data_dir = args.data_dir.resolve()
    os.environ["DEMO_DATA_DIR"] = str(data_dir)  # read by example_app.tasks, here and in the worker
    # Whatever way the demo is stopped, it stops its worker (and redis-server) first.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)

    redis: PrivateRedis | None = None
    demo: Demo | None = None
    try:
        clean(data_dir)
        if args.redis:
            redis = PrivateRedis(data_dir / "redis")
            os.environ["REDIS_URL"] = redis.start()
        from example_app import tasks  # configured from the environment set above

        introduce(tasks, args.items)
        demo = Demo(tasks, data_dir, args.items, args.kill_at)
        demo.run()
        say(f"Done. The worker's full log is in {demo.worker.log}")
        return 0
    except DemoFailed as exc:
        say(f"DEMO FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if demo is not None and demo.worker.alive():
            say(f"stopping the worker (pid {demo.worker.pid})")
            demo.worker.destroy()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
