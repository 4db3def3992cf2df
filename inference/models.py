"""Model endpoints: servers that speak the OpenAI chat-completions protocol.

A labeling admin registers an endpoint (vLLM, TGI, Ollama, llama.cpp, `transformers serve`,
a hosted API). Built-in endpoints (`builtin` set) are the app's own policies, served by the
policy server (POLICY_SERVER_URL, `manage.py serve_policies`): one per project for its
active policy, one per policy version that was ever promoted. The training app keeps them
in step with the registry (training.endpoints); their base URL is the policy server's.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from . import client
from .secrets import decrypt_key

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 100


def active_policy_key(project_id: int) -> str:
    """The built-in endpoint of a project's active policy (the `builtin` value)."""
    return f"active-policy:{project_id}"


def policy_version_key(version_id: int) -> str:
    """The built-in endpoint of one policy version."""
    return f"policy-version:{version_id}"


def validate_base_url(url: str) -> None:
    """http(s), a host, no credentials, no query or fragment: what the OpenAI client takes as base_url."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"is not a usable URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("must start with http:// or https:// and name a host, e.g. http://localhost:8000/v1")
    if parts.username or parts.password:
        raise ValidationError("must not hold a user name or password: put the key in the API key field")
    if parts.query or parts.fragment:
        raise ValidationError("must not have a query (?...) or fragment (#...)")
    if port == 0 or any(c.isspace() or ord(c) < 32 for c in url):
        raise ValidationError("has no usable port, or spaces or control characters")


def validate_stop(value) -> None:
    if not isinstance(value, list) or len(value) > MAX_STOP_SEQUENCES:
        raise ValidationError(f"must be a list of at most {MAX_STOP_SEQUENCES} strings")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_STOP_CHARS:
            raise ValidationError(f"each stop sequence must be a non-empty string of at most {MAX_STOP_CHARS} characters")


def validate_finite(value) -> None:
    if value is not None and not math.isfinite(value):
        raise ValidationError("must be a finite number")


class ModelEndpoint(models.Model):
    name = models.CharField(max_length=100, unique=True, help_text="Shown to admins and on the leaderboard, never to annotators.")
    base_url = models.CharField(
        max_length=500, blank=True, validators=[validate_base_url],
        help_text="As the OpenAI client takes it, e.g. http://localhost:8000/v1 (empty for built-in endpoints: the policy server's).",
    )
    model = models.CharField(max_length=500, help_text="The model id the server expects in each request.")
    api_key_encrypted = models.TextField(blank=True, editable=False, help_text="Fernet token (inference.secrets); never shown.")
    temperature = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(2.0), validate_finite])
    top_p = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(1.0), validate_finite])
    max_tokens = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(32768)])
    stop = models.JSONField(default=list, blank=True, validators=[validate_stop], help_text="Up to 4 stop sequences.")
    system_prompt = models.TextField(blank=True, max_length=20000)
    timeout_seconds = models.FloatField(
        default=60.0, validators=[MinValueValidator(1.0), MaxValueValidator(600.0), validate_finite],
        help_text="The longest wait for the connection and for each next piece of a reply.",
    )
    concurrency = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(256)],
        help_text="At most this many requests at once (per batch run, and per web process for live pages).",
    )
    is_active = models.BooleanField(default=True)
    builtin = models.CharField(
        max_length=50, blank=True, editable=False,
        help_text="Built-in: 'active-policy:<project id>' or 'policy-version:<version id>'; empty for registered endpoints.",
    )
    model_version_id = models.PositiveBigIntegerField(
        null=True, blank=True, editable=False, help_text="Built-in: the policy version it serves now (replies record it)."
    )
    last_test_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_test_ok = models.BooleanField(null=True, blank=True, editable=False)
    last_test_message = models.CharField(max_length=500, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["builtin", "name"]
        constraints = [
            models.UniqueConstraint(fields=["builtin"], condition=~Q(builtin=""), name="endpoint_builtin_unique"),
            models.CheckConstraint(condition=Q(concurrency__gte=1), name="endpoint_concurrency_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        super().clean()
        if not self.builtin and not self.base_url:
            raise ValidationError({"base_url": "is required"})

    @property
    def is_builtin(self) -> bool:
        return bool(self.builtin)

    @property
    def spec_base_url(self) -> str:
        """Where requests go: the policy server for built-in endpoints."""
        return settings.POLICY_SERVER_URL if self.builtin else self.base_url

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)

    def spec(self) -> client.EndpointSpec:
        """What the client needs, the key decrypted (KeyUnavailable when it cannot be)."""
        return client.EndpointSpec(
            name=self.name,
            base_url=self.spec_base_url,
            model=self.model,
            api_key=decrypt_key(self.api_key_encrypted, endpoint_name=self.name),
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop or ()),
            system_prompt=self.system_prompt,
            timeout=float(self.timeout_seconds),
            concurrency=int(self.concurrency),
        )
