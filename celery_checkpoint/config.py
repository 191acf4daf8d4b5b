"""Settings, read from ``app.conf`` under the ``checkpoint_`` prefix.

Each value may be overridden per task by a task option of the same name
(``@app.task(base=CheckpointTask, checkpoint_throttle=1.0)``), except the
worker's own: ``lease_ttl``, ``sweep_interval`` and ``resume_on_start`` (and
``requeue_after``, but for the first re-send of a lost retry) are read from
``app.conf`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from kombu.exceptions import SerializerNotInstalled
from kombu.serialization import dumps

#: Defaults for every ``checkpoint_*`` setting, documented in the README.
DEFAULTS: dict[str, Any] = {
    "checkpoint_store_url": None,
    "checkpoint_throttle": 5.0,
    "checkpoint_serializer": "json",
    "checkpoint_max_state_bytes": 8 * 1024 * 1024,
    "checkpoint_key_prefix": "checkpoint:",
    "checkpoint_lease_ttl": 30.0,
    "checkpoint_sweep_interval": 10.0,
    "checkpoint_max_resumes": 5,
    "checkpoint_done_ttl": 24 * 3600.0,
    "checkpoint_on_store_error": "retry",
    "checkpoint_store_retry_delay": 5.0,
    "checkpoint_events": None,
    "checkpoint_resume_on_start": True,
    "checkpoint_requeue_after": 300.0,
}


#: Settings that are numbers (a string such as "30" from an env var is refused, not misread).
_NUMBERS = frozenset(
    {
        "throttle",
        "max_state_bytes",
        "lease_ttl",
        "sweep_interval",
        "max_resumes",
        "done_ttl",
        "store_retry_delay",
        "requeue_after",
    }
)


@dataclass(frozen=True)
class CheckpointConfig:
    """The effective settings for one task (app settings + task options)."""

    store_url: str | None
    throttle: float
    serializer: str
    max_state_bytes: int
    key_prefix: str
    lease_ttl: float
    sweep_interval: float
    max_resumes: int
    done_ttl: float
    on_store_error: str
    store_retry_delay: float
    events: bool | None
    resume_on_start: bool
    requeue_after: float

    @classmethod
    def from_sources(cls, conf: Any, task: Any = None) -> CheckpointConfig:
        """Build from ``app.conf``, letting non-``None`` task attributes win."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = f"checkpoint_{field.name}"
            value = getattr(task, key, None) if task is not None else None
            if value is None:
                value = conf.get(key, DEFAULTS[key])
            values[field.name] = DEFAULTS[key] if value is None else value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in _NUMBERS and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"checkpoint_{field.name} must be a number, not {value!r}")
            if field.name in _NUMBERS and math.isnan(value):
                # NaN compares false with everything: a throttle of NaN persisted every call.
                raise ValueError(f"checkpoint_{field.name} must be a number, not NaN")
        if not _installed(self.serializer):
            raise ValueError(
                f"checkpoint_serializer {self.serializer!r} is not installed in kombu in this process: "
                "register it with kombu.serialization.register() where the app is defined, "
                "or install its library"
            )
        if self.on_store_error not in ("retry", "raise", "warn"):
            raise ValueError(
                f"checkpoint_on_store_error must be 'retry', 'raise' or 'warn', not {self.on_store_error!r}"
            )
        if self.max_state_bytes < 1:
            raise ValueError("checkpoint_max_state_bytes must be >= 1: every save would be too large")
        if self.lease_ttl <= 0:
            raise ValueError("checkpoint_lease_ttl must be > 0")
        if self.sweep_interval <= 0:
            raise ValueError("checkpoint_sweep_interval must be > 0")
        if self.done_ttl < 0.001:
            # Redis keeps the marker with PX in whole milliseconds; 0 would fail every delete.
            raise ValueError("checkpoint_done_ttl must be at least 0.001 (seconds)")


def _installed(serializer: Any) -> bool:
    """Whether kombu can encode with ``serializer`` in this process.

    Asked once per task, when its settings are read: found only at the
    first save, a typo (or a library missing on one host) failed each run
    with kombu's own error, and a resume scan that met such a task's
    checkpoint stopped, resuming none of the others. A serializer that
    exists but refuses ``None`` is left to tell its own errors at save().
    """
    try:
        dumps(None, serializer=serializer)
    except SerializerNotInstalled:
        return False
    except Exception:
        return True
    return True
