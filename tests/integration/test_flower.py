"""Flower shows checkpoints: a real worker, a real Flower process, and headless Chromium.

Each test starts its own redis-server, a worker with task events (``-E``)
and a Flower on free loopback ports, and stops all of them by pid.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_checkpoint.flower import CHECKPOINT_FIELDS
from tests.harness import ROOT, Cluster, Worker, cluster, free_port, require, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.flower]

APP = "tests.apps.flowerapp"
CONF = ROOT / "tests" / "apps" / "flowerconfig.py"
ROWS = (
    "Checkpoint progress",
    "Checkpoint saves",
    "Checkpoint saved at",
    "Checkpoint resume count",
    "Checkpoint owner",
)


class Flower:
    """A real ``celery flower`` process on a free loopback port."""

    def __init__(self, env: dict[str, str], logdir: Path, conf: Path | None) -> None:
        self.env = {**env, "FLOWER_UNAUTHENTICATED_API": "true"}
        self.conf = conf
        self.port = free_port()
        self.log = logdir / "flower.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Loopback only, whatever proxy the environment names.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Flower:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP,
            "flower",
            "--address=127.0.0.1",
            f"--port={self.port}",
        ]
        if self.conf is not None:
            cmd.append(f"--conf={self.conf}")
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen(
                cmd, env=self.env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self, timeout: float = 30) -> Flower:
        wait_for(lambda: self.exited() or self.text("/healthcheck") == "OK", timeout, "Flower answers")
        if self.exited():
            raise AssertionError(f"Flower exited:\n{self.output()[-4000:]}")
        return self

    def text(self, path: str) -> str | None:
        """The body of a GET, or ``None`` on a connection error or an HTTP error."""
        try:
            with self._http.open(self.url + path, timeout=5) as response:
                return str(response.read().decode())
        except (OSError, urllib.error.HTTPError):
            return None

    def json(self, path: str) -> Any:
        body = self.text(path)
        return None if body is None else json.loads(body)

    def task(self, task_id: str) -> dict[str, Any] | None:
        info = self.json(f"/api/task/info/{task_id}")
        return info if isinstance(info, dict) else None

    def datatable(self, search: str = "") -> list[dict[str, Any]]:
        """The rows the task list page (/tasks) renders, newest first."""
        query = urllib.parse.urlencode(
            {
                "draw": 1,
                "start": 0,
                "length": 50,
                "search[value]": search,
                "order[0][column]": 0,
                "order[0][dir]": "desc",
                "columns[0][data]": "received",
            }
        )
        page = self.json(f"/tasks/datatable?{query}")
        assert isinstance(page, dict), f"no task list from Flower:\n{self.output()[-4000:]}"
        rows: list[dict[str, Any]] = page["data"]
        return rows

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Stack:
    cluster: Cluster
    worker: Worker
    flower: Flower
    client: Celery

    def crawl(self, pages: int, seconds_per_page: float) -> str:
        return str(self.client.send_task(f"{APP}.crawl", (pages, seconds_per_page)).id)

    def ping(self) -> str:
        return str(self.client.send_task(f"{APP}.ping").id)


def start_stack(tmp_path: Path, *, conf: Path | None) -> Iterator[Stack]:
    """Flower with ``--conf``, or (``conf=None``) enabled by the app module itself."""
    require(
        importlib.util.find_spec("flower") is not None, "Flower is not installed: pip install -e '.[flower]'"
    )
    install = "conf" if conf is not None else "app"
    with cluster(tmp_path, app=APP, flower_install=install) as c:
        env = c.env()
        client = Celery("flower-test-client", broker=env["CC_BROKER_URL"], backend=env["CC_BACKEND_URL"])
        worker = c.worker("w1", "-E")
        flower = Flower(env, tmp_path / "logs", conf).start()
        try:
            worker.wait_ready()
            flower.wait_ready()
            stack = Stack(c, worker, flower, client)
            wait_for(lambda: events_reach_flower(stack), 30, "task events reach Flower", interval=0)
            yield stack
        finally:
            flower.stop()
            client.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Flower configured by ``--conf=tests/apps/flowerconfig.py``."""
    yield from start_stack(tmp_path, conf=CONF)


@pytest.fixture
def app_installed_stack(tmp_path: Path) -> Iterator[Stack]:
    """Flower with no config file: the app module calls install() itself."""
    yield from start_stack(tmp_path, conf=None)


def events_reach_flower(stack: Stack) -> bool:
    """Flower subscribes to events a little after it answers HTTP: prove the path with a ping."""
    task_id = stack.ping()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        info = stack.flower.task(task_id)
        if info is not None and info.get("state") == "SUCCESS":
            return True
        time.sleep(0.1)
    return False


def checkpointed(flower: Flower, task_id: str, saves: int, resumes: int = 0) -> dict[str, Any] | None:
    info = flower.task(task_id)
    if info is None or info.get("state") != "CHECKPOINT":
        return None
    if (info.get("checkpoint_saves") or 0) < saves or info.get("checkpoint_resume_count") != resumes:
        return None
    return info


def wait_checkpointed(stack: Stack, task_id: str, saves: int, resumes: int = 0) -> dict[str, Any]:
    try:
        info = wait_for(lambda: checkpointed(stack.flower, task_id, saves, resumes), 30, f"{saves} saves")
    except AssertionError:
        raise AssertionError(
            f"Flower: {stack.flower.task(task_id)}\n--- flower log:\n{stack.flower.output()[-3000:]}"
            f"\n--- worker log:\n{stack.worker.output()[-3000:]}"
        ) from None
    assert isinstance(info, dict)
    return info


