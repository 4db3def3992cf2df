"""Domain errors of the labeling app. Each carries the HTTP status it maps to, once,
in labeling/api/errors.py (API) and labeling/views.py (pages)."""

from feedback_site.errors import DomainError


class LabelingError(DomainError):
    pass


class InvalidInput(LabelingError):
    status_code = 400
    code = "invalid"


class InvalidJudgement(InvalidInput):
    pass


class AssignmentNotFound(LabelingError):
    status_code = 404
    code = "not_found"


class NotYourAssignment(LabelingError):
    status_code = 403
    code = "forbidden"


class AnnotatorPaused(LabelingError):
    """The annotator is paused on this project (quality): no new tasks; the message says why."""

    status_code = 403
    code = "paused"


class LeaseExpired(LabelingError):
    status_code = 409
    code = "lease_expired"


class AlreadyClosed(LabelingError):
    status_code = 409
    code = "already_closed"


class IdempotencyConflict(LabelingError):
    status_code = 409
    code = "idempotency_conflict"


class ProjectInactive(LabelingError):
    status_code = 409
    code = "project_inactive"


class ImportFailed(LabelingError):
    """An import was rejected as a whole; `errors` lists (line number, reason)."""

    status_code = 400
    code = "import_failed"

    def __init__(self, errors: list[tuple[int, str]], *, total_errors: int | None = None):
        self.errors = errors
        self.total_errors = total_errors if total_errors is not None else len(errors)
        first_line, first_reason = errors[0]
        more = f" (and {self.total_errors - 1} more)" if self.total_errors > 1 else ""
        super().__init__(f"line {first_line}: {first_reason}{more}; nothing was imported")

    def as_dict(self) -> dict:
        body = super().as_dict()
        body["errors"] = [{"line": line, "reason": reason} for line, reason in self.errors]
        body["error_count"] = self.total_errors
        return body
