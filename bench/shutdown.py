"""SIGTERM during a long task: checkpoint handoff vs Celery's plain warm shutdown.

Run: .venv/bin/python -m bench.shutdown [--remaining 20] [--repeats 3]

For each repeat, a prefork worker A runs a task with ``--remaining`` seconds of
work left when it gets SIGTERM, while worker B is up and idle. Measured:
SIGTERM -> A exits, and SIGTERM -> the task runs again on B. The plain task
is the same loop without checkpoints; Celery's warm shutdown waits for it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def start_worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.shutdown_app",
        "worker",
        "-n",
        f"{name}@%h",
        "-P",
        "prefork",
        "-c",
        "1",
        "--without-mingle",
        "--without-gossip",
        "-l",
        "INFO",
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=open(log, "ab"),  # noqa: SIM115 - kept open for the worker's life
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if not wait(lambda: "ready." in log.read_text(errors="replace"), 60):
        raise RuntimeError(f"worker {name} did not start:\n{log.read_text()[-2000:]}")
    return proc


def one_run(task_name: str, remaining: float, env: dict[str, str], tmp: Path) -> tuple[float, float | None]:
    from celery import Celery

    marks = Path(env["BENCH_MARKS_DIR"])
    client = Celery("client", broker=env["BENCH_BROKER_URL"], backend=env["BENCH_BACKEND_URL"])
    a = start_worker("a", env, tmp / "a.log")
    warmup = 1.0
    steps = int((remaining + warmup) / STEP)
    result = client.send_task(f"bench.shutdown_app.{task_name}", args=(steps, STEP))
    wait(lambda: any(marks.glob(f"{result.id}.start.*")), 30)
    time.sleep(warmup)
    b = start_worker("b", env, tmp / "b.log")
    sigterm = time.time()
    os.kill(a.pid, signal.SIGTERM)
    a.wait(remaining + 60)
    exited = time.time() - sigterm
    resumed: float | None = None
    if wait(lambda: len(list(marks.glob(f"{result.id}.start.*"))) >= 2, 10):
        starts = sorted(float(p.read_text()) for p in marks.glob(f"{result.id}.start.*"))
        resumed = starts[1] - sigterm
    result.get(timeout=remaining + 60)
    os.kill(b.pid, signal.SIGTERM)
    b.wait(30)
    return exited, resumed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--remaining", type=float, default=20.0, help="seconds of work left at SIGTERM")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if not redis_server:
        sys.exit("redis-server is needed")
    port = free_port()
    tmpdir = tempfile.mkdtemp(prefix="bench-shutdown-")
    if True:
        tmp = Path(tmpdir)
        redis = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmpdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            url = f"redis://127.0.0.1:{port}"
            figures: dict[str, list[tuple[float, float | None]]] = {"plain_long": [], "checkpointed_long": []}
            for n in range(args.repeats):
                for task in figures:
                    run_dir = tmp / f"{task}-{n}"
                    (run_dir / "marks").mkdir(parents=True)
                    env = {
                        **os.environ,
                        "PYTHONPATH": str(ROOT),
                        "BENCH_BROKER_URL": f"{url}/0",
                        "BENCH_BACKEND_URL": f"{url}/1",
                        "BENCH_STORE_URL": f"{url}/2",
                        "BENCH_MARKS_DIR": str(run_dir / "marks"),
                    }
                    figures[task].append(one_run(task, args.remaining, env, run_dir))
        finally:
            redis.kill()
            redis.wait()
            if not os.environ.get("BENCH_KEEP"):
                shutil.rmtree(tmpdir, ignore_errors=True)
            else:
                print(f"logs kept in {tmpdir}")
    plain_exit = statistics.median(e for e, _ in figures["plain_long"])
    ckpt_exit = statistics.median(e for e, _ in figures["checkpointed_long"])
    ckpt_resumed = statistics.median(r for _, r in figures["checkpointed_long"] if r is not None)
    print(f"SIGTERM with {args.remaining:.0f} s of work left, medians of {args.repeats} runs, prefork -c 1:")
    print("| figure | checkpointed (handoff) | plain Celery (warm shutdown) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| SIGTERM -> worker exit | {ckpt_exit:.2f} s | {plain_exit:.2f} s | {ckpt_exit / plain_exit:.3f}x |"
    )
    print(
        f"| SIGTERM -> task running on another worker | {ckpt_resumed:.2f} s | never (finishes on the "
        f"stopping worker after {plain_exit:.1f} s) | - |"
    )


if __name__ == "__main__":
    main()
