"""The app's own 404 page with DEBUG on (#20).

`make run` runs with DEBUG=1, where Django answers an unknown address with its technical 404
page: it lists every URL pattern of the site and shows unstyled under the Content Security
Policy. This middleware gives the same answer as production instead (labeling.views.not_found:
the app's page, or JSON under /api/). With DEBUG off Django already calls that handler."""

from django.conf import settings


class FriendlyNotFoundMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            settings.DEBUG
            and response.status_code == 404
            and response.get("Content-Type", "").startswith("text/html")
            and not getattr(response, "streaming", False)
            and b"DEBUG = True" in response.content  # Django's technical page, not one of the app's own
        ):
            from labeling.views import not_found

            return not_found(request)
        return response
