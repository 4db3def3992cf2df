"""Token authentication whose failures count toward the sign-in lockout (django-axes).

A request with a wrong token is recorded as a failed sign-in from its IP address; once the
address is locked (AXES_FAILURE_LIMIT failures), every token request from it is refused
with 429 until the cool-off ends or an admin unlocks it, so tokens cannot be guessed at
speed. Requests without a token are not failures (they fall through to the session).
"""

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.signals import user_login_failed
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled


class ThrottledTokenAuthentication(TokenAuthentication):
    def authenticate(self, request):
        if not request.META.get("HTTP_AUTHORIZATION", "").split(" ", 1)[0].lower() == self.keyword.lower():
            return None  # no token offered: nothing to count
        django_request = request._request
        AxesProxyHandler.update_request(django_request)
        # axes locks by username and by address; a token names no user, so its failures are
        # filed under a name of their own per address (shown so in the admin's access attempts)
        credentials = {"username": f"<API token from {django_request.axes_ip_address}>"}
        if not AxesProxyHandler.is_allowed(django_request, credentials):
            raise Throttled(detail="too many failed sign-ins from this address; try again later or ask an admin to unlock it")
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            user_login_failed.send(sender=type(self), credentials=credentials, request=django_request)
            raise
