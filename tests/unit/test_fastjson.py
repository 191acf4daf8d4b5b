"""The fast JSON path must give back exactly what kombu's json would."""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import uuid
from collections import OrderedDict
from typing import Any

import pytest
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import loads as kombu_loads

from celery_checkpoint import fastjson
from celery_checkpoint.record import accepted_content_types, decode, encode

ACCEPT = accepted_content_types("json")


class Label(str):
    pass


class Color(enum.IntEnum):
    RED = 1


def roundtrip(value: Any) -> Any:
    return decode(encode(value, "json", what="state", task_id="t", limit=1 << 24), ACCEPT, task_id="t")


def through_kombu(value: Any) -> Any:
    content_type, encoding, payload = kombu_dumps(value, serializer="json")
    return kombu_loads(payload, content_type, encoding, accept=ACCEPT)


def same(a: Any, b: Any) -> bool:
    """Equality that counts NaN equal to NaN and tells types apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


BIG = fastjson.WALK_BUDGET * 2  # past the walk: the output scan decides

VALUES = {
    "plain": {"cursor": 3, "rows": [1, 2.5, "x", True], "nested": {"a": []}},
    "unicode": {"s": 'é✓ \u2028 "quoted" \\ back'},
    "none": {"cursor": None},
    "nan": {"loss": float("nan")},
    "inf": {"loss": float("-inf")},
    "uuid": {"id": uuid.UUID(int=7)},
    "uuid-looking string": {"id": str(uuid.UUID(int=7))},
    "datetime": {"at": datetime.datetime(2026, 11, 25, 18, 0, tzinfo=datetime.timezone.utc)},
    "date": {"on": datetime.date(2026, 11, 25)},
    "decimal": {"price": decimal.Decimal("1.10")},
    "bytes": {"raw": b"abc"},
    "int keys": {1: "one"},
    "huge int": {"n": 2**80},
    "tuple": {"pair": (1, 2)},
    "str subclass": {"label": Label("x")},
    "ordered dict": OrderedDict(a=1),
    "int enum": {"color": Color.RED},
    "big list with nan": {"xs": [1.0] * BIG + [float("nan")]},
    "big list with uuid": {"xs": [1] * BIG + [uuid.UUID(int=9)]},
    "big list with none": {"xs": [1] * BIG + [None]},
    "big clean list": {"xs": list(range(BIG))},
    "top-level list": [1, "two", 3.0],
    "empty": {},
}


@pytest.mark.parametrize("name", list(VALUES))
def test_loads_back_what_kombu_json_would(name: str) -> None:
    value = VALUES[name]
    assert same(roundtrip(value), through_kombu(value)), name


@pytest.mark.parametrize(
    "name",
    ["plain", "unicode", "none", "uuid-looking string", "tuple", "int enum", "big clean list", "empty"],
)
def test_plain_values_take_the_fast_path(name: str) -> None:
    assert fastjson.dumps(VALUES[name]) is not None


@pytest.mark.parametrize(
    "name",
    [
        "nan",
        "inf",
        "uuid",
        "datetime",
        "decimal",
        "bytes",
        "int keys",
        "huge int",
        "str subclass",
        "ordered dict",
        "big list with nan",
        "big list with uuid",
        "big list with none",
    ],
)
def test_values_orjson_would_change_go_to_kombu(name: str) -> None:
    assert fastjson.dumps(VALUES[name]) is None


def test_a_state_json_cannot_hold_still_fails_clearly() -> None:
    from celery_checkpoint.errors import CheckpointSerializationError

    with pytest.raises(CheckpointSerializationError, match="cannot be serialized with 'json'"):
        encode({"s": {1, 2}}, "json", what="state", task_id="t", limit=1 << 20)
