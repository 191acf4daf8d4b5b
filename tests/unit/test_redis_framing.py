"""The commands every checkpointed task sends are framed by hand; they must be the generic framing's bytes.

``RedisStore.create`` and ``finish_nowait`` frame their script calls
themselves (recurring arguments framed once), to save ~2 us per task. What
they send must be exactly what :func:`~celery_checkpoint.stores.redis_wire.pack`
makes of the documented command, for small and large states alike. The
store's behaviour against a real server is the contract tests' subject.
"""

from __future__ import annotations

from typing import Any

import pytest

from celery_checkpoint.record import EncodedState, NewCheckpoint
from celery_checkpoint.stores import redis_lua
from celery_checkpoint.stores.redis import RedisStore
from celery_checkpoint.stores.redis_wire import Frames, frame, pack


class CapturingWire:
    """Records what the store hands to the wire and answers like a server that applied it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int]] = []

    def exchange_packed(self, packed: bytes, count: int) -> list[Any]:
        self.sent.append((packed, count))
        return [1] * count

    def send_packed(self, packed: bytes, count: int, on_failure: Any) -> None:
        self.sent.append((packed, count))


@pytest.fixture
def store() -> RedisStore:
    # No connection is made until a command is sent, and the wire is replaced.
    s = RedisStore("redis://127.0.0.1:1/0", prefix="{app}:cp:", done_ttl=3600)
    s._wire = CapturingWire()  # type: ignore[assignment]
    return s


@pytest.mark.parametrize("size", [11, 4095, 4096, 64 * 1024])
@pytest.mark.parametrize(("progress", "fence"), [(None, 1), (0.25, 987_654_321_098)])
def test_create_sends_the_documented_script_call(
    store: RedisStore, size: int, progress: float | None, fence: int
) -> None:
    state = EncodedState(b"s" * size, "application/json", "utf-8")
    call = b'{"args": [], "kwargs": {}, "options": {"task_id": "t-1"}}'
    envelope = EncodedState(call, "application/json", "utf-8")
    name, owner = "proj.tasks.import_rows", "w1@host|abc123"
    new = NewCheckpoint(name, owner, 4242, state, envelope, progress, 1764140000.125, fence)
    for _ in range(2):  # the second call frames its recurring arguments from the cache
        assert store.create("t-1", new) == fence
    keys = ["{app}:cp:task:t-1", "{app}:cp:owned:w1@host|abc123", "{app}:cp:owners"]
    keys += [f"{{app}}:cp:save:t-1:{fence}", "{app}:cp:done:t-1", "{app}:cp:call:t-1"]
    args = [
        "t-1",
        "w1@host|abc123",
        4242,
        "proj.tasks.import_rows",
        state.payload,
        "application/json",
        "utf-8",
        envelope.payload,
        "application/json",
        "utf-8",
        "" if progress is None else repr(progress),
        repr(1764140000.125),
        fence,
    ]
    expected = pack((("EVALSHA", store._create.sha, len(keys), *keys, *args),))
    wire = store._wire
    assert isinstance(wire, CapturingWire)
    assert wire.sent == [(expected, 1), (expected, 1)]


@pytest.mark.parametrize("fence", [1, 7, 12345])
def test_finish_sends_the_documented_script_call(store: RedisStore, fence: int) -> None:
    for _ in range(2):
        store.finish_nowait("t-2", fence, "w1@host|abc123", lambda exc: None)
    keys = [
        "{app}:cp:task:t-2",
        "{app}:cp:owned:w1@host|abc123",
        "{app}:cp:done:t-2",
        "{app}:cp:released",
        f"{{app}}:cp:save:t-2:{fence}",
        "{app}:cp:call:t-2",
    ]
    expected = pack((("EVAL", redis_lua.FINISH, len(keys), *keys, "t-2", fence, 3_600_000),))
    wire = store._wire
    assert isinstance(wire, CapturingWire)
    assert wire.sent == [(expected, 1), (expected, 1)]
    # finish() (the waiting form) names the same keys.
    assert store._finish_keys("t-2", fence, "w1@host|abc123") == keys


def test_recurring_frames_are_bounded() -> None:
    frames = Frames(limit=8)
    for n in range(100):
        assert frames(f"owner-{n}") == frame(f"owner-{n}")
        assert len(frames._frames) <= 8
    assert frames("é") == b"$2\r\n\xc3\xa9\r\n"  # framed by its UTF-8 length, not its length in characters
