"""Shows kombu's Redis transport losing a message after an ETA task falls due.

Run: ``.venv/bin/python scripts/kombu_eta_loss.py`` (needs ``redis-server`` on PATH;
starts its own on a free port and stops it by pid).

Why celery-checkpoint's store-error retries never use a countdown. A worker that
receives an ETA message raises its prefetch limit by one, and lowers it again when
the message falls due. kombu 5.7 stops reading a ``BRPOP`` reply while the consumer
has no prefetch credit, but the ``BRPOP`` may already be waiting on the server: a
message that arrives then is popped from the queue and left unread in the socket,
in neither the queue nor the unacked hash. When the worker is SIGKILLed, that
message is gone; no restore can bring it back.

The script: one worker (``-c 1``, prefetch multiplier 1, ``acks_late``); an ETA task
due in 1.5 s that then runs for 10 s; a second task sent 0.2 s after the first falls
due. It prints where the second task's message is, SIGKILLs the worker, starts a
fresh one and waits to see whether the second task ever runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

APP = """
import os, time
from celery import Celery
app = Celery("etaloss", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True)

@app.task
def sleepy(seconds):
    time.sleep(seconds)
    return seconds
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kombu-eta-loss-"))
    (workdir / "etaloss.py").write_text(APP)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    os.environ["BROKER"] = url
    sys.path.insert(0, str(workdir))
    from etaloss import sleepy  # type: ignore[import-not-found]

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "etaloss", "worker", "-c", "1", "-l", "warning"],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    client = redis.Redis(port=port)
    first = worker()
    try:
        time.sleep(4)
        sleepy.apply_async((10,), countdown=1.5)
        time.sleep(1.7)  # the ETA task fell due 0.2 s ago and runs
        victim = sleepy.delay(0.1)
        time.sleep(1.0)
        queued = any(victim.id.encode() in m for m in client.lrange("celery", 0, -1))
        unacked = any(victim.id.encode() in m for m in client.hvals("unacked"))
        print(f"second task {victim.id}: in the queue {queued}, in the unacked hash {unacked}")
        first.send_signal(signal.SIGKILL)
        first.wait()
        print("worker SIGKILLed; starting a fresh one and waiting 15 s")
        second = worker()
        try:
            time.sleep(15)
            state = victim.state
        finally:
            second.terminate()
            second.wait()
        print(f"second task state after the restart: {state}")
        lost = not queued and not unacked and state == "PENDING"
        print("LOST: kombu popped it and nobody will ever deliver it" if lost else "not lost this time")
        return 0
    finally:
        if first.poll() is None:
            first.kill()
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
