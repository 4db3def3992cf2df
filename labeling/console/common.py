"""What every console page shares: who may open it."""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render

from ..services import is_labeling_admin


def labeling_admin_required(view):
    """Signed-out visitors go to the login page; signed-in users who are not labeling
    admins get the app's plain 403 page (never the Django admin's login form)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not is_labeling_admin(request.user):
            return render(
                request,
                "labeling/error.html",
                {"message": "These pages are for labeling admins. Your projects are on the home page."},
                status=403,
            )
        return view(request, *args, **kwargs)

    return wrapper
