"""Instructions per task in a real worker's main process, counted by callgrind.

``python -m bench.instructions [--tasks N] VARIANT...`` (variants as in
:mod:`bench.ab`) starts each variant's ``celery worker -P prefork -c 2``
under ``valgrind --tool=callgrind``, lets it run a warm-up batch, zeroes the
main process's counters (``callgrind_control -z``), runs N tasks, dumps the
counters (``callgrind_control -d``) and prints the instructions the main
process executed per task, beside the first variant's.

Throughput on this VM moves by several percent from run to run, with the
same code (``bench.ab plain plain-again``), more than figure 4's margin. An
instruction count does not: it says whether a worker does more work per task,
whatever the machine's speed at the time. Needs valgrind; the workers run
~50x slower under it, so N is small.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from .ab import VariantRunner, parse_variant
from .apps import make_app
from .common import ROOT, Context
from .redis_server import PrivateRedis
from .throughput import Variant, worker_command

WARM_UP = 300


def count(variant: Variant, runner: VariantRunner, tasks: int, workdir: Path) -> int:
    """Instructions the variant's worker main process executed per task.

    The worker gets the environment ``bench.ab`` gives the same variant
    (``runner.env``), with a fixed hash seed.
    """
    url, client = runner.ctx.redis_url, runner.client
    tag = uuid.uuid4().hex[:8]
    keyprefix, queue, store_prefix = f"ins{tag}:", f"ins-{tag}", f"ins{tag}:store:"
    app = make_app(
        url,
        keyprefix=keyprefix,
        queue=queue,
        checkpoint=variant.checkpoint,
        store_url=url if variant.checkpoint else None,
        store_prefix=store_prefix,
    )
    task = app.tasks[variant.task]
    qkey, ukey = keyprefix + queue, keyprefix + "unacked"
    root = variant.root or ROOT
    env = runner.env(variant, keyprefix, queue, store_prefix) | {"PYTHONHASHSEED": "0"}
    out = workdir / f"callgrind.out.{tag}"
    log = workdir / f"{variant.name}.log"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    cmd = [*valgrind, *worker_command(f"ins-{tag}", queue)]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            cmd, env=env, cwd=root, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def run(n: int) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(producer=producer)
        while client.llen(qkey) or client.hlen(ukey):
            if proc.poll() is not None:
                raise RuntimeError(f"{variant.name}: the worker exited; its log is in {log}")
            time.sleep(0.2)

    try:
        run(WARM_UP)
        time.sleep(1.0)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        run(tasks)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        dump = Path(f"{out}.{proc.pid}.1")
        deadline = time.monotonic() + 30
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        for line in dump.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return round(int(line.split()[1]) / tasks)
        raise RuntimeError(f"no totals in {dump}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for key in client.scan_iter(match=f"ins{tag}*"):
            client.delete(key)
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="VARIANT[@CHECKOUT]")
    parser.add_argument("--tasks", type=int, default=1500)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("valgrind (with callgrind_control) is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="celery-checkpoint-instructions-"))
    try:
        with PrivateRedis() as server:
            ctx = Context(redis_url=f"{server.url}/0", quick=False, namespace="ins", workdir=workdir)
            runner = VariantRunner(ctx, args.tasks)
            try:
                counts = [(v, count(v, runner, args.tasks, workdir)) for v in args.variants]
            finally:
                runner.client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    first = counts[0][1]
    for variant, per_task in counts:
        print(f"{variant.name:24s} {per_task:>12,} per task (main process)  {per_task / first:.4f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
