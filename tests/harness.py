"""Real processes for integration tests: a private redis-server and celery workers.

Every server and worker started here is owned by the test: it listens on a
free loopback port, and it is stopped by its pid. The shared services of
the machine are never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip locally with a reason; under CI=true a missing dependency fails."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A redis-server of the test's own, on a free port."""

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        #: Keep data across a restart (an append-only file fsynced on every write).
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        require(binary is not None, "redis-server is not installed (apt-get install redis-server)")
        assert binary is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class Worker:
    """A real ``celery worker`` process for an app module under tests/apps."""

    def __init__(self, app: str, env: dict[str, str], logdir: Path, name: str, args: list[str]) -> None:
        self.app = app
        self.env = env
        self.name = name
        self.args = args
        self.log = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.log, "ab")  # noqa: SIM115 - kept open for the child's life
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "-n",
            f"{self.name}@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            *self.args,
        ]
        self.proc = subprocess.Popen(
            cmd, env=self.env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 30) -> Worker:
        wait_for(lambda: "ready." in self.output() or self.exited(), timeout, f"worker {self.name} ready")
        if self.exited():
            raise AssertionError(f"worker {self.name} exited:\n{self.output()[-4000:]}")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def children(self) -> list[int]:
        try:
            out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        except FileNotFoundError:
            out = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        return [int(p) for p in out.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class Cluster:
    """A private Redis plus any number of workers sharing it."""

    def __init__(
        self, tmp: Path, app: str = "tests.apps.longtask", separate_store: bool = False, **settings: str
    ) -> None:
        self.tmp = tmp
        self.app = app
        self.redis = RedisServer(tmp / "redis")
        #: The checkpoint store's own server, when a test must break it alone.
        self.store_redis = RedisServer(tmp / "store-redis", persistent=True) if separate_store else self.redis
        self.settings = settings
        self.workers: list[Worker] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "CC_BROKER_URL": f"{self.redis.url}/0",
                "CC_BACKEND_URL": f"{self.redis.url}/1",
                "CC_STORE_URL": f"{self.store_redis.url}/2",
                "CC_FLAGS_DIR": str(self.tmp / "flags"),
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update({f"CC_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def worker(
        self,
        name: str,
        *args: str,
        pool: str = "prefork",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
    ) -> Worker:
        extra = ["-P", pool]
        if pool != "solo":
            extra += ["-c", str(concurrency)]
        worker = Worker(self.app, {**self.env(), **(env or {})}, self.tmp / "logs", name, [*extra, *args])
        self.workers.append(worker)
        return worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            if not worker.exited():
                os.killpg(worker.pid, signal.SIGKILL)
                worker.proc.wait(10) if worker.proc else None
        self.redis.stop()
        self.store_redis.stop()


@contextmanager
def cluster(tmp: Path, separate_store: bool = False, **settings: str) -> Iterator[Cluster]:
    c = Cluster(tmp, separate_store=separate_store, **settings)
    c.redis.start()
    if separate_store:
        c.store_redis.start()
    (tmp / "flags").mkdir(parents=True, exist_ok=True)
    try:
        yield c
    finally:
        c.stop()
