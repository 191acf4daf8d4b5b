"""The benchmark suite (``python -m bench``) runs end to end.

Smoke runs only (``--quick``): they prove every benchmark still works against
the current code -- real redis-server, real workers, real scan -- and that
the table comes out. No timing is asserted; the figures of a quick run mean
nothing, and CI machines are too noisy for targets anyway.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import redis

from tests.harness import ROOT, RedisServer, require

pytestmark = pytest.mark.integration


def run_bench(*args: str, timeout: float = 240) -> str:
    require(
        shutil.which("redis-server") is not None,
        "redis-server is not installed (apt-get install redis-server)",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    # A stalled worker run puts its processes' stacks in stderr: keep them.
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-40000:]}"
    if "run again after a stall" in proc.stderr:
        # The bench ran the stalled run again and went on (a second stall
        # fails above); say so where CI's summary shows it, stacks included.
        warnings.warn(f"a benchmark worker run stalled:\n{proc.stderr[-40000:]}", stacklevel=2)
    return proc.stdout


def markdown_rows(out: str) -> dict[str, list[str]]:
    """Figure key -> the cells of its markdown row."""
    found = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| figure") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            found[cells[0].split(".", 1)[0]] = cells
    return found


def test_in_process_benchmarks_print_every_figure() -> None:
    out = run_bench("--only", "micro,redis,sqlite,long,soak", "--markdown")
    assert "| figure | ours | baseline | ratio | target | result |" in out
    rows = markdown_rows(out)
    assert sorted(rows) == ["1", "2a", "2b", "3a", "3b", "6", "8a", "8b"]
    for cells in rows.values():
        assert len(cells) == 6
        assert cells[3].endswith("x")  # every one of these figures is a ratio
        assert cells[5] in ("PASS", "FAIL")


def test_worker_and_scan_benchmarks_run(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    out = run_bench("--only", "throughput,scan", "--output", str(report))
    for key in ("4.", "5.", "7a.", "7b.", "7c.", "7d."):
        assert any(line.startswith(key) for line in out.splitlines()), out
    text = report.read_text()
    assert "| figure | ours | baseline | ratio | target | result |" in text
    assert sorted(markdown_rows(text)) == ["4", "5", "7a", "7b", "7c", "7d"]
    assert "redis-server" in text  # the versions line
    cpu = re.findall(r"main (\d+) / pool (\d+) / redis (\d+) vs plain main (\d+)", text)
    assert len(cpu) == 2 and all(int(v) > 0 for row in cpu for v in row), "CPU per task of each process role"
    assert len(re.findall(r"runnable but without a CPU: \d+ vs plain \d+ us per task", text)) == 2
    wakeups = re.findall(
        r"wake-up interrupts per task \(machine-wide\): (\d+\.\d+) vs plain (\d+\.\d+)", text
    )
    assert len(wakeups) == 2 and all(float(v) > 0 for row in wakeups for v in row), "cross-CPU wake-ups"
    floor = re.search(r"SET of its state and a DEL by hand \(acks_late\): (\d+\.\d+)x", text)
    assert floor is not None and float(floor.group(1)) > 0, "figure 5 names its floor, from the same rounds"


def run_module(*argv: str, timeout: float) -> str:
    """``python -m ARGV...`` from the project root: its stdout, once it exited with 0."""
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_variant_comparison_runs_real_workers() -> None:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    out = run_module(
        "bench.ab",
        "--tasks",
        "100",
        "--rounds",
        "1",
        "plain",
        "plain-late",
        "plain-in-ckpt-nostore",
        timeout=240,
    )
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["plain", "plain-late", "plain-in-ckpt-nostore"]
    assert all("tasks/s" in line and "CPU us/task main" in line for line in lines)


def test_the_wakeup_cost_measure_runs_on_one_and_on_two_cpus() -> None:
    out = run_module("bench.vcpu", "--round-trips", "500", "--rounds", "1", timeout=60)
    found = re.findall(
        r"^(.+?) +per round trip: wall +(\d+\.\d) us, CPU +(\d+\.\d) us \+ +(\d+\.\d) us$", out, re.M
    )
    assert [name for name, *_ in found] == ["one vCPU", "two vCPUs", "left to the scheduler"], out
    assert all(float(wall) > 0 for _, wall, _, _ in found)


def test_the_server_cost_comparison_runs_the_real_tasks() -> None:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    out = run_module("bench.servercost", "--tasks", "50", "--rounds", "1", timeout=120)
    found = re.findall(r"^(.+?), (back to back|spaced) +redis-server +(\d+\.\d) us/task", out, re.M)
    assert sorted((name, how) for name, how, _ in found) == sorted(
        (name, how)
        for name in ("figure 5's task", "floor (SET + DEL)", "two PINGs")
        for how in ("back to back", "spaced")
    ), out
    assert all(float(us) > 0 for _, _, us in found)


def test_a_given_redis_is_used_and_left_as_it_was(private_redis: RedisServer) -> None:
    url = f"{private_redis.url}/5"
    client = redis.Redis.from_url(url)
    client.flushdb()  # this session's own server
    client.set("someone-else", "keeps this")
    try:
        run_bench("--redis-url", url, "--only", "micro,redis,long")
        assert client.keys("*") == [b"someone-else"]
    finally:
        client.flushdb()
        client.close()


def test_unknown_group_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown group" in proc.stderr
