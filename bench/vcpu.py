"""What one process waking another costs on this machine, on one vCPU and across two.

``python -m bench.vcpu [--round-trips N] [--rounds R]`` runs two processes
that pass one byte back and forth over a pair of pipes, and prints, per round
trip, the wall time and the CPU time each process was charged (user + system,
``getrusage``): both pinned to one CPU, pinned to two (the first two this
process may use), and left to the scheduler.

Why it is here: figures 4 and 5 are four busy processes (the worker's main
process, two pool processes, redis-server) waking each other several times per
task on two vCPUs. Where waking a process on the other vCPU costs far more
CPU than waking one on the same vCPU (an idle vCPU halts, and on a virtual
machine the wake-up interrupt and the halt are VM exits), the main process's
CPU per task depends on where the scheduler puts the processes, run by run,
whatever code they run. This script measures that price; ``bench.ab`` prints
the cross-CPU wake-up interrupts per task beside each variant's CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from .report import median


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ping_pong(parent_cpu: int | None, child_cpu: int | None, round_trips: int) -> tuple[float, float, float]:
    """Microseconds per round trip: wall time, the parent's CPU, the child's CPU."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: pinned, it says so, answers every byte, then reports its own CPU time
        status = 1
        try:
            os.close(to_child_w)
            os.close(to_parent_r)
            if child_cpu is not None:
                os.sched_setaffinity(0, {child_cpu})
            os.write(to_parent_w, b"r")
            start = _cpu_seconds()
            for _ in range(round_trips):
                os.read(to_child_r, 1)
                os.write(to_parent_w, b"x")
            os.write(to_parent_w, f"{_cpu_seconds() - start:.9f}".encode().ljust(32))
            status = 0
        finally:
            os._exit(status)
    # Only the child holds these ends now: if it dies, the reads below see end of file.
    os.close(to_child_r)
    os.close(to_parent_w)
    everywhere = os.sched_getaffinity(0)
    try:
        if parent_cpu is not None:
            os.sched_setaffinity(0, {parent_cpu})
        if os.read(to_parent_r, 1) != b"r":
            raise RuntimeError("the ping-pong child died before it was ready")
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        for _ in range(round_trips):
            os.write(to_child_w, b"x")
            os.read(to_parent_r, 1)
        wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
        child = float(os.read(to_parent_r, 32).decode())
    finally:
        os.sched_setaffinity(0, everywhere)
        os.close(to_child_w)
        os.close(to_parent_r)
        os.waitpid(pid, 0)
    scale = 1e6 / round_trips
    return wall * scale, cpu * scale, child * scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vcpu", description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error("needs two CPUs")
    first, second = cpus[:2]
    placements: dict[str, tuple[int | None, int | None]] = {
        "one vCPU": (first, first),
        "two vCPUs": (first, second),
        "left to the scheduler": (None, None),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in placements}
    for _ in range(args.rounds):
        for name, (parent, child) in placements.items():
            results[name].append(ping_pong(parent, child, args.round_trips))
    for name, runs in results.items():
        wall, parent, child = (median([run[i] for run in runs]) for i in range(3))
        print(f"{name:22s} per round trip: wall {wall:6.1f} us, CPU {parent:5.1f} us + {child:5.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
