"""Request bodies in a text encoding, or not at all.

Django decodes a form body, and the API's JSON parser a JSON body, with whatever charset the
Content-Type names, and Python accepts codecs that are not text encodings there: `zlib`
inflated a 972 KB body into 1 GB in a worker (a decompression bomb), and `bz2`, `rot13`,
`base64`, `hex`, `unicode_escape` or `utf-16` on a form made Django raise inside its own
error views (500s, #19). This middleware, before anything reads the body, answers 400 to a
charset other than UTF-8: what browsers send, what JSON must be (RFC 8259) and the only one
Django reads forms in. US-ASCII, a part of UTF-8, is accepted on JSON bodies.
"""

from __future__ import annotations

import codecs

from django.http import HttpResponse, JsonResponse

def accepted_charset(name: str, content_type: str) -> bool:
    """"utf-8" as Django spells it for forms; on JSON any name of UTF-8 or ASCII (the JSON parser
    reads the bytes as UTF-8 itself)."""
    if name.strip().lower() == "utf-8":
        return True
    if content_type != "application/json":
        return False
    try:
        return codecs.lookup(name).name in ("utf-8", "ascii")
    except (LookupError, ValueError):
        return False


class RequestCharsetMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        charset = request.content_params.get("charset") if hasattr(request, "content_params") else None
        if charset is not None and not accepted_charset(charset, request.content_type):
            reason = f"the Content-Type charset {charset[:40]!r} is not accepted: send UTF-8"
            if request.path.startswith("/api/"):
                return JsonResponse({"code": "unsupported_charset", "detail": reason, "field": "Content-Type"}, status=400)
            return HttpResponse(f"Bad request: {reason}.\n", status=400, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