# -- the REST API --------------------------------------------------------------


def test_api_shows_checkpoint_fields_while_the_task_runs(stack: Stack) -> None:
    sent_at = time.time()
    task_id = stack.crawl(400, 0.05)

    info = wait_checkpointed(stack, task_id, saves=2)

    assert info["name"] == "tests.apps.flowerapp.crawl"
    assert 0 < info["checkpoint_progress"] < 1
    assert sent_at - 1 <= info["checkpoint_saved_at"] <= time.time() + 1
    assert info["checkpoint_resume_count"] == 0
    assert info["checkpoint_owner"] == info["worker"]
    assert info["checkpoint_owner"].startswith("w1@")

    tasks = stack.flower.json("/api/tasks")
    assert isinstance(tasks, dict)
    assert set(CHECKPOINT_FIELDS) <= set(tasks[task_id])
    assert tasks[task_id]["checkpoint_saves"] >= 2
    # Tasks that never saved a checkpoint carry the fields too, as null.
    pings = [t for t in tasks.values() if t["name"] == "tests.apps.flowerapp.ping"]
    assert pings and all(t[name] is None for t in pings for name in CHECKPOINT_FIELDS)

    # The task list renders the state with the progress (format_task).
    [row] = [r for r in stack.flower.datatable() if r["uuid"] == task_id]
    assert row["state"].startswith("CHECKPOINT ") and row["state"].endswith("%"), row["state"]
    assert "resumed" not in row["state"]
    # Flower's "Started" filter misses it; searching for the raw state finds it.
    assert task_id not in [r["uuid"] for r in stack.flower.datatable("state:STARTED")]
    assert task_id in [r["uuid"] for r in stack.flower.datatable("state:CHECKPOINT")]
    assert task_id in stack.flower.json("/api/tasks?state=CHECKPOINT")


def kill_and_restart_worker(stack: Stack, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """SIGKILLs the worker mid-run and restarts it; Flower's view of the task before and after."""
    first = wait_checkpointed(stack, task_id, saves=2)
    stack.worker.kill(signal.SIGKILL)
    stack.worker = stack.cluster.worker("w1", "-E").wait_ready()
    again = wait_checkpointed(stack, task_id, saves=first["checkpoint_saves"] + 2, resumes=1)
    return first, again


def test_resumed_task_shows_its_resume_count(app_installed_stack: Stack) -> None:
    stack = app_installed_stack
    task_id = stack.crawl(400, 0.05)

    first, info = kill_and_restart_worker(stack, task_id)

    assert first["checkpoint_resume_count"] == 0
    assert info["checkpoint_resume_count"] == 1
    assert info["checkpoint_progress"] >= first["checkpoint_progress"]
    assert info["checkpoint_owner"] == first["checkpoint_owner"]  # same node name, new start

    # The list shows that it was resumed (format_task, plugged in from the app module).
    [row] = [r for r in stack.flower.datatable() if r["uuid"] == task_id]
    assert row["state"].startswith("CHECKPOINT ") and row["state"].endswith(" · resumed 1x"), row["state"]


# -- the pages, in a real browser ------------------------------------------------


def chromium(tmp_path: Path, name: str, *args: str, timeout: float = 45) -> str:
    """Runs headless Chromium to the end and returns its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    require(binary is not None, "chromium is not installed (apt-get install chromium)")
    assert binary is not None
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium' / name}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{err[-3000:]}"
    return out


def browse(tmp_path: Path, name: str, url: str, *, height: int, wait_ms: int = 0) -> tuple[str, Path]:
    """The DOM of a page after its scripts ran, and a screenshot of it."""
    budget = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    dom = chromium(tmp_path, f"{name}-dom", *budget, "--dump-dom", url)
    shot = tmp_path / f"{name}.png"
    chromium(tmp_path, f"{name}-shot", *budget, f"--screenshot={shot}", f"--window-size=1280,{height}", url)
    assert shot.stat().st_size > 10_000, "blank screenshot"
    return dom, shot


@pytest.mark.browser
def test_task_page_renders_checkpoint_rows(stack: Stack, tmp_path: Path) -> None:
    task_id = stack.crawl(600, 0.05)
    info = wait_checkpointed(stack, task_id, saves=2)

    dom, _ = browse(tmp_path, "flower-task-page", f"{stack.flower.url}/task/{task_id}", height=1600)

    for row in ROWS:
        assert f"<dt>{row}</dt>" in dom, row
    assert info["checkpoint_owner"] in dom
    assert ">CHECKPOINT " in dom  # the status badge, with the progress


@pytest.mark.browser
def test_task_list_marks_a_resumed_task(app_installed_stack: Stack, tmp_path: Path) -> None:
    stack = app_installed_stack
    task_id = stack.crawl(600, 0.05)
    kill_and_restart_worker(stack, task_id)

    # The list is filled by the page's script from /tasks/datatable.
    dom, _ = browse(tmp_path, "flower-tasks-list", f"{stack.flower.url}/tasks", height=800, wait_ms=5000)

    assert task_id in dom
    assert " · resumed 1x</span>" in dom
