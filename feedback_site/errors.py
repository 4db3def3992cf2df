"""The base of every domain error (labeling, training, inference): a message for people,
the HTTP status it maps to, a machine-readable code and, when one input is to blame, its
field. labeling/api/errors.py maps them to HTTP once; pages show the message."""


class DomainError(Exception):
    status_code = 400
    code = "error"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict:
        body = {"code": self.code, "detail": self.message}
        if self.field:
            body["field"] = self.field
        return body
