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


class SafeJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        data = stream.read() if stream is not None else b""
        try:
            return loads(codecs.decode(data, encoding) if encoding.lower().replace("-", "") != "utf8" else data, MAX_JSON_DEPTH)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"body: JSON parse error - {exc}") from None
