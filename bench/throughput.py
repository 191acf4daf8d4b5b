"""Figures 4 and 5: tasks/s of a real ``celery worker -P prefork -c 2``, Redis broker.

One run: enqueue N no-argument tasks (``ignore_result``) while no worker
is up, start a fresh worker on that queue, and time from the moment it takes
its first message to the moment the queue and the broker's unacked set are
both empty. Worker start-up and shutdown are outside the timed window. The
queue is watched from here with LLEN/HLEN, slowly while it is long and every
2 ms near both ends, so the watching costs the worker next to nothing.

Four variants run in rotating order, round after round: the plain Celery
task (its worker does not import celery_checkpoint), a ``CheckpointTask``
whose body never touches its checkpointer, one that loads, saves once and
completes, and figure 5's floor (the plain task writing and deleting a key
by hand, see ``FLOOR``). Each figure is the median of the checkpointed runs
over the median of the plain runs of the same rounds.

Each run also counts the CPU time (from ``/proc``) that the worker's main
process, its pool processes and the private redis-server spend inside the
timed window, per task, and how long the main process -- the bottleneck --
was runnable but had no CPU. On a VM whose speed drifts by +-10 % from run
to run, those say where a difference comes from when the tasks/s cannot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .apps import (
    CHECKPOINT_NOOP,
    CHECKPOINT_SAVE,
    PLAIN_NOOP,
    PLAIN_SET_DELETE,
    PLAIN_SET_DELETE_LATE,
    STACKS_SIGNAL,
    make_app,
)
from .common import ROOT, Context
from .report import Figure, alternate, median


@dataclass(frozen=True)
class Variant:
    name: str
    task: str
    checkpoint: bool
    #: The checkout whose ``celery_checkpoint`` and ``bench`` the worker runs
    #: (``None``: this one). ``bench.ab`` compares commits in one run with it.
    root: Path | None = None


PLAIN = Variant("plain", PLAIN_NOOP, checkpoint=False)
NOOP = Variant("checkpoint-noop", CHECKPOINT_NOOP, checkpoint=True)
SAVE = Variant("checkpoint-save", CHECKPOINT_SAVE, checkpoint=True)
#: Figure 5's floor, not a figure: the plain task doing by hand the least a
#: checkpoint takes in Redis, a redis-py SET of its state and a DEL at the end,
#: with the delivery options CheckpointTask turns on.
FLOOR = Variant("plain-set-delete-late", PLAIN_SET_DELETE_LATE, checkpoint=False)
#: The plain task again, not a figure: the same worker run twice per round, so
#: the table says how far two identical variants land apart in this run. On a
#: VM whose speed wanders from run to run, a ratio closer to 1 than that says
#: nothing either way.
PLAIN_AGAIN = Variant("plain-again", PLAIN_NOOP, checkpoint=False)

#: Plain tasks that write to Redis by hand: their worker gets the store's URL.
_STORING = (PLAIN_SET_DELETE, PLAIN_SET_DELETE_LATE)

#: Seconds without one message leaving the queue or the unacked set before a
#: run counts as stalled. A run drains ~1,000 tasks a second; nothing it
#: does legitimately pauses for this long.
STALL_AFTER = 30.0


class RunStalled(RuntimeError):
    """A worker run that stopped draining its queue (the message has its stacks)."""


def worker_command(name: str, queue: str) -> list[str]:
    """The ``celery worker`` command line figures 4 and 5 run (``bench.instructions`` too)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.worker_app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-Q",
        queue,
        "-n",
        f"{name}@%h",
        "--loglevel",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]


