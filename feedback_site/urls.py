from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from labeling import views as labeling_views

# API docs: a browser that is not signed in is sent to the login page, unless API_DOCS_PUBLIC
# opens them (SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"] guards the schema the same way)
docs = SpectacularSwaggerView.as_view(url_name="api-schema")
if "rest_framework.permissions.AllowAny" not in settings.SPECTACULAR_SETTINGS.get("SERVE_PERMISSIONS", []):
    docs = login_required(docs)

urlpatterns = [
    # before the admin: a signed-in annotator without staff access gets the app's 403 page
    # where the admin (and /training/) would show its login form again
    path("admin/login/", labeling_views.admin_login),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include("labeling.api.urls")),
    path("api/v1/", include("training.api.urls")),
    path("training/", include("training.urls")),
    path("manage/", include("labeling.console.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", docs, name="api-docs"),
    path("", include("labeling.urls")),
]

handler404 = "labeling.views.not_found"
