"""Shows a checkpointed task's retry lost by kombu, then sent again by celery-checkpoint.

Run: ``.venv/bin/python scripts/lost_retry_recovered.py`` (needs ``redis-server`` on
PATH; starts its own on a free port and stops it by pid).

The loss is kombu 5.7's, as in ``scripts/kombu_eta_loss.py``: worker ``w1`` (``-c 1``,
prefetch multiplier 1) runs an ETA task that fell due, and its outstanding ``BRPOP``
pops the next message into the socket, where it stays unread. Here that message is
the retry of a checkpointed task that worker ``w2`` ran (on its own queue): it saved,
then called ``self.retry(countdown=0)`` at that moment. ``w1`` is SIGKILLed and a
fresh ``w1`` started. The retry is in neither the queue nor the unacked hash, and
Celery alone would leave the task in RETRY for ever. celery-checkpoint's scan sends
it again ``checkpoint_requeue_after`` (2 s here) after it was due, and the task
finishes from its checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kombu_eta_loss import free_port

APP = """
import os, time
from celery import Celery
from celery_checkpoint import CheckpointTask

app = Celery("lostretry", broker=os.environ["BROKER"] + "/0", backend=os.environ["BROKER"] + "/0")
app.conf.update(
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    checkpoint_store_url=os.environ["BROKER"] + "/1",
    checkpoint_requeue_after=2.0,
    checkpoint_sweep_interval=0.5,
)

@app.task
def sleepy(seconds):
    time.sleep(seconds)
    return seconds

@app.task(base=CheckpointTask, bind=True)
def resumable(self, retry_at, checkpoint):
    state = checkpoint.load()
    if state is None:
        checkpoint.save({"step": 41}, force=True)
        time.sleep(max(0.0, retry_at - time.time()))
        raise self.retry(countdown=0, queue="celery")
    return state["step"] + 1
"""


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="lost-retry-"))
    (workdir / "lostretry.py").write_text(APP)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    os.environ["BROKER"] = f"redis://127.0.0.1:{port}"
    sys.path.insert(0, str(workdir))
    from lostretry import resumable, sleepy  # type: ignore[import-not-found]

    def worker(name: str, queue: str) -> subprocess.Popen[bytes]:
        command = ["celery", "-A", "lostretry", "worker", "-n", f"{name}@%h", "-Q", queue, "-c", "1"]
        return subprocess.Popen(
            [sys.executable, "-m", *command, "-l", "warning"],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"{name}.log", "ab"),  # held open for the child's life
        )

    client = redis.Redis(port=port)
    workers = [worker("w1", "celery"), worker("w2", "side")]
    try:
        time.sleep(4)
        sleepy.apply_async((10,), countdown=1.5)
        retry_at = time.time() + 1.7  # 0.2 s after the ETA task fell due on w1
        victim = resumable.apply_async((retry_at,), queue="side")
        time.sleep(2.7)
        queued = any(victim.id.encode() in m for m in client.lrange("celery", 0, -1))
        unacked = any(victim.id.encode() in m for m in client.hvals("unacked"))
        print(f"task {victim.id}: state {victim.state}; its retry in the queue {queued}, unacked {unacked}")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        print("w1 SIGKILLed; starting a fresh w1 and waiting up to 20 s")
        workers[0] = worker("w1", "celery")
        deadline = time.time() + 20
        while victim.state != "SUCCESS" and time.time() < deadline:
            time.sleep(0.2)
        print(f"task state after the restart: {victim.state}, result {victim.result}")
        resent = [line for line in (workdir / "w1.log").read_text().splitlines() if "taken for lost" in line]
        resent += [line for line in (workdir / "w2.log").read_text().splitlines() if "taken for lost" in line]
        for line in resent:
            print(f"  {line.strip()}")
        lost = not queued and not unacked
        print(
            f"retry message lost by kombu: {lost}; "
            f"{'recovered from its checkpoint' if victim.state == 'SUCCESS' else 'NOT recovered'}"
        )
        return 0 if victim.state == "SUCCESS" else 1
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
