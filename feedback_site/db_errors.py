"""The database went away (restart, failover, connection refused, connection killed):
answer 503 with Retry-After instead of 500, and drop the broken connection so that the
next request opens a fresh one. The web process itself never needs a restart.

Every write path is one transaction (labeling/services.py), so a request that fails this
way has written nothing, or, when only the reply to COMMIT was lost, everything; a client
that retries a submission with the same idempotency key gets exactly one judgement.

Three places see such an error, all answered the same way:
- DRF views: labeling.api.errors.exception_handler calls `unavailable_api_response`;
- other views: `DatabaseUnavailableMiddleware.process_exception`;
- code outside the view (another middleware, e.g. saving the session): Django turns the
  exception into a 500 response before it reaches this middleware, so the
  got_request_exception signal marks the request and the middleware swaps that 500 for
  the 503.
"""

from __future__ import annotations

import logging
import sys

from django.conf import settings
from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError, connections
from django.dispatch import receiver
from django.http import HttpResponse, JsonResponse

log = logging.getLogger(__name__)

DETAIL = "The database is unavailable for a moment (restarting or unreachable); nothing was saved. Retry shortly."
CODE = "database_unavailable"
_MARK = "_database_unavailable"


def retry_after_seconds() -> int:
    return int(getattr(settings, "DB_UNAVAILABLE_RETRY_AFTER", 5))


def is_database_unavailable(exc: BaseException | None) -> bool:
    """A lost or refused database connection (also a deadlock, lock or statement timeout:
    PostgreSQL reports those as OperationalError too, and they are as retryable)."""
    return isinstance(exc, (OperationalError, InterfaceError))


def drop_broken_connections() -> None:
    """Close this thread's database connections, so the next request reconnects instead
    of failing again on a dead socket (reconnecting a healthy one costs milliseconds)."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must never raise here
            log.debug("closing connection %s failed", conn.alias, exc_info=True)


def _note(request, exc) -> None:
    log.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
    drop_broken_connections()


def unavailable_api_response(exc, context=None):
    """For labeling.api.errors: the DRF response (JSON, content negotiation kept)."""
    from rest_framework.response import Response

    request = (context or {}).get("request")
    if request is not None:
        _note(request, exc)
    else:
        drop_broken_connections()
    return Response(
        {"code": CODE, "detail": DETAIL}, status=503, headers={"Retry-After": str(retry_after_seconds())}
    )


def unavailable_response(request) -> HttpResponse:
    if request.path.startswith("/api/"):
        response = JsonResponse({"code": CODE, "detail": DETAIL}, status=503)
    else:
        # A plain page: rendering the site's templates could touch the database again.
        response = HttpResponse(
            "<!doctype html><title>Unavailable</title><h1>Back in a moment</h1>"
            f"<p>{DETAIL}</p>",
            status=503,
            content_type="text/html; charset=utf-8",
        )
    response["Retry-After"] = str(retry_after_seconds())
    response["Cache-Control"] = "no-store"
    return response


@receiver(got_request_exception, dispatch_uid="feedback_site.db_errors.mark")
def _mark_request(sender, request=None, **kwargs):
    exc = sys.exc_info()[1]
    if request is not None and is_database_unavailable(exc):
        setattr(request, _MARK, exc)


class DatabaseUnavailableMiddleware:
    """Place it above SessionMiddleware so that it sees errors from the session and auth
    middleware too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        exc = getattr(request, _MARK, None)
        if exc is not None and response.status_code == 500:
            _note(request, exc)
            return unavailable_response(request)
        return response

    def process_exception(self, request, exception):
        if is_database_unavailable(exception):
            _note(request, exception)
            return unavailable_response(request)
        return None