class WorkerProcess:
    """A ``celery worker`` of this run, stopped by its pid."""

    def __init__(self, env: dict[str, str], name: str, queue: str, log: Path, root: Path = ROOT) -> None:
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = worker_command(name, queue)
        with open(log, "ab") as handle:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=root, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def pool(self) -> list[int]:
        """The pids of its pool processes."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as handle:
                return [int(pid) for pid in handle.read().split()]
        except OSError:
            return []

    def output(self, limit: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-limit:] if self.log.exists() else ""

    def stacks(self) -> str:
        """Every thread's stack in the main and pool processes, and the log around them.

        For a stalled run: which process waits, and on what. The processes
        print their stacks to the log (``faulthandler``, see ``worker_app``).
        """
        states = []
        for pid in [self.proc.pid, *self.pool()]:
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
                with open(f"/proc/{pid}/wchan") as handle:
                    wchan = handle.read().strip()
                os.kill(pid, STACKS_SIGNAL)
            except OSError as exc:
                states.append(f"pid {pid}: {exc}")
                continue
            states.append(f"pid {pid}: state {state}, kernel wait {wchan or '-'}")
        time.sleep(1.0)
        return "\n".join(states) + "\n" + self.output(limit=30_000)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # warm shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: it and its pool
                self.proc.wait(10)


def _schedstat(pid: int, field: int) -> float | None:
    """A ``/proc/<pid>/task/*/schedstat`` field summed over the process's threads, in seconds.

    Field 0 is time on a CPU, field 1 time spent runnable but waiting for
    one; both count in nanoseconds. ``None`` where the kernel has no
    schedstat, or a thread ended between the listing and the read.
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                total += int(handle.read().split()[field])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (0 if it is gone).

    From schedstat, in nanoseconds: ``/proc/<pid>/stat`` counts in clock
    ticks (10 ms), too coarse for a short run -- 200 tasks of 50 us each are
    one tick, so a quick run read 0 or 50 us per task by chance. The tick
    count is the fallback.
    """
    precise = _schedstat(pid, 0)
    if precise is not None:
        return precise
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waiting_seconds(pid: int) -> float | None:
    """Time a process spent runnable but waiting for a CPU (``None`` if unknown).

    The worker's main process is figures 4 and 5's bottleneck: what it waits
    while a pool child or redis-server holds the CPU slows every task.
    """
    return _schedstat(pid, 1)


def wakeup_interrupts() -> int | None:
    """Rescheduling and function-call interrupts so far, all CPUs (``None`` if unknown).

    One is sent, mostly, when a process wakes another on the other CPU while
    that CPU runs something (rescheduling) or sits idle (function call).
    Machine-wide, so it counts the benchmark's own polling too, the same for
    every variant. ``python -m bench.vcpu`` measures what such a wake-up costs.
    """
    try:
        with open("/proc/interrupts") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    # x86 names these rows RES and CAL, arm64 IPI0 and IPI1: the descriptions are the same.
    wanted = ("Rescheduling interrupts", "Function call interrupts")
    rows = [line.split(":", 1)[1].split() for line in lines if line.strip().endswith(wanted)]
    return sum(int(field) for row in rows for field in row if field.isdigit()) if rows else None


@dataclass
class CpuPerTask:
    """Microseconds of CPU per task inside the timed window, per process role."""

    main: float
    pool: float
    redis: float | None
    #: Microseconds per task the main process was runnable but had no CPU.
    main_waiting: float | None = None
    #: Cross-CPU wake-up interrupts per task, machine-wide (``wakeup_interrupts``).
    wakeups: float | None = None


@dataclass
class CpuSnapshot:
    """Cumulative counters read at the edges of the timed window."""

    main: float
    pool: float
    redis: float | None
    main_waiting: float | None
    wakeups: int | None


class Runner:
    def __init__(self, ctx: Context, n: int) -> None:
        self.ctx = ctx
        self.n = n
        #: Each run's broker keys go under ``<keyprefix><run>:``: its own queue and,
        #: above all, its own unacked hash, which the drain watches. Shared, a
        #: message a stopped worker left unacked made every later run wait on it.
        self.keyprefix = f"{ctx.namespace}:broker:"
        self.client = ctx.client()
        self.runs = 0
        self.saved: list[int] = []
        #: One line per run that stalled and was run again.
        self.stalls: list[str] = []
        #: Variant name -> CPU per task of each of its runs (Linux /proc only).
        self.cpu: dict[str, list[CpuPerTask]] = {}

    def _cpu_now(self, worker: WorkerProcess) -> CpuSnapshot:
        pid = self.ctx.redis_pid
        return CpuSnapshot(
            main=cpu_seconds(worker.proc.pid),
            pool=sum(cpu_seconds(child) for child in worker.pool()),
            redis=cpu_seconds(pid) if pid else None,
            main_waiting=waiting_seconds(worker.proc.pid),
            wakeups=wakeup_interrupts(),
        )

    def env(self, variant: Variant, keyprefix: str, queue: str, store_prefix: str) -> dict[str, str]:
        env = dict(os.environ)
        stores = variant.checkpoint or variant.task in _STORING
        env.update(
            {
                "BENCH_BROKER_URL": self.ctx.redis_url,
                "BENCH_KEYPREFIX": keyprefix,
                "BENCH_QUEUE": queue,
                "BENCH_CHECKPOINT": "1" if variant.checkpoint else "0",
                "BENCH_STORE_URL": self.ctx.redis_url if stores else "",
                "BENCH_STORE_PREFIX": store_prefix,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(variant.root or ROOT), env.get("PYTHONPATH", "")) if p
                ),
            }
        )
        return env

    def once(self, variant: Variant) -> float:
        """One timed run; a run that stalls is reported and run again, once.

        A stall is not a slow run: its tasks/s would be meaningless. It is
        reported in full (stderr) and counted in the figure's notes; a
        second stall in a row ends the benchmark.
        """
        try:
            return self._run(variant)
        except RunStalled as exc:
            self.ctx.log(f"   {variant.name}: {exc}")
            self.stalls.append(f"{variant.name} (run {self.runs})")
            self.ctx.log(f"   {variant.name}: run again after a stall")
            return self._run(variant)

    def _run(self, variant: Variant) -> float:
        self.runs += 1
        keyprefix = f"{self.keyprefix}{self.runs}:"
        queue = f"tp-{variant.name}-{self.runs}"
        store_prefix = f"{self.ctx.namespace}:tp{self.runs}:"
        app = make_app(
            self.ctx.redis_url,
            keyprefix=keyprefix,
            queue=queue,
            checkpoint=variant.checkpoint,
            store_url=self.ctx.redis_url if variant.checkpoint else None,
            store_prefix=store_prefix,
        )
        task = app.tasks[variant.task]
        with app.producer_or_acquire() as producer:
            for _ in range(self.n):
                task.apply_async(producer=producer)
        qkey, ukey = keyprefix + queue, keyprefix + "unacked"
        queued = int(self.client.llen(qkey))
        if queued != self.n:
            raise RuntimeError(f"{queued} messages in {qkey}, expected {self.n}")

        name = f"bench-{variant.name}-{self.runs}"
        worker = WorkerProcess(
            self.env(variant, keyprefix, queue, store_prefix),
            name,
            queue,
            self.ctx.workdir / "logs" / f"{name}.log",
            variant.root or ROOT,
        )
        try:
            t0 = self._first_taken(worker, qkey)
            before = self._cpu_now(worker)
            t1 = self._drained(worker, qkey, ukey)
            after = self._cpu_now(worker)
            self.cpu.setdefault(variant.name, []).append(self._per_task(before, after))
        finally:
            worker.stop()
            app.close()
        left_queued, left_unacked = int(self.client.llen(qkey)), int(self.client.hlen(ukey))
        if left_queued or left_unacked:
            # Messages the worker took after the drain looked complete (popped,
            # not yet recorded as unacked) and did not finish or give back.
            self.ctx.log(
                f"   run {self.runs}: {left_queued} queued, {left_unacked} unacked after its worker stopped"
            )
        if variant is SAVE:
            # Each run saved and completed: a "done" marker per task, no record left.
            done = sum(1 for _ in self.client.scan_iter(match=f"{store_prefix}done:*", count=5000))
            left = sum(1 for _ in self.client.scan_iter(match=f"{store_prefix}task:*", count=5000))
            if done != self.n or left:
                raise RuntimeError(f"{variant.name}: {done} tasks completed a checkpoint, {left} left over")
            self.saved.append(done)
        self.ctx.forget_keys(f"{store_prefix}*")
        self.ctx.forget_keys(f"{keyprefix}*")
        rate = self.n / (t1 - t0)
        self.ctx.log(f"   {variant.name:16s} {rate:7.1f} tasks/s")
        return rate

    def _per_task(self, before: CpuSnapshot, after: CpuSnapshot) -> CpuPerTask:
        def per_task(first: float | None, last: float | None, scale: float = 1e6) -> float | None:
            return None if first is None or last is None else (last - first) / self.n * scale

        return CpuPerTask(
            main=(after.main - before.main) / self.n * 1e6,
            pool=(after.pool - before.pool) / self.n * 1e6,
            redis=per_task(before.redis, after.redis),
            main_waiting=per_task(before.main_waiting, after.main_waiting),
            wakeups=per_task(before.wakeups, after.wakeups, scale=1),
        )

    def _first_taken(self, worker: WorkerProcess, qkey: str) -> float:
        deadline = time.monotonic() + 60
        while True:
            if int(self.client.llen(qkey)) < self.n:
                return time.perf_counter()
            if worker.exited():
                raise RuntimeError(f"worker exited before it consumed its queue:\n{worker.output()}")
            if time.monotonic() > deadline:
                raise RunStalled(f"worker never consumed its queue:\n{worker.stacks()}")
            time.sleep(0.002)

    def _drained(self, worker: WorkerProcess, qkey: str, ukey: str) -> float:
        near_end = max(50, self.n // 30)
        last_left, last_moved = -1, time.monotonic()
        while True:
            pipe = self.client.pipeline(transaction=False)
            pipe.llen(qkey)
            pipe.hlen(ukey)
            waiting, unacked = (int(v) for v in pipe.execute())
            if waiting == 0 and unacked == 0:
                return time.perf_counter()
            if worker.exited():
                raise RuntimeError(
                    f"worker exited with {waiting} queued, {unacked} unacked:\n{worker.output()}"
                )
            now = time.monotonic()
            if waiting + unacked != last_left:
                last_left, last_moved = waiting + unacked, now
            elif now - last_moved > STALL_AFTER:
                raise RunStalled(
                    f"run stalled: {waiting} queued, {unacked} unacked, unchanged for "
                    f"{STALL_AFTER:.0f} s; the worker's processes and log:\n{worker.stacks()}"
                )
            time.sleep(0.002 if waiting + unacked <= near_end else 0.05)


def throughput(ctx: Context) -> list[Figure]:
    # 10,000 tasks (~10 s) per run: with 3,000 the runs of one variant spread
    # over +-20 % (the machine drifts between faster and slower spells of a few
    # seconds); longer runs average those spells out.
    # 15 rounds: each of the five variants runs at each place in a round
    # three times. With 7, single runs spread +-10 % and one full run's ratio
    # landed anywhere between 0.96x and 1.05x for a variant whose CPU per
    # task is the plain task's +0.6 %.
    n = 200 if ctx.quick else 10_000
    variants = (PLAIN, NOOP, SAVE, FLOOR, PLAIN_AGAIN)
    repeats = 1 if ctx.quick else 3 * len(variants)
    runner = Runner(ctx, n)
    try:
        samples = alternate({v.name: (lambda v=v: runner.once(v)) for v in variants}, repeats)
    finally:
        runner.client.close()
        ctx.forget_keys(f"{runner.keyprefix}*")
    plain = samples[PLAIN.name]

    def cpu_of(variant: Variant) -> str:
        runs = runner.cpu.get(variant.name, [])
        if not runs:
            return "?"
        redis = [r.redis for r in runs if r.redis is not None]
        parts = [f"main {median([r.main for r in runs]):.0f}", f"pool {median([r.pool for r in runs]):.0f}"]
        if redis:
            parts.append(f"redis {median(redis):.0f}")
        return " / ".join(parts)

    def median_of(variant: Variant, reading: str, digits: int) -> str:
        """The median of one optional ``CpuPerTask`` reading over the variant's runs ("?" if none)."""
        values = [v for r in runner.cpu.get(variant.name, []) if (v := getattr(r, reading)) is not None]
        return f"{median(values):.{digits}f}" if values else "?"

    def waiting_of(variant: Variant) -> str:
        return median_of(variant, "main_waiting", 0)

    def wakeups_of(variant: Variant) -> str:
        return median_of(variant, "wakeups", 2)

    def per_round(variant: Variant) -> float:
        return median([ours / base for ours, base in zip(samples[variant.name], plain, strict=True)])

    stalled = f"; runs that stalled and ran again: {', '.join(runner.stalls)}" if runner.stalls else ""

    def info_for(variant: Variant) -> str:
        return (
            f"{n} tasks per run, {repeats} runs per variant{stalled}; median of the per-round "
            f"ratios (each round runs all {len(variants)} back to back): {per_round(variant):.3f}x; "
            f"the plain task against itself in the same rounds (this run's noise): "
            f"{median(samples[PLAIN_AGAIN.name]) / median(plain):.3f}x "
            f"(per round {per_round(PLAIN_AGAIN):.3f}x); CPU per task in us "
            f"(worker main process / pool processes / redis-server, medians): "
            f"{cpu_of(variant)} vs plain {cpu_of(PLAIN)}; main process runnable but without a CPU: "
            f"{waiting_of(variant)} vs plain {waiting_of(PLAIN)} us per task; cross-CPU wake-up "
            f"interrupts per task (machine-wide): {wakeups_of(variant)} vs plain {wakeups_of(PLAIN)}"
        )

    return [
        Figure(
            key="4",
            name="throughput, CheckpointTask not touching its checkpointer vs plain task",
            unit="tasks/s",
            ours=median(samples[NOOP.name]),
            baseline=median(plain),
            check="ratio>=",
            limit=0.97,
            ours_samples=samples[NOOP.name],
            baseline_samples=plain,
            higher_is_better=True,
            info=info_for(NOOP),
        ),
        Figure(
            key="5",
            name="throughput, task that loads + saves once + completes vs plain task",
            unit="tasks/s",
            ours=median(samples[SAVE.name]),
            baseline=median(plain),
            check="ratio>=",
            limit=0.9,
            ours_samples=samples[SAVE.name],
            baseline_samples=plain,
            higher_is_better=True,
            info=(
                f"{info_for(SAVE)}. Its floor in the same rounds, the plain task doing a redis-py SET "
                f"of its state and a DEL by hand (acks_late): "
                f"{median(samples[FLOOR.name]) / median(plain):.3f}x "
                f"(per round {per_round(FLOOR):.3f}x); CPU per task in us {cpu_of(FLOOR)}; "
                f"main process without a CPU {waiting_of(FLOOR)} us per task, "
                f"wake-up interrupts {wakeups_of(FLOOR)} per task"
            ),
        ),
    ]


def run(ctx: Context) -> list[Figure]:
    ctx.log("4, 5: worker throughput (real prefork workers, Redis broker)")
    return throughput(ctx)
