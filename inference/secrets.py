"""API keys of model endpoints, encrypted at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The encryption key comes from the environment: ENDPOINT_KEY_SECRET, one secret or several
separated by commas (the first encrypts, all decrypt: append the old one when rotating). A
secret that is not a Fernet key itself is stretched into one with SHA-256. Without
ENDPOINT_KEY_SECRET the key is derived from SECRET_KEY (fine for the demo; set it in
production, so that changing SECRET_KEY does not make the stored keys unreadable).

A decrypted key goes only into the Authorization header of a request (inference.client):
never into a page, an API response, a log line, an export or an error message.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from .exceptions import KeyUnavailable


def _fernet_key(secret: str) -> bytes:
    try:
        Fernet(secret.encode())
        return secret.encode()
    except (ValueError, TypeError):
        return base64.urlsafe_b64encode(hashlib.sha256(f"endpoint-keys:{secret}".encode()).digest())


def _box() -> MultiFernet:
    secrets = settings.ENDPOINT_KEY_SECRETS or [settings.SECRET_KEY]
    return MultiFernet([Fernet(_fernet_key(secret)) for secret in secrets])


def encrypt_key(plain: str) -> str:
    return _box().encrypt(plain.encode("utf-8")).decode("ascii") if plain else ""


def decrypt_key(token: str, *, endpoint_name: str = "") -> str:
    if not token:
        return ""
    try:
        return _box().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError):
        raise KeyUnavailable(
            f"the API key of {endpoint_name or 'this endpoint'} cannot be decrypted with the configured ENDPOINT_KEY_SECRET: "
            "set the secret it was saved with, or save the key again"
        ) from None
