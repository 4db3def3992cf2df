"""Domain errors (feedback_site.errors.DomainError: labeling's, training's, inference's) mapped to HTTP responses, in one place."""

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from feedback_site.db_errors import is_database_unavailable, unavailable_api_response

from feedback_site.errors import DomainError


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        return Response(exc.as_dict(), status=exc.status_code)
    if is_database_unavailable(exc):  # 503 + Retry-After, the broken connection dropped
        return unavailable_api_response(exc, context)
    return drf_exception_handler(exc, context)
