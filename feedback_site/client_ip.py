"""The client's address, for the sign-in throttle (django-axes, AXES_CLIENT_IP_CALLABLE) and
anything else that must tell clients apart.

Without a proxy (PROXY_COUNT=0) it is the connection's address, REMOTE_ADDR. Behind
PROXY_COUNT trusted proxies, each of which adds the address it was connected from to
X-Forwarded-For (deploy/nginx sets the header to its client's address, so that a client can
put nothing in front), the client is the PROXY_COUNT-th entry from the right: the entries
further left came from the client itself and prove nothing. A header with fewer entries, or
an entry that is not an IP address, falls back to REMOTE_ADDR.

django-axes would read X-Forwarded-For through django-ipware, which is not installed: behind
nginx every client then looked like 127.0.0.1, and one client's failed sign-ins locked
everybody out (#19; tests/test_deploy_stack.py checks it through the real nginx site, from
two client addresses).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings


def client_ip(request) -> str | None:
    remote = request.META.get("REMOTE_ADDR") or None
    proxies = settings.PROXY_COUNT
    if not proxies:
        return remote
    entries = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    if len(entries) < proxies or not entries[-proxies]:
        return remote
    candidate = entries[-proxies]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
