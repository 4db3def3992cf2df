"""Checks that keep JSON from outside (API bodies, imported lines, run configs) from crashing
the parser or failing at the database.

- `nesting_depth_exceeds`: nesting deeper than a limit, found by a scan of the bytes before
  any parser recurses (Python's json module raises RecursionError on a body nested 100,000
  deep).
- `first_unstorable`: a NUL character or a lone UTF-16 surrogate in a key or string, which
  PostgreSQL cannot store in text or jsonb.
- `loads`: json.loads with both checks and without NaN / Infinity (written, or a number too
  large for a float such as 1e999); ValueError says why.
"""

from __future__ import annotations

import json
import re

MAX_JSON_DEPTH = 64
_OPENERS = frozenset(b"[{")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def nesting_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether any array / object in `data` (JSON text) nests deeper than `limit`; brackets inside strings don't count."""
    if data.count(b"[") + data.count(b"{") <= limit:  # cannot nest deeper than it has brackets
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def first_unstorable(value, path: str = "") -> str | None:
    """The JSON path of the first key or string holding a NUL or a lone surrogate, else None."""
    if isinstance(value, str):
        return (path or "body") if _UNSTORABLE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _UNSTORABLE.search(key):
                return (path or "body") + " (a key)"
            found = first_unstorable(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = first_unstorable(item, f"{path}[{index}]" if path else f"[{index}]")
            if found:
                return found
    return None




def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (1e999, -1e400) would become an
    infinity, which no database stores: refused like NaN."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def loads(data: bytes | str, max_depth: int = MAX_JSON_DEPTH):
    """Parse JSON text; ValueError (with the reason) on deep nesting, NaN / Infinity, NUL or lone surrogates."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if nesting_depth_exceeds(raw, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    where = first_unstorable(value)
    if where:
        raise ValueError(f"{where}: contains a NUL character or a lone surrogate, which cannot be stored")
    return value
