"""Write paths of the inference app: register, change and test endpoints; keep the built-in
ones (the app's own policies) in step. Views, API views and the training app call these."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from . import client
from .exceptions import InvalidEndpoint, KeyUnavailable
from .models import ModelEndpoint
from .secrets import encrypt_key

log = logging.getLogger(__name__)

EDITABLE_FIELDS = (
    "name", "base_url", "model", "temperature", "top_p", "max_tokens", "stop", "system_prompt",
    "timeout_seconds", "concurrency", "is_active",
)
# what an admin may change on a built-in endpoint (where and what it serves follows the registry)
BUILTIN_EDITABLE_FIELDS = ("temperature", "top_p", "max_tokens", "stop", "system_prompt", "timeout_seconds", "concurrency", "is_active")
MAX_KEY_CHARS = 1000
# a new built-in endpoint samples (two replies of one policy differ) and asks for replies that
# fit a small policy's positions: `transformers serve` asks for 1,024 tokens when told nothing
BUILTIN_DEFAULTS = {"temperature": 1.0, "max_tokens": 128, "timeout_seconds": 120.0}
TEST_MESSAGES = [{"role": "user", "content": "Reply with the single word: ready"}]
TEST_MAX_TOKENS = 16


def _raise_invalid(exc: ValidationError) -> None:
    """The first problem of a model ValidationError as InvalidEndpoint naming the field."""
    problems = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
    field, reasons = next(iter(problems.items()))
    raise InvalidEndpoint(reasons[0], field=None if field == "__all__" else field) from None


def _check_key(api_key) -> None:
    """A key travels in an HTTP header: printable ASCII, no spaces."""
    if not isinstance(api_key, str) or len(api_key) > MAX_KEY_CHARS or not all("!" <= c <= "~" for c in api_key):
        raise InvalidEndpoint(
            f"must be at most {MAX_KEY_CHARS} printable ASCII characters without spaces (it is sent in an HTTP header)", field="api_key"
        )


def save_endpoint(*, endpoint: ModelEndpoint | None = None, values: dict, api_key: str | None = None, clear_key: bool = False) -> ModelEndpoint:
    """Create (endpoint None) or change an endpoint. `api_key` None keeps the stored key, a
    string replaces it; `clear_key` removes it. Built-in endpoints accept only their sampling
    defaults, timeout, concurrency and on/off."""
    endpoint = endpoint or ModelEndpoint()
    allowed = BUILTIN_EDITABLE_FIELDS if endpoint.builtin else EDITABLE_FIELDS
    for field, value in values.items():
        if field not in allowed:
            raise InvalidEndpoint("cannot be changed on a built-in endpoint" if field in EDITABLE_FIELDS else "is not a field of an endpoint", field=field)
        setattr(endpoint, field, value)
    if endpoint.builtin and (api_key or clear_key):
        raise InvalidEndpoint("built-in endpoints have no key", field="api_key")
    if clear_key:
        endpoint.api_key_encrypted = ""
    elif api_key is not None:
        _check_key(api_key)
        endpoint.api_key_encrypted = encrypt_key(api_key.strip())
    try:
        endpoint.full_clean()
    except ValidationError as exc:
        _raise_invalid(exc)
    endpoint.save()
    log.info("endpoint %s saved (%s)", endpoint.pk, endpoint.name)
    return endpoint


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: int | None
    message: str
    reply: str = ""


def probe_endpoint(*, endpoint: ModelEndpoint) -> ProbeResult:
    """Send one short request; record and return the latency or the exact error (no retries:
    an admin wants to see what the endpoint does now)."""
    started = time.monotonic()
    try:
        reply = client.chat(endpoint.spec(), TEST_MESSAGES, max_tokens=TEST_MAX_TOKENS)
    except client.EndpointError as error:
        result = ProbeResult(ok=False, latency_ms=round((time.monotonic() - started) * 1000), message=error.message)
    except KeyUnavailable as error:
        result = ProbeResult(ok=False, latency_ms=None, message=error.message)
    else:
        latency = round(reply.seconds * 1000)
        excerpt = " ".join(reply.text.split())[:200]
        result = ProbeResult(ok=True, latency_ms=latency, message=f"answered in {latency} ms", reply=excerpt)
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(
        last_test_at=timezone.now(), last_test_ok=result.ok, last_test_message=result.message[:500]
    )
    return result


def sync_builtin(*, key: str, name: str, model: str, model_version_id: int | None) -> ModelEndpoint:
    """Create or update the built-in endpoint `key` (training.endpoints calls this when a
    policy is promoted or rolled back). A name taken by a registered endpoint gets a suffix."""
    with transaction.atomic():
        endpoint = ModelEndpoint.objects.select_for_update().filter(builtin=key).first()
        if endpoint is None:
            unique = name
            for n in range(2, 100):
                if not ModelEndpoint.objects.filter(name=unique).exists():
                    break
                unique = f"{name} ({n})"
            return ModelEndpoint.objects.create(
                builtin=key, name=unique, model=model, model_version_id=model_version_id, **BUILTIN_DEFAULTS
            )
        if endpoint.model != model or endpoint.model_version_id != model_version_id:
            endpoint.model, endpoint.model_version_id = model, model_version_id
            endpoint.save(update_fields=["model", "model_version_id", "updated_at"])
        return endpoint
