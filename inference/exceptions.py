"""Domain errors of the inference app (same base and HTTP mapping as labeling's)."""

from feedback_site.errors import DomainError


class InvalidEndpoint(DomainError):
    status_code = 400
    code = "invalid"


class EndpointNotFound(DomainError):
    status_code = 404
    code = "not_found"


class KeyUnavailable(DomainError):
    """A stored API key that the configured ENDPOINT_KEY_SECRET cannot decrypt."""

    status_code = 409
    code = "key_unavailable"
