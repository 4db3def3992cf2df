"""Domain errors (labeling.exceptions) mapped to HTTP responses, in one place."""

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..exceptions import LabelingError


def exception_handler(exc, context):
    if isinstance(exc, LabelingError):
        return Response(exc.as_dict(), status=exc.status_code)
    return drf_exception_handler(exc, context)
