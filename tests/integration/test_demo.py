"""The README demo runs end to end and shows what it promises.

``scripts/demo`` sets up ``.venv`` and then runs ``python -m example_app.demo``.
When the tests run from that same virtualenv (as scripts/test does), the
SQLite test goes through the script itself, which then installs nothing;
otherwise it runs the driver with this interpreter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, RedisServer, require, wait_for

pytestmark = pytest.mark.integration

DRIVER = [sys.executable, "-m", "example_app.demo"]


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEMO_DATA_DIR")}
    env.update(extra)
    return env


def run_demo(command: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def worker_pids(out: str) -> list[int]:
    pids: list[int] = []
    for main, pool in re.findall(r"is up: main process (\d+), pool processes ([\d, ]+)", out):
        pids += [int(main), *(int(p) for p in pool.split(","))]
    return pids


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def assert_story(out: str, items: int) -> None:
    """The kill, the checkpoint left behind, the resume from it, the result."""
    assert re.search(r"Kill the worker: SIGKILL to its main process \(pid \d+\)", out), out
    saved = json.loads(re.search(r"state\s+(\{.*\})", out).group(1))  # type: ignore[union-attr]
    assert 0 < saved["next"] < items, saved
    resumed = re.search(rf"resuming at item (\d+) of {items} \(resume #1\)", out)
    assert resumed is not None, out
    assert int(resumed.group(1)) == saved["next"], (resumed.group(0), saved)
    assert "resume_count 1)" in out
    result = json.loads(re.search(r"^\[[^]]*\]\s+(\{\"items\".*\})$", out, re.M).group(1))  # type: ignore[union-attr]
    assert result["items"] == items and result["resumes"] == 1, result
    assert "the checksum matches an import that was never interrupted" in out
    assert "no checkpoint is left" in out
    assert "worker stopped, exit status 0" in out
    pids = worker_pids(out)
    assert len(pids) == 6, pids  # two starts: a main process and two pool processes each
    assert all(gone(pid) for pid in pids), [pid for pid in pids if not gone(pid)]


def test_demo_sqlite_mode(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo-data"
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        command = ["bash", str(ROOT / "scripts" / "demo")]
    else:
        command = list(DRIVER)
    out = run_demo([*command, "--data-dir", str(data_dir)], demo_env())
    assert "broker       filesystem://" in out
    assert f"checkpoints  sqlite:///{data_dir}/checkpoints.db" in out
    assert_story(out, 200)


def test_demo_redis_mode(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        out = run_demo(
            [*DRIVER, "--items", "120", "--data-dir", str(tmp_path / "demo-data")],
            demo_env(REDIS_URL=f"{server.url}/4"),
        )
    finally:
        server.stop()
    assert f"broker       {server.url}/4" in out
    assert f"checkpoints  {server.url}/6" in out
    assert_story(out, 120)


def test_demo_private_redis(tmp_path: Path) -> None:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    out = run_demo(
        [*DRIVER, "--redis", "--items", "120", "--data-dir", str(tmp_path / "demo-data")], demo_env()
    )
    url = re.search(r"broker       (redis://127\.0\.0\.1:(\d+))/0", out)
    assert url is not None, out
    assert_story(out, 120)
    port = int(url.group(2))
    assert not any(f"127.0.0.1:{port}" in cmdline for cmdline in _cmdlines()), (
        "the demo's redis-server is left"
    )


def test_ctrl_c_stops_the_worker(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*DRIVER, "--data-dir", str(tmp_path / "demo-data")],
        cwd=ROOT,
        env=demo_env(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    out = ""
    try:
        for line in proc.stdout:
            out += line
            if "checkpoint saved: " in line:
                break
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out += proc.stdout.read()
        assert proc.wait(30) == 130, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "interrupted" in out
    pids = worker_pids(out)
    assert pids, out
    wait_for(lambda: all(gone(pid) for pid in pids), 10, "the worker's processes to exit")


def _cmdlines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines
