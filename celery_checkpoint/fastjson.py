"""JSON encoding at orjson's speed, only where it gives kombu's result.

Python's own JSON encoder spends ~2.7 ns per character escaping strings: a
64 KB state costs ~180 us to encode, more than the Redis write it precedes.
orjson writes the same JSON in a few microseconds, but not always the same
*values*: it writes ``NaN`` and infinities as ``null`` and a ``uuid.UUID`` as
a plain string, where kombu's encoder (what ``checkpoint.load()`` decodes
with) keeps them. So this module returns orjson's bytes only when nothing in
them can stand for such a value, and ``None`` otherwise; the caller then
encodes with kombu as before. Anything orjson would write differently from
kombu (datetimes, subclasses of str/int/dict/list, dataclasses, bytes,
Decimals, non-string keys, integers over 64 bits) is passed to a ``default``
that refuses it, which also sends the whole value to kombu.

Telling "nothing can stand for such a value" costs either a walk over the
value (~0.1 us a node: cheap for a few large nodes, a cursor and a 64 KB
blob, say) or a scan of the output (~0.8 ns a byte: cheap for many small
nodes). :func:`dumps` walks up to ``WALK_BUDGET`` nodes and scans only when
the value has more nodes than that.

The one value orjson accepts that kombu refuses is a plain :class:`enum.Enum`
member, which is saved as its value (as json already does for ``IntEnum``
and ``StrEnum``).
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

import orjson

_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
)

#: How orjson writes a UUID; a string that merely looks like one is sent to kombu too.
_UUID = re.compile(rb'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')


def _refuse(value: Any) -> Any:
    raise TypeError(f"left to kombu: {type(value).__name__}")


#: Nodes :func:`dumps` inspects before it lets a scan of the output decide.
WALK_BUDGET = 32

_CLEAN_LEAVES = frozenset((str, int, bool, type(None)))


def _walk(value: Any) -> bool | None:
    """True when ``value`` holds a NaN, an infinity or a UUID; None when too big to tell.

    Clean leaves are skipped where their container is read, never stacked:
    a state's usual shape (a dict of strings and numbers) costs one pass.
    """
    clean = _CLEAN_LEAVES
    if type(value) in clean:
        return False
    stack = [value]
    budget = WALK_BUDGET
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            items: Any = node.values()
        elif kind is list or kind is tuple:
            items = node
        elif kind is float:
            if not math.isfinite(node):
                return True
            continue
        elif isinstance(node, uuid.UUID):
            return True
        else:
            return None  # something else orjson might write by itself (an Enum, say): scan
        budget -= len(items)
        if budget < 0:
            return None
        for item in items:
            if type(item) not in clean:
                stack.append(item)
    return False


def _ambiguous(data: bytes) -> bool:
    """True when the output may hold a NaN, an infinity (both ``null``) or a UUID."""
    return b"null" in data or (b"-" in data and _UUID.search(data) is not None)


def dumps(value: Any) -> bytes | None:
    """``value`` as JSON bytes that kombu's ``loads`` turns back into ``value``, or ``None``."""
    try:
        data: bytes = orjson.dumps(value, default=_refuse, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    verdict = _walk(value)
    if verdict is None:
        verdict = _ambiguous(data)
    return None if verdict else data
