"""Who may call what: annotators (any signed-in user) and labeling admins."""

from rest_framework.permissions import BasePermission

from ..services import is_labeling_admin


class IsLabelingAdmin(BasePermission):
    """Staff, superusers and members of the `labeling_admins` group."""

    message = "Only labeling admins may use this endpoint."

    def has_permission(self, request, view) -> bool:
        return is_labeling_admin(request.user)


class ReadAnyWriteAdmin(BasePermission):
    """Any signed-in user may read; only labeling admins may write."""

    message = "Only labeling admins may change this."

    def has_permission(self, request, view) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return bool(request.user and request.user.is_authenticated)
        return is_labeling_admin(request.user)
