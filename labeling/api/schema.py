"""OpenAPI: every operation documents the error responses it can give.

The API's error bodies are JSON objects: domain errors {"code", "detail", "field"?}
(labeling.exceptions, training.exceptions), DRF's validation errors {"<field>": ["reason"]},
and {"detail": "..."} for parse, authentication, permission, throttling and database
errors. `ErrorOutput` describes all three (an object; the named keys when present, any
field name otherwise). Which status codes an operation documents follows from what it
takes and does (ErrorDocumentingAutoSchema.error_codes).
"""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny


class LineErrorOutput(serializers.Serializer):
    line = serializers.IntegerField(help_text="the line number in the file (0: the file as a whole)")
    reason = serializers.CharField()

    class Meta:
        ref_name = "LineError"


class ErrorOutput(serializers.Serializer):
    code = serializers.CharField(required=False, help_text="machine-readable reason (domain errors)")
    detail = serializers.CharField(required=False, help_text="what went wrong, in words")
    field = serializers.CharField(required=False, help_text="the input field at fault (domain errors)")
    errors = LineErrorOutput(many=True, required=False, help_text="a rejected file: the first 100 bad lines")
    error_count = serializers.IntegerField(required=False, help_text="a rejected file: how many lines were bad")

    class Meta:
        ref_name = "Error"


ERROR_DESCRIPTIONS = {
    "400": "Invalid input: the body names each field and the reason",
    "401": "Not signed in (no or an invalid token / session)",
    "403": "Signed in but not allowed",
    "404": "No such object",
    "409": "Conflicts with the current state (already submitted, lease expired, project closed, run active, ...)",
    "429": "Too many failed sign-ins from this address",
    "503": "The database is unavailable; retry after the Retry-After header's seconds",
}


class ErrorDocumentingAutoSchema(AutoSchema):
    def error_codes(self) -> list[str]:
        codes = ["400", "401", "429", "503"]
        permission_classes = getattr(self.view, "permission_classes", [])
        if not all(cls is AllowAny for cls in permission_classes):
            codes.append("403")
        if "{" in self.path or self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes.append("404")  # a path id, or an id in the body, that names nothing
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes.append("409")
        if self.method == "GET" and "stats" in self.path:
            codes.append("404")  # a project filter that names no project
        return sorted(set(codes))

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code, response in list(responses.items()):  # an error documented in words only: give it the error body
            if str(code)[0] in "45" and "content" not in response:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(response=ErrorOutput, description=response.get("description", "")), code, direction=direction)
        for code in self.error_codes():
            if code not in responses:
                response = self._get_response_for_code(OpenApiResponse(response=ErrorOutput, description=ERROR_DESCRIPTIONS[code]), code, direction=direction)
                responses[code] = response
        return responses
