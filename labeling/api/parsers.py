"""The API's JSON parser: refuses what would crash or corrupt later, before it gets that far
(labeling/jsonsafety.py): nesting deeper than MAX_JSON_DEPTH (checked before parsing), NaN
and Infinity, NUL characters and lone surrogates. Each refusal is a 400 whose message says
what and where (a JSON path such as config.reward.lr).
"""

from __future__ import annotations

import codecs

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from ..jsonsafety import MAX_JSON_DEPTH, loads

JSON_CHARSETS = frozenset({"utf-8", "ascii"})  # JSON is UTF-8 (RFC 8259); ASCII is a part of it


class SafeJSONParser(JSONParser):
    """JSON bodies are read as UTF-8: a body that names another charset is refused before it
    is decoded (feedback_site/charset.py refuses non-text codecs for every request; this is
    the same rule, stricter, where the body is JSON)."""

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            known = codecs.lookup(encoding).name
        except (LookupError, ValueError):
            known = None
        if known not in JSON_CHARSETS:
            raise ParseError(f"body: JSON must be UTF-8, not {encoding[:40]!r}")
        data = stream.read() if stream is not None else b""
        try:
            return loads(data, MAX_JSON_DEPTH)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"body: JSON parse error - {exc}") from None
